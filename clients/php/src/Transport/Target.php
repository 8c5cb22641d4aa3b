<?php

declare(strict_types=1);

namespace Plasm\Transport;

/**
 * Where a node's gRPC API is, parsed from a target string:
 *
 *   "127.0.0.1:50151", "[::1]:50151", "localhost:50151", "http://host:port"
 *                       cleartext HTTP/2 (prior knowledge), as plasmd serves it
 *   "unix:/run/plasm/plasmd.sock", "unix:///abs/path", "unix:relative/path"
 *                       cleartext HTTP/2 over a Unix socket
 *   "https://host:port" HTTP/2 over TLS (ALPN h2), for a node or proxy that offers it
 */
final class Target
{
    private function __construct(
        public readonly string $baseUrl,
        public readonly ?string $unixSocket,
        public readonly bool $tls,
        public readonly string $display,
    ) {
    }

    public static function parse(string $target): self
    {
        if (str_starts_with($target, 'unix:')) {
            $path = str_starts_with($target, 'unix://') ? substr($target, 7) : substr($target, 5);
            if ($path === '' || str_contains($path, "\0")) {
                throw new \InvalidArgumentException("bad Unix socket target: '$target'");
            }
            return new self('http://localhost', $path, false, $target);
        }
        $tls = false;
        $authority = $target;
        if (str_starts_with($target, 'https://')) {
            $tls = true;
            $authority = substr($target, 8);
        } elseif (str_starts_with($target, 'http://')) {
            $authority = substr($target, 7);
        }
        $authority = rtrim($authority, '/');
        if (!preg_match('/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$/', $authority, $m) || (int) $m[2] > 65535) {
            throw new \InvalidArgumentException(
                "bad target '$target': expected host:port, https://host:port or unix:/path"
            );
        }
        return new self(($tls ? 'https://' : 'http://') . $authority, null, $tls, $target);
    }
}
