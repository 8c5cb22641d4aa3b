<?php

declare(strict_types=1);

namespace Plasm\Tests\Offline;

use PHPUnit\Framework\TestCase;
use Plasm\Client;
use Plasm\Exception\ConnectionException;
use Plasm\Exception\UnavailableException;
use Plasm\StatusCode;
use Plasm\Transport\CurlTransport;
use Plasm\Transport\Transport;

/**
 * No daemon where the client looks: a closed TCP port and a missing Unix
 * socket. Real curl; the failures come after the retries, and since nothing
 * was ever sent even Submit is retried.
 */
final class DaemonDownTest extends TestCase
{
    private static function closedPort(): string
    {
        $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $error);
        self::assertNotFalse($server, $error);
        $addr = stream_socket_get_name($server, false);
        fclose($server); // nothing listens there now
        return $addr;
    }

    /** @return iterable<string, array{string}> */
    public static function targets(): iterable
    {
        yield 'closed port' => [self::closedPort()];
        yield 'missing socket' => ['unix:' . sys_get_temp_dir() . '/plasm-none-' . bin2hex(random_bytes(6)) . '.sock'];
    }

    /** @dataProvider targets */
    public function testEveryCallFailsAsUnavailableAfterTheRetries(string $target): void
    {
        $attempts = 0;
        $transport = new class (new CurlTransport($target), $attempts) implements Transport {
            public function __construct(private readonly CurlTransport $inner, private int &$attempts)
            {
            }

            public function unary(string $path, string $request, ?float $timeout): string
            {
                $this->attempts++;
                return $this->inner->unary($path, $request, $timeout);
            }

            public function serverStream(string $path, string $request, ?float $timeout, callable $onMessage): void
            {
                $this->attempts++;
                $this->inner->serverStream($path, $request, $timeout, $onMessage);
            }
        };
        $client = new Client($target, [
            'transport' => $transport,
            'retries' => 3,
            'backoff' => 0.01,
            'max_backoff' => 0.05,
            'deadline' => 10.0,
        ]);
        $calls = [
            'nodeInfo' => static fn () => $client->nodeInfo(),
            'submit' => static fn () => $client->submit('(module)'),
            'getReceipt' => static fn () => $client->getReceipt(str_repeat('a', 32)),
        ];
        foreach ($calls as $name => $call) {
            $attempts = 0;
            try {
                $call();
                self::fail("$name to $target succeeded");
            } catch (ConnectionException $e) {
                self::assertInstanceOf(UnavailableException::class, $e);
                self::assertSame(StatusCode::UNAVAILABLE, $e->getStatusCode());
                self::assertFalse($e->requestSent(), $e->getMessage());
                self::assertSame(CURLE_COULDNT_CONNECT, $e->getCurlErrno(), $e->getMessage());
                self::assertStringContainsString($target, $e->getMessage());
            }
            self::assertSame(4, $attempts, "$name: one attempt and three retries");
        }
    }
}
