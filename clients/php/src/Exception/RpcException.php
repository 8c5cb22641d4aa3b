<?php

declare(strict_types=1);

namespace Plasm\Exception;

use Plasm\StatusCode;
use RuntimeException;

/**
 * A failed call: the gRPC status code, the server's message, and Plasm's
 * machine-readable reason (the "plasm-error-reason" trailer, a
 * plasm.v1.ErrorReason value name such as "ERROR_REASON_RECEIPT_NOT_FOUND";
 * "" when the server sent none).
 *
 * Catch a subclass for one status (NotFoundException, ...), or this class for
 * any failed call.
 */
class RpcException extends RuntimeException
{
    private const CLASSES = [
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
    ];

    /**
     * @param array<string, string> $trailers response headers and trailers, lowercase names
     */
    public function __construct(
        private readonly int $statusCode,
        private readonly string $details,
        private readonly string $reason = '',
        private readonly array $trailers = [],
        ?\Throwable $previous = null,
    ) {
        $text = StatusCode::name($statusCode) . ': ' . $details;
        if ($reason !== '') {
            $text .= " ($reason)";
        }
        parent::__construct($text, $statusCode, $previous);
    }

    /**
     * The exception for a status the server (or the transport) reported.
     *
     * @param array<string, string> $trailers
     */
    public static function fromStatus(
        int $statusCode,
        string $details,
        string $reason = '',
        array $trailers = [],
    ): self {
        $class = self::CLASSES[$statusCode] ?? self::class;
        return new $class($statusCode, $details, $reason, $trailers);
    }

    public function getStatusCode(): int
    {
        return $this->statusCode;
    }

    public function getStatusName(): string
    {
        return StatusCode::name($this->statusCode);
    }

    /** The server's message alone, without the status name and reason. */
    public function getDetails(): string
    {
        return $this->details;
    }

    /** plasm.v1.ErrorReason value name, or "". */
    public function getReason(): string
    {
        return $this->reason;
    }

    /** @return array<string, string> */
    public function getTrailers(): array
    {
        return $this->trailers;
    }
}
