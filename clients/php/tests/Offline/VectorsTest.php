<?php

declare(strict_types=1);

namespace Plasm\Tests\Offline;

use Google\Protobuf\Timestamp;
use PHPUnit\Framework\TestCase;
use Plasm\JobInput;
use Plasm\ReceiptVerifier;
use Plasm\V1\Outcome;
use Plasm\V1\ReceiptBody;
use Plasm\V1\SignedEnvelope;

/**
 * The shared receipt vectors (tests/vectors/receipts.json, see its README):
 * every case must get the verdict the file states, from ReceiptVerifier alone.
 */
final class VectorsTest extends TestCase
{
    /** @var array<string, mixed>|null */
    private static ?array $vectors = null;

    /** @return array<string, mixed> */
    private static function vectors(): array
    {
        if (self::$vectors === null) {
            $path = getenv('PLASM_VECTORS') ?: dirname(__DIR__, 4) . '/tests/vectors/receipts.json';
            $text = @file_get_contents($path);
            if ($text === false) {
                throw new \RuntimeException("cannot read the receipt vectors at $path (set PLASM_VECTORS)");
            }
            self::$vectors = json_decode($text, true, 512, JSON_THROW_ON_ERROR);
        }
        return self::$vectors;
    }

    /** @return iterable<string, array{array<string, mixed>}> */
    public static function cases(): iterable
    {
        foreach (self::vectors()['cases'] as $case) {
            yield $case['name'] => [$case];
        }
    }

    /** @return iterable<string, array{array<string, mixed>}> */
    public static function validCases(): iterable
    {
        foreach (self::vectors()['cases'] as $case) {
            if ($case['expected_valid']) {
                yield $case['name'] => [$case];
            }
        }
    }

    public function testFileLayout(): void
    {
        $vectors = self::vectors();
        self::assertSame('plasm-receipt-test-vectors/1', $vectors['format']);
        self::assertSame(ReceiptVerifier::RECEIPT_DOMAIN, $vectors['receipt_domain']);
        $names = array_column($vectors['cases'], 'name');
        foreach (['valid', 'tampered_body', 'tampered_signature', 'wrong_key', 'wrong_domain',
            'truncated_payload', 'truncated_signature', 'bad_public_key_length', 'signer_mismatch',
            'malformed_payload'] as $required) {
            self::assertContains($required, $names);
        }
    }

    /** @param array<string, mixed> $case */
    private static function envelope(array $case): SignedEnvelope
    {
        $envelope = new SignedEnvelope();
        $envelope->mergeFromString(base64_decode($case['envelope_b64'], true));
        return $envelope;
    }

    /**
     * @dataProvider cases
     * @param array<string, mixed> $case
     */
    public function testVerdict(array $case): void
    {
        $envelope = self::envelope($case);
        self::assertSame($case['payload_hex'], bin2hex($envelope->getPayload()), 'envelope_b64 vs payload_hex');
        self::assertSame($case['signature_hex'], bin2hex($envelope->getSignature()));
        self::assertSame($case['signer_public_key_hex'], bin2hex($envelope->getSignerPublicKey()));

        $result = ReceiptVerifier::verify($envelope);
        $failures = implode('; ', array_map('strval', $result->failures()));
        self::assertSame($case['expected_valid'], $result->valid, "{$case['name']}: $failures");
        self::assertSame($case['expected_signature_valid'], ReceiptVerifier::checkSignature($envelope));
        self::assertSame($case['expected_signer_node_id'], $result->signerNodeId);
        self::assertSame(
            $case['expected_signer_node_id'],
            ReceiptVerifier::signerNodeId($envelope->getSignerPublicKey()),
        );

        if (!$case['expected_valid']) {
            // Which check catches it: the signature (bad, wrong key or domain,
            // truncated, bad key length), else decoding, else the signer.
            $expectedCheck = !$case['expected_signature_valid']
                ? 'signature'
                : ($case['expected_error'] === 'signer_mismatch' ? 'signer' : 'decode');
            self::assertSame($expectedCheck, $result->failures()[0]->name, $failures);
            if ($expectedCheck === 'signature') {
                self::assertNull($result->body, 'nothing is decoded before the signature holds');
                self::assertCount(1, $result->checks);
            }
        }
    }

    /**
     * @dataProvider validCases
     * @param array<string, mixed> $case
     */
    public function testValidCaseContents(array $case): void
    {
        $envelope = self::envelope($case);
        $module = base64_decode($case['module_b64'], true);
        $stdout = base64_decode($case['stdout_b64'], true);
        $stderr = base64_decode($case['stderr_b64'], true);
        $input = JobInput::of(
            $case['input']['args'],
            $case['input']['env'],
            base64_decode($case['input']['stdin_b64'], true),
        );

        $result = ReceiptVerifier::verify(
            $envelope,
            $case['expected_signer_node_id'],
            $stdout,
            $stderr,
            $module,
            $input,
        );
        self::assertTrue($result->valid, implode('; ', array_map('strval', $result->failures())));
        $names = array_map(static fn ($c) => $c->name, $result->checks);
        self::assertSame(['signature', 'signer', 'expected_executor', 'stdout', 'stderr', 'module', 'input'], $names);

        // The decoded body is the one the file states in proto3 JSON (compared
        // field by field: the pure-PHP runtime's JSON parser needs bcmath).
        self::assertNotNull($result->body);
        self::assertSame(self::sorted($case['body']), self::sorted(self::bodyJson($result->body)));

        self::assertSame($case['input']['input_encoding_hex'], bin2hex($input->encode()));
        self::assertSame($case['input']['input_sha256'], $input->sha256());
        self::assertSame($case['body']['inputSha256'], $input->sha256());
        self::assertSame($case['body']['moduleSha256'], hash('sha256', $module));
        self::assertSame($case['body']['stdoutSha256'], hash('sha256', $stdout));
        self::assertSame($case['body']['stderrSha256'], hash('sha256', $stderr));
    }

