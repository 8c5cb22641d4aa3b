<?php

declare(strict_types=1);

namespace Plasm\Tests;

use Plasm\Exception\RpcException;
use Plasm\Transport\Transport;

/**
 * A Transport that answers from a script: each call takes the next entry and
 * records itself. An entry is a response message (unary), a list of messages
 * (server stream), or an exception to throw.
 */
final class FakeTransport implements Transport
{
    /** @var list<array{path: string, request: string, timeout: ?float}> */
    public array $calls = [];

    /** @param list<string|list<string>|RpcException> $script */
    public function __construct(private array $script)
    {
    }

    public function unary(string $path, string $request, ?float $timeout): string
    {
        $next = $this->next($path, $request, $timeout);
        if (!is_string($next)) {
            throw new \LogicException('FakeTransport: a stream entry for a unary call');
        }
        return $next;
    }

    public function serverStream(string $path, string $request, ?float $timeout, callable $onMessage): void
    {
        $next = $this->next($path, $request, $timeout);
        foreach ((array) $next as $message) {
            if ($onMessage($message) === false) {
                return;
            }
        }
    }

    /** @return string|list<string> */
    private function next(string $path, string $request, ?float $timeout): string|array
    {
        $this->calls[] = ['path' => $path, 'request' => $request, 'timeout' => $timeout];
        if ($this->script === []) {
            throw new \LogicException("FakeTransport: unexpected call to $path");
        }
        $next = array_shift($this->script);
        if ($next instanceof RpcException) {
            throw $next;
        }
        return $next;
    }
}
