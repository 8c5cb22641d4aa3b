<?php

declare(strict_types=1);

namespace Plasm\Transport;

use CurlHandle;
use Plasm\Exception\ConnectionException;
use Plasm\Exception\DeadlineExceededException;
use Plasm\Exception\ProtocolException;
use Plasm\Exception\RpcException;
use Plasm\StatusCode;

/**
 * gRPC over HTTP/2 with libcurl, for PHP without the grpc extension.
 *
 * A call is a POST with content-type application/grpc and te: trailers whose
 * body is the length-prefixed request. Cleartext targets use HTTP/2 with prior
 * knowledge (plasmd's TCP port and Unix socket speak h2c); https targets
 * negotiate h2 with ALPN. The status, message and plasm-error-reason come in
 * the trailers, or in the headers of a trailers-only response; the header
 * callback sees both. One curl handle is kept, so calls reuse the connection,
 * except over cleartext with libcurl before 7.89.0, whose reuse of a
 * prior-knowledge HTTP/2 connection fails with "Error in the HTTP2 framing
 * layer" (curl/curl#10634, fixed by #10643): there each call gets a fresh
 * connection, which costs little on loopback or a Unix socket.
 *
 * Deadlines: the remaining time goes to the server as grpc-timeout and to curl
 * as its transfer timeout, plus a small grace so the server's own
 * DEADLINE_EXCEEDED (with its reason) normally arrives first.
 */
final class CurlTransport implements Transport
{
    public const USER_AGENT = 'plasm-php/0.1 (curl)';
    private const DEADLINE_GRACE_S = 0.1;
    /** curl errors that mean no connection was made, so nothing was sent. */
    private const NOT_CONNECTED = [
        CURLE_UNSUPPORTED_PROTOCOL,
        CURLE_COULDNT_RESOLVE_PROXY,
        CURLE_COULDNT_RESOLVE_HOST,
        CURLE_COULDNT_CONNECT,
        CURLE_SSL_CONNECT_ERROR,
        CURLE_SSL_PEER_CERTIFICATE, // 60, CURLE_PEER_FAILED_VERIFICATION in libcurl
    ];

    private readonly Target $target;
    private readonly bool $reuseConnections;
    private ?CurlHandle $handle = null;

    /**
     * @param float $connectTimeout seconds to establish the connection
     * @param string|null $caFile CA bundle for https targets; null: the system's
     */
    public function __construct(
        Target|string $target,
        private readonly float $connectTimeout = 5.0,
        private readonly int $maxMessageBytes = 64 * 1024 * 1024,
        private readonly ?string $caFile = null,
    ) {
        $this->target = is_string($target) ? Target::parse($target) : $target;
        $this->reuseConnections = $this->target->tls || curl_version()['version_number'] >= 0x075900;
    }

    public function unary(string $path, string $request, ?float $timeout): string
    {
        $messages = [];
        $this->exchange($path, $request, $timeout, static function (string $m) use (&$messages): bool {
            $messages[] = $m;
            return true;
        });
        if (count($messages) !== 1) {
            throw new ProtocolException('a unary call got ' . count($messages) . ' response messages, expected 1');
        }
        return $messages[0];
    }

    public function serverStream(string $path, string $request, ?float $timeout, callable $onMessage): void
    {
        $this->exchange($path, $request, $timeout, $onMessage);
    }

    public function close(): void
    {
        $this->handle = null; // curl_close is a no-op since PHP 8; dropping the handle closes it
    }

