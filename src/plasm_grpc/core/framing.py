"""Length-prefixed frames on a byte stream, and chunking of large messages. Sans-I/O.

**Frames.** `encode_frame` writes a u32 big-endian length and the payload.
`FrameDecoder.feed` takes the stream's bytes in any split and returns the
whole frames they complete. It refuses a length above its maximum as soon as
the four length bytes are in, before buffering any of the payload, and never
holds more than one frame (4 + max_frame_bytes bytes). On the overlay each
frame holds one Noise transport message, so its decoder's maximum is
NOISE_MAX_MESSAGE_BYTES; the 1 MiB default suits unencrypted local streams.

**Chunks.** A message too large for one frame (for the overlay: above the
Noise plaintext cap less the OverlayFrame header) travels as chunks on a
stream id (OverlayFrame.stream_id). `Chunker` hands out the chunks of every
pending message round-robin, one per `next_chunk()`, so the adapter can send
small messages between two chunks of a large transfer, and several transfers
share the connection fairly. `Reassembler` joins each stream's chunks back,
bounded per message, in total and in the number of open streams.

Errors: what the peer sent wrong raises `RemoteOverlayError` (drop the
connection); asking to send what the protocol forbids raises
`LocalOverlayError`. Nothing else escapes `FrameDecoder.feed` or
`Reassembler.receive` for any input.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.overlay_errors import LocalOverlayError, RemoteOverlayError

__all__ = [
    "LENGTH_PREFIX_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_STREAM_ID",
    "Chunk",
    "Chunker",
    "FrameDecoder",
    "Reassembler",
    "encode_frame",
]

LENGTH_PREFIX_BYTES: Final = 4
MAX_FRAME_BYTES: Final = 1 << 20  # the default maximum (1 MiB)
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1
MAX_STREAM_ID: Final = _U32_MAX  # OverlayFrame.stream_id is a uint32; 0 means "not chunked"


def _check_max_frame_bytes(max_frame_bytes: int) -> None:
    if not 0 <= max_frame_bytes <= _U32_MAX:
        raise ValueError(f"max_frame_bytes must be 0..{_U32_MAX}, got {max_frame_bytes}")


def encode_frame(payload: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """`payload` behind its u32 big-endian length."""
    _check_max_frame_bytes(max_frame_bytes)
    if len(payload) > max_frame_bytes:
        raise LocalOverlayError(
            f"a frame holds at most {max_frame_bytes} bytes, got {len(payload)}"
        )
    return len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big") + payload


class FrameDecoder:
    """Whole frames out of a byte stream fed in any split.

    After it raises, the stream is broken (framing cannot resynchronise), and
    every later `feed` raises LocalOverlayError; frames completed earlier in
    the failing call are dropped with the connection.
    """

    __slots__ = ("_buffer", "_failure", "_length", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        _check_max_frame_bytes(max_frame_bytes)
        self.max_frame_bytes: Final = max_frame_bytes
        self._buffer = bytearray()
        self._length: int | None = None  # the current frame's length, once its prefix is in
        self._failure: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the frame in progress (prefix or payload)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames that `data` completes, in order."""
        if self._failure is not None:
            raise LocalOverlayError(f"the stream already failed: {self._failure}")
        frames: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._length is None:
                view = self._take(view, LENGTH_PREFIX_BYTES)
                if len(self._buffer) < LENGTH_PREFIX_BYTES:
                    break
                length = int.from_bytes(self._buffer, "big")
                self._buffer.clear()
                if length > self.max_frame_bytes:
                    self._failure = (
                        f"a frame of {length} bytes is above the maximum of {self.max_frame_bytes}"
                    )
                    raise RemoteOverlayError(self._failure)
                self._length = length
            if not self._buffer and len(view) >= self._length:
                frames.append(bytes(view[: self._length]))  # whole frame: no copy via buffer
                view = view[self._length :]
            else:
                view = self._take(view, self._length)
                if len(self._buffer) < self._length:
                    break
                frames.append(bytes(self._buffer))
                self._buffer.clear()
            self._length = None
        return frames

    def end_of_stream(self) -> None:
        """The peer closed the stream; raises if it did so inside a frame."""
        if self._failure is None and (self._buffer or self._length is not None):
            self._failure = "the stream ended inside a frame"
            raise RemoteOverlayError(self._failure)

    def _take(self, view: memoryview, until: int) -> memoryview:
        need = until - len(self._buffer)
        self._buffer += view[:need]
        return view[need:]


# -- chunking ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """One piece of a chunked message (one OverlayFrame with a non-zero stream_id)."""

    stream_id: int
    data: bytes
    first: bool  # starts the message (the frame with the message's kind and method)
    end_of_message: bool  # carries the message's last bytes
    total_bytes: int | None = None  # the whole message's size, declared on the first chunk

    def __post_init__(self) -> None:
        if not 1 <= self.stream_id <= MAX_STREAM_ID:
            raise ValueError(f"a stream id is 1..{MAX_STREAM_ID}, got {self.stream_id}")
        if self.total_bytes is not None and not 0 <= self.total_bytes <= _U64_MAX:
            raise ValueError(f"total_bytes is a uint64, got {self.total_bytes}")


@dataclass(slots=True)
class _Outgoing:
    stream_id: int
    payload: memoryview
    offset: int = 0


