<?php

declare(strict_types=1);

namespace Plasm\Tests\Live;

use PHPUnit\Framework\TestCase;
use Plasm\Client;
use Plasm\Exception\DeadlineExceededException;
use Plasm\Exception\InvalidArgumentException;
use Plasm\Exception\NotFoundException;
use Plasm\ReceiptVerifier;
use Plasm\StatusCode;
use Plasm\V1\JobEvent;
use Plasm\V1\JobEventKind;
use Plasm\V1\Outcome;
use Plasm\V1\SignedEnvelope;
use Plasm\V1\SubmitResponse;

/**
 * Against a running plasmd: PLASM_ADDR (host:port) and, for the Unix socket
 * test, PLASM_UNIX ("unix:/path"). tests/test_php_client.py starts one and runs
 * these with --fail-on-skipped. The modules come from scripts/build-examples.sh
 * (PLASM_HELLO_WASM and PLASM_LOOP_WASM override the paths).
 */
final class ClientTest extends TestCase
{
    private const STDIN = 'Hello, World';
    private const ARGS = ['hello.wasm'];

    private static function env(string $name, string $default = ''): string
    {
        $value = getenv($name);
        return $value === false || $value === '' ? $default : $value;
    }

    private static function repo(string $path): string
    {
        return dirname(__DIR__, 4) . '/' . $path;
    }

    private static function module(string $variable, string $path): string
    {
        $file = self::env($variable, self::repo($path));
        $bytes = @file_get_contents($file);
        if ($bytes === false) {
            self::fail("cannot read $file: build it with scripts/build-examples.sh (or set $variable)");
        }
        return $bytes;
    }

    private static function hello(): string
    {
        return self::module('PLASM_HELLO_WASM', 'examples/build/hello.wasm');
    }

    private function client(array $options = []): Client
    {
        $addr = self::env('PLASM_ADDR');
        if ($addr === '') {
            self::markTestSkipped('set PLASM_ADDR to a running plasmd (host:port) to run the daemon tests');
        }
        return new Client($addr, $options + ['deadline' => 30.0]);
    }

    private function submitHello(Client $client): SubmitResponse
    {
        return $client->submit(self::hello(), args: self::ARGS, stdin: self::STDIN);
    }

    private static function tampered(SignedEnvelope $receipt): SignedEnvelope
    {
        $payload = $receipt->getPayload();
        $payload[10] = chr(ord($payload[10]) ^ 0x01);
        return (new SignedEnvelope())
            ->setPayload($payload)
            ->setSignature($receipt->getSignature())
            ->setSignerPublicKey($receipt->getSignerPublicKey());
    }

    public function testSubmitHelloAndVerifyOffline(): void
    {
        $client = $this->client();
        $node = $client->nodeInfo();
        $response = $this->submitHello($client);
        $result = $response->getResult();

        self::assertSame('dlroW ,olleH', $result->getStdout());
        self::assertSame(Outcome::OUTCOME_SUCCESS, $result->getOutcome());
        self::assertSame($node->getNodeId(), $response->getExecutorNodeId());
        self::assertMatchesRegularExpression('/^[0-9a-f]{32}$/', $result->getJobId());

        $check = ReceiptVerifier::verifyResult(
            $result,
            self::hello(),
            ['args' => self::ARGS, 'stdin' => self::STDIN],
            $node->getNodeId(),
        );
        self::assertTrue($check->valid, implode('; ', array_map('strval', $check->failures())));
        self::assertSame(
            ['signature', 'signer', 'expected_executor', 'stdout', 'stderr', 'module', 'input'],
            array_map(static fn ($c) => $c->name, $check->checks),
        );
        self::assertSame($node->getNodeId(), $check->signerNodeId);
        self::assertSame($node->getNodeId(), ReceiptVerifier::signerNodeId($node->getPublicKey()));
        self::assertSame($result->getJobId(), $check->body->getJobId());
        self::assertSame(strlen($result->getStdout()), $check->body->getStdoutBytes());
    }

    public function testServerVerify(): void
    {
        $client = $this->client();
        $result = $this->submitHello($client)->getResult();
        $verdict = $client->verify(
            $result->getReceipt(),
            expectedExecutorNodeId: $client->nodeInfo()->getNodeId(),
            stdout: $result->getStdout(),
            stderr: $result->getStderr(),
            module: self::hello(),
            input: ['args' => self::ARGS, 'stdin' => self::STDIN],
        );
        self::assertTrue($verdict->getValid());
        $names = [];
        foreach ($verdict->getChecks() as $check) {
            self::assertTrue($check->getPassed(), $check->getName() . ': ' . $check->getDetail());
            $names[] = $check->getName();
        }
        self::assertEqualsCanonicalizing(
            ['signature', 'signer', 'expected_executor', 'stdout', 'stderr', 'module', 'input'],
            $names,
        );
        self::assertSame($result->getJobId(), $verdict->getBody()->getJobId());
    }

