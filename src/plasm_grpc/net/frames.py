"""Stream 0 of an overlay connection: the handshake's bytes, then every
OverlayFrame, Noise-encrypted and length-prefixed, with large messages in
chunks (DESIGN.md item 5; the framing itself is the core's FrameDecoder,
Chunker and Reassembler).

Owns the stream and the bookkeeping of chunked messages (by their chunk
stream ids, which are not QUIC streams); what the messages mean is
net/rpc.py's.

**One stream.** The Noise handshake and then every encrypted OverlayFrame
travel on the connection's first bidirectional stream (id 0). A Noise
transport session is one nonce counter per direction, so its messages must be
decrypted in the order they were encrypted: a single ordered stream gives
that for free, while one stream per RPC would need a key schedule per stream
that the core does not have. Head-of-line blocking between RPCs is kept small
instead by the sender: small messages are written straight into the stream,
while large ones are queued in the core `Chunker` and pulled one ~62 KiB chunk
at a time (`pump`), only while the stream holds less than `send_buffer_bytes`
of data not yet acknowledged. A small RPC issued during a 20 MB transfer
therefore waits behind at most that much, not behind the transfer. Large
messages wait in the Chunker rather than in aioquic's unbounded stream
buffer; the peer's partial chunked messages are bounded by the Reassembler.

**Stalled frames.** Once a frame has begun (its first length-prefix byte is
in), the peer has `frame_stall_timeout` plus the frame's size at
`FRAME_MIN_BYTES_PER_S` to deliver the rest, measured from that first byte:
more bytes of the same frame do not move the deadline, so a peer trickling a
byte at a time cannot hold the decoder's buffer open for long. A legitimate
frame (at most NOISE_MAX_MESSAGE_BYTES, about 64 KiB) gets under a second
on top of the timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from aioquic.quic.connection import QuicConnection
from google.protobuf.message import DecodeError
from plasm.v1 import overlay_pb2

from plasm_grpc.core.framing import (
    LENGTH_PREFIX_BYTES,
    Chunk,
    Chunker,
    FrameDecoder,
    Reassembler,
    encode_frame,
)
from plasm_grpc.core.noise import (
    NOISE_MAX_MESSAGE_BYTES,
    NOISE_MAX_PLAINTEXT_BYTES,
    NoiseTransport,
)
from plasm_grpc.core.overlay_errors import RemoteOverlayError
from plasm_grpc.net.errors import ConnectionClosedError
from plasm_grpc.net.settings import OverlaySettings

__all__ = [
    "CHUNK_BYTES",
    "ERROR",
    "FRAME_MIN_BYTES_PER_S",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_METHOD_BYTES",
    "ONEWAY",
    "REQUEST",
    "RESPONSE",
    "STREAM_ID",
    "CancelReceived",
    "FrameKind",
    "FramedStream",
    "Inbound",
    "MessageHeader",
    "MessageReceived",
]

STREAM_ID: Final = 0  # the client's first bidirectional stream

# Room for an OverlayFrame's other fields (ids, kind, method, sizes, an error
# message) next to one chunk's bytes, under the Noise plaintext cap.
MAX_METHOD_BYTES: Final = 256
MAX_ERROR_MESSAGE_BYTES: Final = 512
CHUNK_BYTES: Final = NOISE_MAX_PLAINTEXT_BYTES - 2048
# The slowest delivery of one frame's bytes allowed on top of frame_stall_timeout.
FRAME_MIN_BYTES_PER_S: Final = 64 * 1024

FrameKind = overlay_pb2.OverlayFrameKind
REQUEST: Final = overlay_pb2.OVERLAY_FRAME_KIND_REQUEST
RESPONSE: Final = overlay_pb2.OVERLAY_FRAME_KIND_RESPONSE
ONEWAY: Final = overlay_pb2.OVERLAY_FRAME_KIND_ONEWAY
ERROR: Final = overlay_pb2.OVERLAY_FRAME_KIND_ERROR
_CHUNK: Final = overlay_pb2.OVERLAY_FRAME_KIND_CHUNK
_CANCEL: Final = overlay_pb2.OVERLAY_FRAME_KIND_CANCEL
_MESSAGE_KINDS: Final = frozenset({REQUEST, RESPONSE, ONEWAY, ERROR})


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageHeader:
    """A message's fields other than its payload (a chunked one's first frame has them)."""

    kind: FrameKind.ValueType
    request_id: int
    method: str
    error_message: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A whole message from the peer: one frame, or a chunked message put together."""

    header: MessageHeader
    payload: bytes


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """The peer's CANCEL for request `request_id` (its own, or one it asked of us)."""

    request_id: int