class Chunker:
    """Splits messages into chunks of at most `chunk_bytes`, interleaving streams.

    Stream ids are allocated from 1 up, one per message; running out of them
    (2**32 - 1 chunked messages on one connection) raises LocalOverlayError,
    and the adapter reconnects.
    """

    __slots__ = ("_next_stream_id", "_queue", "chunk_bytes")

    def __init__(self, *, chunk_bytes: int) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.chunk_bytes: Final = chunk_bytes
        self._next_stream_id = 1
        self._queue: deque[_Outgoing] = deque()

    def add(self, payload: bytes) -> int:
        """Queue `payload` as a chunked message; returns its stream id."""
        if self._next_stream_id > MAX_STREAM_ID:
            raise LocalOverlayError("stream ids are exhausted on this connection")
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        self._queue.append(_Outgoing(stream_id=stream_id, payload=memoryview(bytes(payload))))
        return stream_id

    def next_chunk(self) -> Chunk | None:
        """The next chunk to send, taking one from each pending message in turn."""
        if not self._queue:
            return None
        out = self._queue.popleft()
        start = out.offset
        end = min(start + self.chunk_bytes, len(out.payload))
        out.offset = end
        done = end == len(out.payload)
        if not done:
            self._queue.append(out)
        return Chunk(
            stream_id=out.stream_id,
            data=bytes(out.payload[start:end]),
            first=start == 0,
            end_of_message=done,
            total_bytes=len(out.payload) if start == 0 else None,
        )

    def cancel(self, stream_id: int) -> bool:
        """Stop sending a message; True if it still had chunks to send.

        The adapter then sends a CANCEL frame on that stream id when the
        message was already started (the peer holds part of it).
        """
        for out in self._queue:
            if out.stream_id == stream_id:
                self._queue.remove(out)
                return True
        return False

    @property
    def pending(self) -> int:
        """Messages with chunks still to send."""
        return len(self._queue)


@dataclass(slots=True)
class _Incoming:
    data: bytearray
    declared: int | None


class Reassembler:
    """Joins each stream's chunks into its message, within limits.

    `max_message_bytes` bounds one message, `max_buffered_bytes` all partial
    messages together, and `max_streams` how many can be open at once. A chunk
    that breaks a limit or the chunk order raises RemoteOverlayError and
    drops that stream's bytes.
    """

    __slots__ = ("_buffered", "_streams", "max_buffered_bytes", "max_message_bytes", "max_streams")

    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_buffered_bytes: int | None = None,
        max_streams: int = 16,
    ) -> None:
        if max_message_bytes < 0:
            raise ValueError("max_message_bytes must not be negative")
        if max_buffered_bytes is None:
            max_buffered_bytes = max_message_bytes
        if max_buffered_bytes < 0:
            raise ValueError("max_buffered_bytes must not be negative")
        if max_streams < 1:
            raise ValueError("max_streams must be positive")
        self.max_message_bytes: Final = max_message_bytes
        self.max_buffered_bytes: Final = max_buffered_bytes
        self.max_streams: Final = max_streams
        self._streams: dict[int, _Incoming] = {}
        self._buffered = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for messages not yet complete."""
        return self._buffered

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def receive(self, chunk: Chunk) -> bytes | None:
        """The whole message when `chunk` completes it, else None."""
        sid = chunk.stream_id
        if chunk.first:
            if sid in self._streams:
                self.abort(sid)
                raise RemoteOverlayError(f"stream {sid} started twice")
            if chunk.total_bytes is not None and chunk.total_bytes > self.max_message_bytes:
                raise RemoteOverlayError(
                    f"stream {sid} declares {chunk.total_bytes} bytes, above the "
                    f"maximum of {self.max_message_bytes}"
                )
            if chunk.end_of_message:  # a one-chunk message: nothing to hold
                self._check_size(sid, len(chunk.data), chunk.total_bytes, end=True)
                return chunk.data
            if len(self._streams) >= self.max_streams:
                raise RemoteOverlayError(
                    f"more than {self.max_streams} chunked messages open at once"
                )
            incoming = _Incoming(data=bytearray(), declared=chunk.total_bytes)
            self._streams[sid] = incoming
        else:
            found = self._streams.get(sid)
            if found is None:
                raise RemoteOverlayError(f"a chunk for stream {sid}, which is not open")
            if chunk.total_bytes is not None:
                self.abort(sid)
                raise RemoteOverlayError(f"stream {sid}: only a first chunk declares a size")
            incoming = found
        size = len(incoming.data) + len(chunk.data)
        try:
            self._check_size(sid, size, incoming.declared, end=chunk.end_of_message)
            if self._buffered + len(chunk.data) > self.max_buffered_bytes:
                raise RemoteOverlayError(
                    f"chunked messages would hold more than {self.max_buffered_bytes} bytes"
                )
        except RemoteOverlayError:
            self.abort(sid)
            raise
        if chunk.end_of_message:
            self.abort(sid)
            return bytes(incoming.data) + chunk.data
        incoming.data += chunk.data
        self._buffered += len(chunk.data)
        return None

    def abort(self, stream_id: int) -> None:
        """Forget a stream's partial message (the peer cancelled it). No-op if unknown."""
        incoming = self._streams.pop(stream_id, None)
        if incoming is not None:
            self._buffered -= len(incoming.data)

    def _check_size(self, sid: int, size: int, declared: int | None, *, end: bool) -> None:
        if size > self.max_message_bytes:
            raise RemoteOverlayError(
                f"stream {sid} is above the maximum message size of {self.max_message_bytes}"
            )
        if declared is not None and (size > declared or (end and size != declared)):
            raise RemoteOverlayError(
                f"stream {sid} declared {declared} bytes but carried "
                f"{'at least ' if not end else ''}{size}"
            )
