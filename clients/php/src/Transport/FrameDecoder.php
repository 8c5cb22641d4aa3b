<?php

declare(strict_types=1);

namespace Plasm\Transport;

use Plasm\Exception\ProtocolException;

/**
 * gRPC length-prefixed messages over HTTP/2 DATA: each message is a 1-byte
 * compressed flag, a 4-byte big-endian length, then that many bytes.
 *
 * Sans-I/O: push() takes bytes as they arrive, split anywhere, and returns
 * the messages completed so far; finish() checks nothing is left over.
 */
final class FrameDecoder
{
    private string $buffer = '';

    public function __construct(private readonly int $maxMessageBytes = 64 * 1024 * 1024)
    {
    }

    /** The frame for one uncompressed message. */
    public static function encode(string $message): string
    {
        return pack('CN', 0, strlen($message)) . $message;
    }

    /**
     * @return list<array{bool, string}> [compressed, message bytes] per complete message
     * @throws ProtocolException on a bad flag or a message above the size limit
     */
    public function push(string $bytes): array
    {
        $this->buffer .= $bytes;
        $messages = [];
        while (strlen($this->buffer) >= 5) {
            $flag = ord($this->buffer[0]);
            if ($flag > 1) {
                throw new ProtocolException("bad gRPC frame: compressed flag $flag");
            }
            $length = unpack('N', $this->buffer, 1)[1];
            if ($length > $this->maxMessageBytes) {
                throw new ProtocolException(
                    "gRPC message of $length bytes is above the limit of {$this->maxMessageBytes}"
                );
            }
            if (strlen($this->buffer) < 5 + $length) {
                break;
            }
            $messages[] = [$flag === 1, substr($this->buffer, 5, $length)];
            $this->buffer = substr($this->buffer, 5 + $length);
        }
        return $messages;
    }

    /** @throws ProtocolException when the stream ended inside a frame */
    public function finish(): void
    {
        if ($this->buffer !== '') {
            throw new ProtocolException(
                'gRPC response ended inside a frame (' . strlen($this->buffer) . ' bytes left over)'
            );
        }
    }
}
