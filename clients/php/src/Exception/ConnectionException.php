<?php

declare(strict_types=1);

namespace Plasm\Exception;

use Plasm\StatusCode;

/**
 * The transport failed: connection refused (daemon down), no such Unix
 * socket, a TLS or HTTP/2 failure, or the connection dropped mid-call.
 * It has UNAVAILABLE semantics (status 14, and it is an UnavailableException).
 *
 * requestSent() says whether the request may have reached the node: false
 * only when the connection was never established, so nothing was sent and
 * even a non-idempotent call (Submit) can be retried safely.
 */
class ConnectionException extends UnavailableException
{
    public function __construct(
        string $details,
        private readonly bool $requestSent,
        private readonly int $curlErrno = 0,
    ) {
        parent::__construct(StatusCode::UNAVAILABLE, $details);
    }

    public function requestSent(): bool
    {
        return $this->requestSent;
    }

    /** libcurl's error number (CURLE_*), 0 when not from curl. */
    public function getCurlErrno(): int
    {
        return $this->curlErrno;
    }
}