    /** @param callable(string): (bool|null) $onMessage */
    private function exchange(string $path, string $request, ?float $timeout, callable $onMessage): void
    {
        if ($timeout !== null && $timeout <= 0) {
            throw new DeadlineExceededException(StatusCode::DEADLINE_EXCEEDED, 'deadline exceeded before sending');
        }
        $ch = $this->handle ??= curl_init();
        curl_reset($ch);

        $headers = [];
        $httpStatus = 0;
        $decoder = new FrameDecoder($this->maxMessageBytes);
        $failure = null;
        $stopped = false;

        $onHeader = static function (CurlHandle $ch, string $line) use (&$headers, &$httpStatus): int {
            $trimmed = rtrim($line, "\r\n");
            if (preg_match('#^HTTP/\S+\s+(\d{3})#', $trimmed, $m)) {
                $httpStatus = (int) $m[1];
            } elseif (($colon = strpos($trimmed, ':')) !== false) {
                $headers[strtolower(substr($trimmed, 0, $colon))] = trim(substr($trimmed, $colon + 1));
            }
            return strlen($line);
        };
        $onData = function (CurlHandle $ch, string $data) use (
            $decoder,
            $onMessage,
            &$headers,
            &$failure,
            &$stopped,
        ): int {
            try {
                foreach ($decoder->push($data) as [$compressed, $message]) {
                    if ($compressed) {
                        $message = $this->decompress($message, $headers['grpc-encoding'] ?? 'identity');
                    }
                    if ($onMessage($message) === false) {
                        $stopped = true;
                        return 0; // makes curl abort the transfer
                    }
                }
            } catch (\Throwable $e) {
                $failure = $e;
                return 0;
            }
            return strlen($data);
        };

        $requestHeaders = [
            'content-type: application/grpc',
            'te: trailers',
            'user-agent: ' . self::USER_AGENT,
            'expect:',
        ];
        if ($timeout !== null) {
            $requestHeaders[] = 'grpc-timeout: ' . self::grpcTimeout($timeout);
        }
        $options = [
            CURLOPT_URL => $this->target->baseUrl . $path,
            CURLOPT_HTTP_VERSION => $this->target->tls ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE,
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => FrameDecoder::encode($request),
            CURLOPT_HTTPHEADER => $requestHeaders,
            CURLOPT_HEADERFUNCTION => $onHeader,
            CURLOPT_WRITEFUNCTION => $onData,
            CURLOPT_NOSIGNAL => true,
            CURLOPT_FORBID_REUSE => !$this->reuseConnections,
            CURLOPT_CONNECTTIMEOUT_MS => self::millis(
                $timeout === null ? $this->connectTimeout : min($this->connectTimeout, $timeout)
            ),
            CURLOPT_TIMEOUT_MS => $timeout === null ? 0 : self::millis($timeout + self::DEADLINE_GRACE_S),
        ];
        if ($this->target->unixSocket !== null) {
            $options[CURLOPT_UNIX_SOCKET_PATH] = $this->target->unixSocket;
        }
        if ($this->target->tls && $this->caFile !== null) {
            $options[CURLOPT_CAINFO] = $this->caFile;
        }
        curl_setopt_array($ch, $options);

        $started = hrtime(true);
        curl_exec($ch);
        $errno = curl_errno($ch);
        if ($failure !== null) {
            throw $failure; // a ProtocolException from the framing, or whatever $onMessage threw
        }
        if ($stopped) {
            return;
        }
        if ($errno !== 0) {
            // A trailers-only status can come with a transport error right after it
            // (for example a reset stream); the status is the better answer.
            if (isset($headers['grpc-status']) && $headers['grpc-status'] !== '0') {
                throw self::statusError($headers);
            }
            throw $this->transportError($ch, $errno, $timeout, (hrtime(true) - $started) / 1e9);
        }
        if ($this->target->tls && curl_getinfo($ch, CURLINFO_HTTP_VERSION) !== CURL_HTTP_VERSION_2) {
            throw new ProtocolException("{$this->target->display} did not negotiate HTTP/2 (ALPN h2)", $headers);
        }
        if (!isset($headers['grpc-status'])) {
            if ($httpStatus !== 200) {
                throw RpcException::fromStatus(
                    StatusCode::fromHttpStatus($httpStatus),
                    "HTTP status $httpStatus from {$this->target->display}, not a gRPC response",
                    '',
                    $headers,
                );
            }
            throw new ProtocolException('the response has no grpc-status', $headers);
        }
        if ($headers['grpc-status'] !== '0') {
            throw self::statusError($headers);
        }
        $decoder->finish();
    }

    /** @param array<string, string> $headers */
    private static function statusError(array $headers): RpcException
    {
        $code = $headers['grpc-status'];
        if (!ctype_digit($code)) {
            return new ProtocolException("bad grpc-status '$code'", $headers);
        }
        return RpcException::fromStatus(
            (int) $code,
            rawurldecode($headers['grpc-message'] ?? ''),
            $headers['plasm-error-reason'] ?? '',
            $headers,
        );
    }

    private function transportError(CurlHandle $ch, int $errno, ?float $timeout, float $elapsed): RpcException
    {
        $error = curl_error($ch) ?: curl_strerror($errno);
        $connected = !in_array($errno, self::NOT_CONNECTED, true)
            && curl_getinfo($ch, CURLINFO_PRETRANSFER_TIME) > 0;
        if ($errno === CURLE_OPERATION_TIMEDOUT) {
            if ($timeout !== null && $elapsed >= $timeout) {
                return new DeadlineExceededException(
                    StatusCode::DEADLINE_EXCEEDED,
                    sprintf('deadline of %.3f s exceeded (%s)', $timeout, $error),
                );
            }
            if (!$connected) {
                return new ConnectionException(
                    "cannot connect to {$this->target->display} within {$this->connectTimeout} s: $error",
                    false,
                    $errno,
                );
            }
        }
        $where = $this->target->display;
        $what = $connected ? "connection to $where failed" : "cannot connect to $where";
        return new ConnectionException("$what: $error", $connected, $errno);
    }

    private function decompress(string $message, string $encoding): string
    {
        $plain = $encoding === 'gzip' ? @gzdecode($message) : false;
        if ($plain === false) {
            throw new ProtocolException("cannot decompress a message with grpc-encoding '$encoding'");
        }
        if (strlen($plain) > $this->maxMessageBytes) {
            throw new ProtocolException('a decompressed message is above the size limit');
        }
        return $plain;
    }

    /** The grpc-timeout header value: at most 8 digits and a unit. */
    public static function grpcTimeout(float $seconds): string
    {
        $millis = max(1, (int) ceil($seconds * 1000));
        return $millis <= 99_999_999 ? "{$millis}m" : min(99_999_999, (int) ceil($seconds)) . 'S';
    }

    private static function millis(float $seconds): int
    {
        return max(1, (int) ceil($seconds * 1000));
    }
}
