<?php

declare(strict_types=1);

namespace Plasm\Transport;

use Plasm\Exception\RpcException;

/**
 * Moves serialized messages for one gRPC call. Client does the protobuf and
 * the retry policy; a transport does one attempt and reports failures as
 * RpcException (ConnectionException when the connection failed).
 *
 * CurlTransport is the real one; tests substitute a fake.
 */
interface Transport
{
    /**
     * One request, one response.
     *
     * @param string $path "/plasm.v1.PlasmService/Submit"
     * @param float|null $timeout seconds left until the deadline; null: none
     * @return string the response message bytes
     * @throws RpcException
     */
    public function unary(string $path, string $request, ?float $timeout): string;

    /**
     * One request, a stream of responses handed to $onMessage as they arrive;
     * $onMessage returns false to stop early (not an error).
     *
     * @param callable(string): (bool|null) $onMessage
     * @throws RpcException
     */
    public function serverStream(string $path, string $request, ?float $timeout, callable $onMessage): void;
}
