<?php

declare(strict_types=1);

namespace Plasm\Tests\Offline;

use PHPUnit\Framework\TestCase;
use Plasm\Exception\CancelledException;
use Plasm\Exception\DeadlineExceededException;
use Plasm\Exception\FailedPreconditionException;
use Plasm\Exception\InternalException;
use Plasm\Exception\InvalidArgumentException;
use Plasm\Exception\NotFoundException;
use Plasm\Exception\ProtocolException;
use Plasm\Exception\ResourceExhaustedException;
use Plasm\Exception\RpcException;
use Plasm\Exception\UnavailableException;
use Plasm\Exception\UnimplementedException;
use Plasm\Exception\UnknownException;
use Plasm\StatusCode;
use Plasm\Transport\CurlTransport;
use Plasm\Transport\FrameDecoder;
use Plasm\Transport\Target;

/** Framing, targets, timeouts and status mapping, without a network. */
final class TransportTest extends TestCase
{
    public function testFramesSplitAnywhereDecode(): void
    {
        $messages = ['', 'a', str_repeat('x', 70000), "\0\1\2"];
        $stream = implode('', array_map([FrameDecoder::class, 'encode'], $messages));
        self::assertSame("\0\0\0\0\0", FrameDecoder::encode(''));
        foreach ([1, 2, 5, 7, 4096, strlen($stream)] as $chunk) {
            $decoder = new FrameDecoder();
            $out = [];
            foreach (str_split($stream, $chunk) as $piece) {
                foreach ($decoder->push($piece) as [$compressed, $message]) {
                    self::assertFalse($compressed);
                    $out[] = $message;
                }
            }
            $decoder->finish();
            self::assertSame($messages, $out, "chunk size $chunk");
        }
    }

    public function testTruncatedStreamIsAProtocolError(): void
    {
        $decoder = new FrameDecoder();
        self::assertSame([], $decoder->push(substr(FrameDecoder::encode('hello'), 0, 7)));
        $this->expectException(ProtocolException::class);
        $decoder->finish();
    }

    public function testBadFlagIsAProtocolError(): void
    {
        $this->expectException(ProtocolException::class);
        (new FrameDecoder())->push("\x02\0\0\0\0");
    }

    public function testOversizedMessageIsRefusedBeforeItArrives(): void
    {
        $this->expectException(ProtocolException::class);
        (new FrameDecoder(10))->push("\0\0\0\0\x0b");
    }

    public function testTargets(): void
    {
        $t = Target::parse('127.0.0.1:50151');
        self::assertSame(['http://127.0.0.1:50151', null, false], [$t->baseUrl, $t->unixSocket, $t->tls]);
        $t = Target::parse('[::1]:50151');
        self::assertSame('http://[::1]:50151', $t->baseUrl);
        $t = Target::parse('https://node.example:443');
        self::assertSame(['https://node.example:443', null, true], [$t->baseUrl, $t->unixSocket, $t->tls]);
        $t = Target::parse('unix:/run/plasm/plasmd.sock');
        self::assertSame(['http://localhost', '/run/plasm/plasmd.sock', false], [$t->baseUrl, $t->unixSocket, $t->tls]);
        self::assertSame('/abs.sock', Target::parse('unix:///abs.sock')->unixSocket);
        self::assertSame('rel.sock', Target::parse('unix:rel.sock')->unixSocket);
        foreach (['', 'localhost', 'host:port', 'host:99999', 'ftp://h:1', 'unix:', 'h:1/path'] as $bad) {
            try {
                Target::parse($bad);
                self::fail("accepted '$bad'");
            } catch (\InvalidArgumentException) {
                self::addToAssertionCount(1);
            }
        }
    }

    public function testGrpcTimeoutHeader(): void
    {
        self::assertSame('500m', CurlTransport::grpcTimeout(0.5));
        self::assertSame('1m', CurlTransport::grpcTimeout(0.0001));
        self::assertSame('60000m', CurlTransport::grpcTimeout(60));
        self::assertSame('100000S', CurlTransport::grpcTimeout(100000));
    }

    public function testStatusesMapToTypedExceptions(): void
    {
        $expected = [
            StatusCode::CANCELLED => CancelledException::class,
            StatusCode::UNKNOWN => UnknownException::class,
            StatusCode::INVALID_ARGUMENT => InvalidArgumentException::class,
            StatusCode::DEADLINE_EXCEEDED => DeadlineExceededException::class,
            StatusCode::NOT_FOUND => NotFoundException::class,
            StatusCode::RESOURCE_EXHAUSTED => ResourceExhaustedException::class,
            StatusCode::FAILED_PRECONDITION => FailedPreconditionException::class,
            StatusCode::UNIMPLEMENTED => UnimplementedException::class,
            StatusCode::INTERNAL => InternalException::class,
            StatusCode::UNAVAILABLE => UnavailableException::class,
            StatusCode::PERMISSION_DENIED => RpcException::class,
        ];
        foreach ($expected as $code => $class) {
            $e = RpcException::fromStatus($code, 'details', 'ERROR_REASON_X');
            self::assertSame($class, get_class($e));
            self::assertSame($code, $e->getStatusCode());
            self::assertSame('ERROR_REASON_X', $e->getReason());
            self::assertSame(StatusCode::name($code) . ': details (ERROR_REASON_X)', $e->getMessage());
        }
        self::assertSame(StatusCode::UNAVAILABLE, StatusCode::fromHttpStatus(503));
        self::assertSame(StatusCode::UNIMPLEMENTED, StatusCode::fromHttpStatus(404));
        self::assertSame(StatusCode::INTERNAL, (new ProtocolException('x'))->getStatusCode());
    }
}