Inbound = MessageReceived | CancelReceived


@dataclass(slots=True, kw_only=True)
class _OutgoingMessage:
    """A chunked message of ours: its first frame's fields, and who waits for it."""

    kind: FrameKind.ValueType
    request_id: int
    method: str
    error_message: str
    sent: asyncio.Future[None]
    started: bool = False


class FramedStream:
    """Stream 0 of one connection; see the module docstring.

    `write` carries the handshake's bytes; once `start(transport)` has the
    Noise session, messages go out with `send_message` and come in through
    `receive`. `close` fails whatever is still being sent.
    """

    def __init__(
        self,
        *,
        quic: QuicConnection,
        settings: OverlaySettings,
        transmit_soon: Callable[[], None],
        stalled: Callable[[str], None],
    ) -> None:
        self._quic = quic
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._transmit_soon = transmit_soon
        self._stalled = stalled  # called with the reason once the peer stalls a frame
        self._transport: NoiseTransport | None = None
        self._closed = False
        self.last_activity = self._loop.time()  # an OverlayFrame either way
        self._decoder = FrameDecoder(max_frame_bytes=NOISE_MAX_MESSAGE_BYTES)
        self._partial = _PartialFrame()
        self._stall_handle: asyncio.TimerHandle | None = None
        self._chunker = Chunker(chunk_bytes=CHUNK_BYTES)
        self._outgoing: dict[int, _OutgoingMessage] = {}
        self._reassembler = Reassembler(
            max_message_bytes=settings.max_message_bytes,
            max_buffered_bytes=2 * settings.max_message_bytes,
            max_streams=settings.max_open_chunked_messages,
        )
        self._incoming: dict[int, MessageHeader] = {}

    @property
    def open(self) -> bool:
        """Started (the handshake is done) and not closed."""
        return self._transport is not None and not self._closed

    @property
    def sending(self) -> bool:
        """Chunks of a large message wait to go out."""
        return bool(self._chunker.pending)

    def start(self, transport: NoiseTransport) -> None:
        self._transport = transport

    def close(self, reason: str) -> None:
        """The connection closed: stop the stall timer, fail the messages being sent."""
        self._closed = True
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        closed = ConnectionClosedError(reason)
        for message in self._outgoing.values():
            if not message.sent.done():
                message.sent.set_exception(closed)
                message.sent.exception()
        self._outgoing.clear()

    def write(self, data: bytes) -> None:
        """Bytes onto the stream as they are (the handshake's, or encoded frames)."""
        if data:
            self._quic.send_stream_data(STREAM_ID, data)
            self._transmit_soon()

    # -- out -----------------------------------------------------------------------------

    def send_message(
        self,
        kind: FrameKind.ValueType,
        payload: bytes,
        *,
        request_id: int = 0,
        method: str = "",
        error_message: str = "",
    ) -> int | None:
        """Send one message; returns its stream id when it is chunked (see `sent`)."""
        if len(payload) <= CHUNK_BYTES:
            self._write_frame(
                overlay_pb2.OverlayFrame(
                    request_id=request_id,
                    kind=kind,
                    method=method,
                    payload=payload,
                    error_message=error_message,
                )
            )
            return None
        stream_id = self._chunker.add(payload)
        self._outgoing[stream_id] = _OutgoingMessage(
            kind=kind,
            request_id=request_id,
            method=method,
            error_message=error_message,
            sent=self._loop.create_future(),
        )
        self._transmit_soon()
        return stream_id

    def sent(self, stream_id: int) -> asyncio.Future[None]:
        """Done once chunked message `stream_id` is all handed to QUIC; failed with
        ConnectionClosedError if it is cancelled or the connection closes first."""
        return self._outgoing[stream_id].sent

    def send_cancel(self, request_id: int, stream_id: int = 0) -> None:
        """Tell the peer to stop request `request_id` and drop chunked message `stream_id`."""
        self._write_frame(
            overlay_pb2.OverlayFrame(kind=_CANCEL, request_id=request_id, stream_id=stream_id)
        )

    def cancel_stream(self, stream_id: int, *, tell_peer: bool) -> bool:
        """Stop sending a chunked message; True if the peer holds part of it."""
        message = self._outgoing.pop(stream_id, None)
        if message is None:
            return False
        self._chunker.cancel(stream_id)
        if not message.sent.done():
            message.sent.set_exception(ConnectionClosedError("the message was cancelled"))
            message.sent.exception()  # retrieved: nobody may be waiting
        if tell_peer and message.started and self.open:
            self.send_cancel(0, stream_id)
        return message.started

    def pump(self) -> None:
        """Hand chunks to QUIC while its stream buffer is below the high-water mark."""
        while (
            self._chunker.pending
            and self.open
            and self._unacked_stream_bytes() < self._settings.send_buffer_bytes
        ):
            chunk = self._chunker.next_chunk()
            assert chunk is not None
            message = self._outgoing[chunk.stream_id]
            frame = overlay_pb2.OverlayFrame(
                stream_id=chunk.stream_id,
                payload=chunk.data,
                end_of_message=chunk.end_of_message,
            )
            if chunk.first:
                message.started = True
                frame.kind = message.kind
                frame.request_id = message.request_id
                frame.method = message.method
                frame.error_message = message.error_message
                frame.total_payload_bytes = chunk.total_bytes or 0
            else:
                frame.kind = _CHUNK
            self._write_frame(frame)
            if chunk.end_of_message:
                del self._outgoing[chunk.stream_id]
                if not message.sent.done():
                    message.sent.set_result(None)

    def _unacked_stream_bytes(self) -> int:
        stream = self._quic._streams.get(STREAM_ID)  # aioquic has no public accessor
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def _write_frame(self, frame: overlay_pb2.OverlayFrame) -> None:
        transport = self._transport
        assert transport is not None
        ciphertext = transport.encrypt(frame.SerializeToString())
        self.write(encode_frame(ciphertext, max_frame_bytes=NOISE_MAX_MESSAGE_BYTES))
        self.last_activity = self._loop.time()

    # -- in ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> Iterator[Inbound]:
        """What the peer sent, in order, as `data` completes it. Raises
        OverlayProtocolError for what the protocol forbids; stop iterating
        once the connection has closed."""
        transport = self._transport
        assert transport is not None
        ciphertexts = self._decoder.feed(data)
        self._partial.fed(data, ciphertexts, self._loop.time())
        self._arm_stall_timer()
        for ciphertext in ciphertexts:
            try:
                frame = overlay_pb2.OverlayFrame.FromString(transport.decrypt(ciphertext))
            except DecodeError:
                raise RemoteOverlayError("a frame is not a valid OverlayFrame") from None
            inbound = self._frame_received(frame)
            if inbound is not None:
                yield inbound

    def _frame_received(self, frame: overlay_pb2.OverlayFrame) -> Inbound | None:
        self.last_activity = self._loop.time()
        kind = frame.kind
        if kind == _CANCEL:
            if frame.stream_id:
                self._reassembler.abort(frame.stream_id)
                self._incoming.pop(frame.stream_id, None)
            return CancelReceived(frame.request_id) if frame.request_id else None
        if frame.stream_id == 0:
            if kind not in _MESSAGE_KINDS:
                raise RemoteOverlayError(f"a frame of kind {kind} outside a chunked message")
            return MessageReceived(_header(frame), frame.payload)
        first = kind != _CHUNK
        if first and kind not in _MESSAGE_KINDS:
            raise RemoteOverlayError(f"a chunked message cannot start with kind {kind}")
        chunk = Chunk(
            stream_id=frame.stream_id,
            data=frame.payload,
            first=first,
            end_of_message=frame.end_of_message,
            total_bytes=frame.total_payload_bytes if first or frame.total_payload_bytes else None,
        )
        message = self._reassembler.receive(chunk)
        if first:
            self._incoming[frame.stream_id] = _header(frame)
        if message is None:
            return None
        return MessageReceived(self._incoming.pop(frame.stream_id), message)

    # -- stalled frames ------------------------------------------------------------------

    def _stall_deadline(self) -> float | None:
        partial = self._partial
        if partial.started_at is None:
            return None
        size = partial.frame_bytes or partial.bytes_in
        return (
            partial.started_at + self._settings.frame_stall_timeout + size / FRAME_MIN_BYTES_PER_S
        )

    def _arm_stall_timer(self) -> None:
        """One timer, rearmed only when the frame in progress needs an earlier one."""
        deadline = self._stall_deadline()
        if deadline is None:
            return  # a timer already armed finds nothing to do and lapses
        handle = self._stall_handle
        if handle is not None and handle.when() <= deadline:
            return  # it fires first and rearms itself for the later deadline
        if handle is not None:
            handle.cancel()
        self._stall_handle = self._loop.call_at(deadline, self._stall_check)

    def _stall_check(self) -> None:
        self._stall_handle = None
        if not self.open:
            return
        deadline = self._stall_deadline()
        if deadline is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._stall_handle = self._loop.call_at(deadline, self._stall_check)
            return
        partial = self._partial
        assert partial.started_at is not None
        total = "?" if partial.frame_bytes is None else str(partial.frame_bytes)
        self._stalled(
            f"frame stalled: {partial.bytes_in} of {total} bytes "
            f"after {now - partial.started_at:.1f} s"
        )


