<?php

declare(strict_types=1);

namespace Plasm\Tests\Offline;

use PHPUnit\Framework\TestCase;
use Plasm\Client;
use Plasm\Exception\ConnectionException;
use Plasm\Exception\DeadlineExceededException;
use Plasm\Exception\InvalidArgumentException;
use Plasm\Exception\ProtocolException;
use Plasm\Exception\RpcException;
use Plasm\Exception\UnavailableException;
use Plasm\StatusCode;
use Plasm\Tests\FakeTransport;
use Plasm\V1\GetNodeInfoResponse;
use Plasm\V1\JobEvent;
use Plasm\V1\JobEventKind;
use Plasm\V1\JobResult;
use Plasm\V1\SubmitRequest;
use Plasm\V1\SubmitResponse;
use Plasm\V1\WatchResponse;

/** The retry and deadline policy of Client, over a scripted transport (no daemon). */
final class ClientRetryTest extends TestCase
{
    private static function client(FakeTransport $transport, array $options = []): Client
    {
        $options += ['transport' => $transport, 'backoff' => 0.001, 'max_backoff' => 0.002];
        return new Client('127.0.0.1:1', $options);
    }

    private static function nodeInfo(string $id = 'ab'): string
    {
        return (new GetNodeInfoResponse())->setNodeId($id)->serializeToString();
    }

    private static function submitted(string $stdout = 'out'): string
    {
        return (new SubmitResponse())->setResult((new JobResult())->setStdout($stdout))->serializeToString();
    }

    private static function refused(): ConnectionException
    {
        return new ConnectionException('connection refused', false, CURLE_COULDNT_CONNECT);
    }

    private static function dropped(): ConnectionException
    {
        return new ConnectionException('connection reset', true, CURLE_RECV_ERROR);
    }

    public function testIdempotentCallRetriesUnavailableThenSucceeds(): void
    {
        $unavailable = RpcException::fromStatus(StatusCode::UNAVAILABLE, 'shutting down', 'ERROR_REASON_SHUTTING_DOWN');
        $transport = new FakeTransport([self::refused(), self::dropped(), $unavailable, self::nodeInfo('cafe')]);
        self::assertSame('cafe', self::client($transport)->nodeInfo()->getNodeId());
        self::assertCount(4, $transport->calls);
        self::assertSame('/plasm.v1.PlasmService/GetNodeInfo', $transport->calls[0]['path']);
    }

    public function testGivesUpAfterTheRetries(): void
    {
        $transport = new FakeTransport(array_fill(0, 5, self::refused()));
        try {
            self::client($transport, ['retries' => 3])->nodeInfo();
            self::fail('no exception');
        } catch (ConnectionException $e) {
            self::assertSame(StatusCode::UNAVAILABLE, $e->getStatusCode());
            self::assertFalse($e->requestSent());
        }
        self::assertCount(4, $transport->calls, 'one attempt and three retries');
    }

    public function testNoRetries(): void
    {
        $transport = new FakeTransport([self::refused()]);
        $this->expectException(UnavailableException::class);
        self::client($transport, ['retries' => 0])->nodeInfo();
    }

    public function testOtherStatusesAreNotRetried(): void
    {
        $refusal = RpcException::fromStatus(StatusCode::INVALID_ARGUMENT, 'bad', 'ERROR_REASON_INVALID_REQUEST');
        $transport = new FakeTransport([$refusal]);
        try {
            self::client($transport)->getReceipt('nope');
            self::fail('no exception');
        } catch (InvalidArgumentException $e) {
            self::assertSame('ERROR_REASON_INVALID_REQUEST', $e->getReason());
            self::assertSame('bad', $e->getDetails());
        }
        self::assertCount(1, $transport->calls);
    }

    public function testSubmitIsRetriedOnlyWhenNothingWasSent(): void
    {
        $transport = new FakeTransport([self::refused(), self::refused(), self::submitted('ok')]);
        $response = self::client($transport)->submit('module bytes', stdin: 'in');
        self::assertSame('ok', $response->getResult()->getStdout());
        self::assertCount(3, $transport->calls);
        $jobIds = array_map(static function (array $call): string {
            $request = new SubmitRequest();
            $request->mergeFromString($call['request']);
            return $request->getJobId();
        }, $transport->calls);
        self::assertMatchesRegularExpression('/^[0-9a-f]{32}$/', $jobIds[0]);
        self::assertSame([$jobIds[0], $jobIds[0], $jobIds[0]], $jobIds, 'every attempt carries the same job id');
    }

