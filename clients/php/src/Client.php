<?php

declare(strict_types=1);

namespace Plasm;

use Google\Protobuf\Internal\Message;
use Plasm\Exception\ConnectionException;
use Plasm\Exception\DeadlineExceededException;
use Plasm\Exception\ProtocolException;
use Plasm\Exception\RpcException;
use Plasm\Exception\UnavailableException;
use Plasm\Transport\CurlTransport;
use Plasm\Transport\Transport;
use Plasm\V1\CancelRequest;
use Plasm\V1\CancelResponse;
use Plasm\V1\GetNodeInfoRequest;
use Plasm\V1\GetNodeInfoResponse;
use Plasm\V1\GetReceiptRequest;
use Plasm\V1\GetReceiptResponse;
use Plasm\V1\JobEvent;
use Plasm\V1\JobManifest;
use Plasm\V1\ListReceiptsRequest;
use Plasm\V1\ListReceiptsResponse;
use Plasm\V1\ResourceLimits;
use Plasm\V1\SignedEnvelope;
use Plasm\V1\StoredReceipt;
use Plasm\V1\SubmitRequest;
use Plasm\V1\SubmitResponse;
use Plasm\V1\VerifyRequest;
use Plasm\V1\VerifyResponse;
use Plasm\V1\WatchRequest;
use Plasm\V1\WatchResponse;

/**
 * A client for a node's plasm.v1.PlasmService.
 *
 *     $client = new Client('127.0.0.1:50151');            // or 'unix:/run/plasm/plasmd.sock'
 *     $response = $client->submit($wasm, args: ['hello.wasm'], stdin: 'Hello, World');
 *     $input = ['args' => ['hello.wasm'], 'stdin' => 'Hello, World'];
 *     $check = ReceiptVerifier::verifyResult($response->getResult(), $wasm, $input);
 *
 * Deadlines: every call has one (the per-call $deadline in seconds, else the
 * "deadline" option); it covers the call and its retries, is sent as
 * grpc-timeout, and is enforced locally by curl. When it passes the call
 * throws DeadlineExceededException.
 *
 * Retries: only UNAVAILABLE is retried, up to "retries" times with exponential
 * backoff and jitter, never past the deadline. Calls that only read (Verify,
 * GetNodeInfo, GetReceipt, ListReceipts) and Cancel are retried on any
 * UNAVAILABLE. Submit and Watch are retried only when the connection failed
 * before anything was sent (ConnectionException::requestSent() is false): a
 * Submit that reached the node may have run, and running it again is not the
 * client's call to make. Every Submit also carries a job id chosen here (or
 * by the caller), the same on every attempt, so a node that did receive an
 * earlier attempt refuses the repeat as a duplicate ("job id ... is already
 * used", INVALID_ARGUMENT) instead of running the job twice.
 */
final class Client
{
    public const SERVICE = 'plasm.v1.PlasmService';
    public const DEFAULT_TARGET = '127.0.0.1:50151';

    private const DEFAULTS = [
        'deadline' => 60.0,
        'retries' => 3,
        'backoff' => 0.1,
        'max_backoff' => 2.0,
        'connect_timeout' => 5.0,
        'max_message_bytes' => 64 * 1024 * 1024,
        'ca_file' => null,
        'transport' => null,
    ];

    private readonly Transport $transport;
    private readonly ?float $deadline;
    private readonly int $retries;
    private readonly float $backoff;
    private readonly float $maxBackoff;