    /**
     * @dataProvider validCases
     * @param array<string, mixed> $case
     */
    public function testValidCaseRejectsWhatItDoesNotCover(array $case): void
    {
        $envelope = self::envelope($case);
        $stdout = base64_decode($case['stdout_b64'], true);
        $args = $case['input']['args'];
        $args[] = 'extra';
        $result = ReceiptVerifier::verify(
            $envelope,
            str_repeat('0', 64),
            $stdout . 'x',
            null,
            'not the module',
            JobInput::of($args, $case['input']['env'], base64_decode($case['input']['stdin_b64'], true)),
        );
        self::assertFalse($result->valid);
        $failed = array_map(static fn ($c) => $c->name, $result->failures());
        self::assertSame(['expected_executor', 'stdout', 'module', 'input'], $failed);
        self::assertTrue($result->check('signature')->passed);
        self::assertTrue($result->check('signer')->passed);
    }

    /**
     * A ReceiptBody as proto3 JSON: lowerCamelCase names, 64-bit integers as
     * strings, enums by name, timestamps in RFC 3339, defaults omitted.
     *
     * @return array<string, mixed>
     */
    private static function bodyJson(ReceiptBody $body): array
    {
        $limits = $body->getLimits();
        $runtime = $body->getRuntime();
        $json = [
            'version' => $body->getVersion(),
            'jobId' => $body->getJobId(),
            'moduleSha256' => $body->getModuleSha256(),
            'inputSha256' => $body->getInputSha256(),
            'stdoutSha256' => $body->getStdoutSha256(),
            'stderrSha256' => $body->getStderrSha256(),
            'stdoutBytes' => (string) $body->getStdoutBytes(),
            'stderrBytes' => (string) $body->getStderrBytes(),
            'outcome' => $body->getOutcome() === 0 ? null : Outcome::name($body->getOutcome()),
            'exitCode' => $body->getExitCode(),
            'trapCode' => $body->getTrapCode(),
            'fuelConsumed' => (string) $body->getFuelConsumed(),
            'wallTimeUs' => (string) $body->getWallTimeUs(),
            'limits' => $limits === null ? null : array_filter([
                'maxMemoryBytes' => (string) $limits->getMaxMemoryBytes(),
                'maxFuel' => (string) $limits->getMaxFuel(),
                'timeoutMs' => $limits->getTimeoutMs(),
                'maxStdoutBytes' => (string) $limits->getMaxStdoutBytes(),
                'maxStderrBytes' => (string) $limits->getMaxStderrBytes(),
            ], [self::class, 'isSet']),
            'runtime' => $runtime === null ? null : array_filter([
                'name' => $runtime->getName(),
                'version' => $runtime->getVersion(),
                'wasiVersion' => $runtime->getWasiVersion(),
                'config' => iterator_to_array($runtime->getConfig(), false),
            ], [self::class, 'isSet']),
            'executorNodeId' => $body->getExecutorNodeId(),
            'requesterNodeId' => $body->getRequesterNodeId(),
            'startedAt' => self::timestamp($body->getStartedAt()),
            'finishedAt' => self::timestamp($body->getFinishedAt()),
            'detail' => $body->getDetail(),
        ];
        return array_filter($json, [self::class, 'isSet']);
    }

    public static function isSet(mixed $value): bool
    {
        return !in_array($value, [null, 0, '0', '', []], true);
    }

    private static function timestamp(?Timestamp $t): ?string
    {
        if ($t === null) {
            return null;
        }
        $text = gmdate('Y-m-d\\TH:i:s', (int) $t->getSeconds());
        $nanos = $t->getNanos();
        if ($nanos !== 0) {
            // proto3 JSON writes 3, 6 or 9 fractional digits.
            $digits = sprintf('%09d', $nanos);
            $keep = $nanos % 1000000 === 0 ? 3 : ($nanos % 1000 === 0 ? 6 : 9);
            $text .= '.' . substr($digits, 0, $keep);
        }
        return $text . 'Z';
    }

    /**
     * @param array<string, mixed> $json
     * @return array<string, mixed>
     */
    private static function sorted(array $json): array
    {
        ksort($json);
        foreach ($json as &$value) {
            if (is_array($value) && !array_is_list($value)) {
                ksort($value);
            }
        }
        return $json;
    }

    public function testInputVectors(): void
    {
        $vectors = self::vectors()['input_vectors'];
        self::assertNotEmpty($vectors);
        $hashes = [];
        foreach ($vectors as $vector) {
            $input = JobInput::of($vector['args'], $vector['env'], base64_decode($vector['stdin_b64'], true));
            self::assertSame($vector['input_encoding_hex'], bin2hex($input->encode()), $vector['name']);
            self::assertSame($vector['input_sha256'], $input->sha256(), $vector['name']);
            $hashes[] = $input->sha256();
        }
        self::assertSame($hashes, array_unique($hashes), 'every input vector hashes differently');
    }

    public function testKeysDeriveFromTheirLabels(): void
    {
        foreach (self::vectors()['keys'] as $key) {
            $pair = sodium_crypto_sign_seed_keypair(hash('sha256', $key['label'], true));
            $public = sodium_crypto_sign_publickey($pair);
            self::assertSame($key['public_key_hex'], bin2hex($public));
            self::assertSame($key['node_id'], ReceiptVerifier::signerNodeId($public));
        }
    }
}