    public function testSubmitThatMayHaveReachedTheNodeIsNotRetried(): void
    {
        $noWorker = RpcException::fromStatus(StatusCode::UNAVAILABLE, 'no worker', 'ERROR_REASON_NO_WORKER');
        foreach ([self::dropped(), $noWorker] as $failure) {
            $transport = new FakeTransport([$failure, self::submitted()]);
            try {
                self::client($transport)->submit('m');
                self::fail('no exception');
            } catch (UnavailableException $e) {
                self::assertSame($failure, $e);
            }
            self::assertCount(1, $transport->calls);
        }
    }

    public function testSubmitKeepsTheCallersJobId(): void
    {
        $transport = new FakeTransport([self::submitted()]);
        $jobId = Client::newJobId();
        self::client($transport)->submit('m', jobId: $jobId);
        $request = new SubmitRequest();
        $request->mergeFromString($transport->calls[0]['request']);
        self::assertSame($jobId, $request->getJobId());
    }

    public function testTheDeadlineCoversEveryAttempt(): void
    {
        $transport = new FakeTransport([self::refused(), self::nodeInfo()]);
        self::client($transport, ['deadline' => 30.0])->nodeInfo();
        [$first, $second] = array_column($transport->calls, 'timeout');
        self::assertLessThanOrEqual(30.0, $first);
        self::assertLessThan($first, $second, 'the retry gets what is left, not a fresh deadline');
        $transport = new FakeTransport([self::nodeInfo()]);
        self::client($transport, ['deadline' => 30.0])->nodeInfo(deadline: 2.0);
        self::assertLessThanOrEqual(2.0, $transport->calls[0]['timeout']);
        $transport = new FakeTransport([self::nodeInfo()]);
        self::client($transport, ['deadline' => null])->nodeInfo();
        self::assertNull($transport->calls[0]['timeout']);
    }

    public function testNoRetrySleepsPastTheDeadline(): void
    {
        $transport = new FakeTransport([self::refused(), self::nodeInfo()]);
        $this->expectException(ConnectionException::class);
        self::client($transport, ['backoff' => 5.0, 'max_backoff' => 5.0])->nodeInfo(deadline: 1.0);
    }

    public function testAnExpiredDeadlineSendsNothing(): void
    {
        $transport = new FakeTransport([]);
        $this->expectException(DeadlineExceededException::class);
        self::client($transport)->nodeInfo(deadline: 0.0);
    }

    public function testAResponseThatDoesNotDecodeIsAProtocolError(): void
    {
        $transport = new FakeTransport(["\x0a\x05ab"]); // field 1 announces 5 bytes, 2 follow
        $this->expectException(ProtocolException::class);
        self::client($transport)->nodeInfo();
    }

    public function testWatchDeliversEventsAndStopsWhenAsked(): void
    {
        $kinds = [
            JobEventKind::JOB_EVENT_KIND_SUBMITTED,
            JobEventKind::JOB_EVENT_KIND_RUNNING,
            JobEventKind::JOB_EVENT_KIND_FINISHED,
        ];
        $events = array_map(
            static fn (int $kind): string => (new WatchResponse())
                ->setEvent((new JobEvent())->setKind($kind))
                ->serializeToString(),
            $kinds,
        );
        $seen = [];
        $onEvent = static function (JobEvent $e) use (&$seen): bool {
            $seen[] = $e->getKind();
            return $e->getKind() !== JobEventKind::JOB_EVENT_KIND_RUNNING;
        };
        self::client(new FakeTransport([$events]))->watch(str_repeat('a', 32), $onEvent);
        self::assertSame([JobEventKind::JOB_EVENT_KIND_SUBMITTED, JobEventKind::JOB_EVENT_KIND_RUNNING], $seen);
    }

    public function testUnknownOptionsAreRefused(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        new Client('127.0.0.1:1', ['retry' => 1]);
    }
}