    /**
     * @param string $target "host:port", "unix:/path/to.sock" or "https://host:port"
     * @param array{
     *     deadline?: float|null,
     *     retries?: int,
     *     backoff?: float,
     *     max_backoff?: float,
     *     connect_timeout?: float,
     *     max_message_bytes?: int,
     *     ca_file?: string|null,
     *     transport?: Transport|null,
     * } $options deadline: default seconds per call (null: none; default 60);
     *     retries: extra attempts on UNAVAILABLE (default 3); backoff, max_backoff:
     *     first and largest delay between attempts in seconds (0.1, 2.0);
     *     connect_timeout: seconds (5); max_message_bytes: largest response
     *     message accepted (64 MiB); ca_file: CA bundle for https targets;
     *     transport: a Transport to use instead of curl (tests)
     */
    public function __construct(string $target = self::DEFAULT_TARGET, array $options = [])
    {
        $unknown = array_diff(array_keys($options), array_keys(self::DEFAULTS));
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown Client options: ' . implode(', ', $unknown));
        }
        $o = $options + self::DEFAULTS;
        if ($o['retries'] < 0 || $o['backoff'] < 0 || $o['max_backoff'] < 0 || $o['connect_timeout'] <= 0) {
            throw new \InvalidArgumentException('retries, backoff and max_backoff must be >= 0, connect_timeout > 0');
        }
        $this->deadline = $o['deadline'] === null ? null : (float) $o['deadline'];
        $this->retries = (int) $o['retries'];
        $this->backoff = (float) $o['backoff'];
        $this->maxBackoff = (float) $o['max_backoff'];
        $this->transport = $o['transport'] ?? new CurlTransport(
            $target,
            (float) $o['connect_timeout'],
            (int) $o['max_message_bytes'],
            $o['ca_file'],
        );
    }

    /**
     * Run a job and return its output and signed receipt.
     *
     * @param string $module the WebAssembly module bytes ('' when the node already holds $moduleSha256)
     * @param list<string> $args argv, including argv[0] if the guest expects one
     * @param array<int|string, mixed> $env [name, value] pairs or a name => value map (order kept)
     * @param string|null $jobId 32 lowercase hex; null: a fresh random one (see the class comment)
     */
    public function submit(
        string $module,
        array $args = [],
        string $stdin = '',
        array $env = [],
        ?ResourceLimits $limits = null,
        ?string $jobId = null,
        ?float $deadline = null,
        string $moduleSha256 = '',
    ): SubmitResponse {
        $manifest = JobInput::of($args, $env, $stdin)->toManifest();
        $manifest->setModuleSha256($moduleSha256);
        if ($limits !== null) {
            $manifest->setLimits($limits);
        }
        return $this->submitManifest($manifest, $module, $jobId, $deadline);
    }

    /** Submit with a manifest you built (placement requirements, a module hash, ...). */
    public function submitManifest(
        JobManifest $manifest,
        string $module = '',
        ?string $jobId = null,
        ?float $deadline = null,
    ): SubmitResponse {
        $request = (new SubmitRequest())
            ->setManifest($manifest)
            ->setModule($module)
            ->setJobId($jobId ?? self::newJobId());
        return $this->unary('Submit', $request, SubmitResponse::class, $deadline, false);
    }

    /**
     * Ask the node to check a receipt (the Verify RPC). To check one without
     * trusting a node, use ReceiptVerifier::verify instead.
     *
     * @param JobInput|JobManifest|array<string, mixed>|null $input what you sent: a JobManifest,
     *        a JobInput, or ['args' => [...], 'env' => [...], 'stdin' => '...']
     */
    public function verify(
        SignedEnvelope $receipt,
        ?string $expectedExecutorNodeId = null,
        ?string $stdout = null,
        ?string $stderr = null,
        ?string $module = null,
        JobInput|JobManifest|array|null $input = null,
        ?float $deadline = null,
    ): VerifyResponse {
        // Debian's protobuf 3.21 runtime gives each proto3 `optional` field a
        // dynamic property, which PHP 8.2 deprecates; silence that notice here
        // (error handlers that honour @ skip it) rather than in every caller.
        $request = (@new VerifyRequest())
            ->setReceipt($receipt)
            ->setExpectedExecutorNodeId($expectedExecutorNodeId ?? '');
        if ($stdout !== null) {
            $request->setStdout($stdout);
        }
        if ($stderr !== null) {
            $request->setStderr($stderr);
        }
        if ($module !== null) {
            $request->setModule($module);
        }
        if ($input !== null) {
            $request->setInput(JobInput::from($input)->toManifest());
        }
        return $this->unary('Verify', $request, VerifyResponse::class, $deadline, true);
    }

    public function nodeInfo(?float $deadline = null): GetNodeInfoResponse
    {
        return $this->unary('GetNodeInfo', new GetNodeInfoRequest(), GetNodeInfoResponse::class, $deadline, true);
    }

    /** A stored receipt; NotFoundException (ERROR_REASON_RECEIPT_NOT_FOUND) when the node has none. */
    public function getReceipt(string $jobId, ?float $deadline = null): StoredReceipt
    {
        $request = (new GetReceiptRequest())->setJobId($jobId);
        $response = $this->unary('GetReceipt', $request, GetReceiptResponse::class, $deadline, true);
        return $response->getReceipt() ?? throw new ProtocolException('GetReceipt answered without a receipt');
    }

    /** Stored receipts, newest first; pass getNextPageToken() back for the next page ('' at the end). */
    public function listReceipts(
        int $pageSize = 0,
        string $pageToken = '',
        ?float $deadline = null,
    ): ListReceiptsResponse {
        $request = (new ListReceiptsRequest())->setPageSize($pageSize)->setPageToken($pageToken);
        return $this->unary('ListReceipts', $request, ListReceiptsResponse::class, $deadline, true);
    }

    /** True when the job was still waiting or running and is being cancelled; false when it had ended. */
    public function cancel(string $jobId, ?float $deadline = null): bool
    {
        $request = (new CancelRequest())->setJobId($jobId);
        return $this->unary('Cancel', $request, CancelResponse::class, $deadline, true)->getCancelled();
    }

    /**
     * A job's events from its start, then live until it ends (the Watch RPC).
     * $onEvent gets each JobEvent as it arrives; returning false stops watching.
     *
     * @param callable(JobEvent): (bool|null) $onEvent
     */
    public function watch(string $jobId, callable $onEvent, ?float $deadline = null): void
    {
        $request = (new WatchRequest())->setJobId($jobId)->serializeToString();
        $path = '/' . self::SERVICE . '/Watch';
        $onMessage = static function (string $bytes) use ($onEvent): bool {
            $event = self::decode($bytes, WatchResponse::class)->getEvent();
            return $event === null || $onEvent($event) !== false;
        };
        $this->withRetries($deadline, false, function (?float $timeout) use ($path, $request, $onMessage): void {
            $this->transport->serverStream($path, $request, $timeout, $onMessage);
        });
    }

    /** A fresh random job id (32 lowercase hex). */
    public static function newJobId(): string
    {
        return bin2hex(random_bytes(16));
    }

    /**
     * @template T of Message
     * @param class-string<T> $responseClass
     * @return T
     */
    private function unary(
        string $method,
        Message $request,
        string $responseClass,
        ?float $deadline,
        bool $idempotent,
    ): Message {
        $path = '/' . self::SERVICE . '/' . $method;
        $bytes = $request->serializeToString();
        $response = $this->withRetries(
            $deadline,
            $idempotent,
            fn (?float $timeout): string => $this->transport->unary($path, $bytes, $timeout),
        );
        return self::decode($response, $responseClass);
    }

    /**
     * Run $attempt until it succeeds, fails for good, or the deadline passes.
     *
     * @template R
     * @param callable(?float): R $attempt gets the seconds left until the deadline
     * @return R
     */
    private function withRetries(?float $deadline, bool $idempotent, callable $attempt): mixed
    {
        $seconds = $deadline ?? $this->deadline;
        $deadlineAt = $seconds === null ? null : self::now() + $seconds;
        for ($retry = 0;; $retry++) {
            $timeout = $deadlineAt === null ? null : $deadlineAt - self::now();
            if ($timeout !== null && $timeout <= 0) {
                throw new DeadlineExceededException(StatusCode::DEADLINE_EXCEEDED, "deadline of $seconds s exceeded");
            }
            try {
                return $attempt($timeout);
            } catch (UnavailableException $e) {
                $safe = $idempotent || ($e instanceof ConnectionException && !$e->requestSent());
                if (!$safe || $retry >= $this->retries) {
                    throw $e;
                }
                $delay = $this->backoffDelay($retry);
                if ($deadlineAt !== null && self::now() + $delay >= $deadlineAt) {
                    throw $e;
                }
                usleep((int) ($delay * 1e6));
            }
        }
    }

    /** Exponential backoff with jitter: between half and all of min(max, base * 2^retry). */
    private function backoffDelay(int $retry): float
    {
        $ceiling = min($this->maxBackoff, $this->backoff * (2 ** $retry));
        return $ceiling * (0.5 + 0.5 * mt_rand() / mt_getrandmax());
    }

    /**
     * @template T of Message
     * @param class-string<T> $class
     * @return T
     */
    private static function decode(string $bytes, string $class): Message
    {
        $message = new $class();
        try {
            $message->mergeFromString($bytes);
        } catch (\Exception $e) {
            throw new ProtocolException("the response is not a valid $class: " . $e->getMessage(), [], $e);
        }
        return $message;
    }

    private static function now(): float
    {
        return hrtime(true) / 1e9;
    }
}