    public function testTamperedReceiptIsRejectedOfflineAndByTheServer(): void
    {
        $client = $this->client();
        $result = $this->submitHello($client)->getResult();
        $tampered = self::tampered($result->getReceipt());

        $offline = ReceiptVerifier::verify($tampered, stdout: $result->getStdout());
        self::assertFalse($offline->valid);
        self::assertSame(['signature'], array_map(static fn ($c) => $c->name, $offline->failures()));
        self::assertNull($offline->body);

        $server = $client->verify($tampered, stdout: $result->getStdout());
        self::assertFalse($server->getValid());
        self::assertSame('signature', $server->getChecks()[0]->getName());
        self::assertFalse($server->getChecks()[0]->getPassed());

        // The intact receipt does not cover other output.
        $other = ReceiptVerifier::verify($result->getReceipt(), stdout: 'Hello, World');
        self::assertFalse($other->valid);
        self::assertSame(['stdout'], array_map(static fn ($c) => $c->name, $other->failures()));
    }

    public function testBadModuleHashIsInvalidArgument(): void
    {
        $client = $this->client();
        try {
            $client->submit(self::hello(), moduleSha256: hash('sha256', 'some other module'));
            self::fail('a module that does not match its hash was accepted');
        } catch (InvalidArgumentException $e) {
            self::assertSame(StatusCode::INVALID_ARGUMENT, $e->getStatusCode());
            self::assertSame('ERROR_REASON_MODULE_HASH_MISMATCH', $e->getReason());
        }
        try {
            $client->submit(self::hello(), moduleSha256: 'not-hex');
            self::fail('a malformed module hash was accepted');
        } catch (InvalidArgumentException $e) {
            self::assertSame('ERROR_REASON_INVALID_REQUEST', $e->getReason());
            self::assertStringContainsString('module_sha256', $e->getDetails());
        }
    }

    public function testUnknownReceiptIsNotFound(): void
    {
        $client = $this->client();
        try {
            $client->getReceipt(Client::newJobId());
            self::fail('found a receipt for a job never run');
        } catch (NotFoundException $e) {
            self::assertSame(StatusCode::NOT_FOUND, $e->getStatusCode());
            self::assertSame('ERROR_REASON_RECEIPT_NOT_FOUND', $e->getReason());
        }
    }

    public function testStoredReceiptsVerifyOffline(): void
    {
        $client = $this->client();
        $result = $this->submitHello($client)->getResult();
        $stored = $client->getReceipt($result->getJobId());
        self::assertSame($result->getReceipt()->serializeToString(), $stored->getReceipt()->serializeToString());
        self::assertTrue(ReceiptVerifier::verify($stored->getReceipt(), stdout: $result->getStdout())->valid);

        $page = $client->listReceipts(1000);
        $ids = [];
        foreach ($page->getReceipts() as $receipt) {
            self::assertTrue(ReceiptVerifier::verify($receipt->getReceipt())->valid);
            $ids[] = $receipt->getBody()->getJobId();
        }
        self::assertContains($result->getJobId(), $ids);
    }

    public function testARepeatedJobIdIsRefusedNotRunTwice(): void
    {
        $client = $this->client();
        $jobId = Client::newJobId();
        $first = $client->submit(self::hello(), args: self::ARGS, stdin: self::STDIN, jobId: $jobId);
        self::assertSame($jobId, $first->getResult()->getJobId());
        try {
            $client->submit(self::hello(), args: self::ARGS, stdin: self::STDIN, jobId: $jobId);
            self::fail('the same job id ran twice');
        } catch (InvalidArgumentException $e) {
            self::assertSame('ERROR_REASON_INVALID_REQUEST', $e->getReason());
            self::assertStringContainsString('already used', $e->getDetails());
        }
    }

    public function testWatchAFinishedJobAndCancelIt(): void
    {
        $client = $this->client();
        $jobId = $this->submitHello($client)->getResult()->getJobId();
        $kinds = [];
        $client->watch($jobId, static function (JobEvent $event) use (&$kinds): void {
            $kinds[] = JobEventKind::name($event->getKind());
        }, deadline: 10.0);
        self::assertSame('JOB_EVENT_KIND_SUBMITTED', $kinds[0] ?? null);
        self::assertSame('JOB_EVENT_KIND_FINISHED', end($kinds));
        self::assertFalse($client->cancel($jobId), 'a finished job is not cancelled');
    }

    public function testDeadlineExceeded(): void
    {
        $client = $this->client();
        $loop = self::module('PLASM_LOOP_WASM', 'tests/wasm/build/infinite_loop.wasm');
        try {
            $client->submit($loop, deadline: 0.5);
            self::fail('an infinite loop finished');
        } catch (DeadlineExceededException $e) {
            self::assertSame(StatusCode::DEADLINE_EXCEEDED, $e->getStatusCode());
            self::assertContains($e->getReason(), ['', 'ERROR_REASON_DEADLINE_EXCEEDED']);
        }
        // The node goes on serving.
        self::assertSame('dlroW ,olleH', $this->submitHello($client)->getResult()->getStdout());
    }

    public function testUnixSocket(): void
    {
        $this->client(); // skips without PLASM_ADDR, like the rest of this suite
        $target = self::env('PLASM_UNIX');
        if ($target === '') {
            self::markTestSkipped('set PLASM_UNIX (unix:/path) to a plasmd Unix socket to run this test');
        }
        $client = new Client($target, ['deadline' => 30.0]);
        $node = $client->nodeInfo();
        $result = $this->submitHello($client)->getResult();
        self::assertSame('dlroW ,olleH', $result->getStdout());
        $input = ['args' => self::ARGS, 'stdin' => self::STDIN];
        $check = ReceiptVerifier::verifyResult($result, self::hello(), $input, $node->getNodeId());
        self::assertTrue($check->valid);
        self::assertSame($node->getNodeId(), $check->signerNodeId);
    }
}