def _header(frame: overlay_pb2.OverlayFrame) -> MessageHeader:
    return MessageHeader(
        kind=frame.kind,
        request_id=frame.request_id,
        method=frame.method,
        error_message=frame.error_message,
    )


class _PartialFrame:
    """The frame in progress in the stream's FrameDecoder, as seen from its input.

    Counted from the bytes fed and the frames the decoder returned (the
    decoder does not expose its length prefix): bytes in, including the
    4-byte prefix; the whole frame's size once the prefix is in; and when its
    first byte arrived.
    """

    __slots__ = ("bytes_in", "head", "started_at")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.head = bytearray()  # the length prefix, as far as it has come
        self.started_at: float | None = None

    @property
    def frame_bytes(self) -> int | None:
        if len(self.head) < LENGTH_PREFIX_BYTES:
            return None
        return LENGTH_PREFIX_BYTES + int.from_bytes(self.head, "big")

    def fed(self, data: bytes, frames: list[bytes], now: float) -> None:
        """`data` went into the decoder, which returned `frames`."""
        if frames:
            completed = sum(LENGTH_PREFIX_BYTES + len(frame) for frame in frames)
            tail = len(data) - (completed - self.bytes_in)  # the next frame's bytes
            self.bytes_in = tail
            self.head = bytearray(data[len(data) - tail :][:LENGTH_PREFIX_BYTES])
            self.started_at = now if tail else None
        elif data:
            if not self.bytes_in:
                self.started_at = now
            self.bytes_in += len(data)
            self.head += data[: LENGTH_PREFIX_BYTES - len(self.head)]
