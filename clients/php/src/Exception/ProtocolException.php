<?php

declare(strict_types=1);

namespace Plasm\Exception;

use Plasm\StatusCode;

/**
 * The response broke the gRPC protocol: a malformed or oversized frame, a
 * message that does not decode, no grpc-status, not HTTP/2. Reported with
 * status INTERNAL, as gRPC clients do.
 */
class ProtocolException extends RpcException
{
    /** @param array<string, string> $trailers */
    public function __construct(string $details, array $trailers = [], ?\Throwable $previous = null)
    {
        parent::__construct(StatusCode::INTERNAL, $details, '', $trailers, $previous);
    }
}
