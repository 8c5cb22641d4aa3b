"""One overlay connection: a pump around aioquic's QuicConnection and the core's
Noise handshake, framing and chunking (DESIGN.md item 5).

The shape is aioquic's own asyncio/protocol.py: the QUIC state machine is fed
datagrams and timer ticks by the owning `OverlayEndpoint` (which holds the one
UDP socket and demultiplexes by connection id), and after each input this
object pulls `next_event()` and `datagrams_to_send()`. Everything above QUIC
is the sans-I/O core: `NoiseHandshake`, `NoiseTransport`, `FrameDecoder`,
`Chunker`, `Reassembler`.

**One stream.** The Noise handshake and then every encrypted OverlayFrame
travel on the connection's first bidirectional stream (id 0). A Noise
transport session is one nonce counter per direction, so its messages must be
decrypted in the order they were encrypted: a single ordered stream gives
that for free, while one stream per RPC would need a key schedule per stream
that the core does not have. Head-of-line blocking between RPCs is kept small
instead by the sender: small messages are written straight into the stream,
while large ones are queued in the core `Chunker` and pulled one ~62 KiB chunk
at a time, only while the stream holds less than `send_buffer_bytes` of data
not yet acknowledged. A small RPC issued during a 20 MB transfer therefore
waits behind at most that much, not behind the transfer.

**Backpressure.** Outbound: at most `max_outstanding_requests` requests in
flight per connection (further `request()` calls wait, within their timeout),
and large messages wait in the Chunker rather than in aioquic's unbounded
stream buffer. Inbound: at most `max_concurrent_requests` handlers run per
connection; a request beyond that is answered at once with an ERROR
("overloaded"), and partial chunked messages are bounded by the Reassembler.

**Failures** of the peer (bad handshake, bad frame, forged ciphertext, a
deadline) close only this connection, with a reason that is logged and sent
in the QUIC CONNECTION_CLOSE.

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
import enum
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress, QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError
from plasm.v1 import overlay_pb2

from plasm_grpc.core.address import host_port
from plasm_grpc.core.envelope import SignedEnvelope
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
    HandshakeComplete,
    HandshakeFailed,
    NoiseHandshake,
    NoiseLocalIdentity,
    NoiseTransport,
    handshake_prologue,
)
from plasm_grpc.core.overlay_errors import OverlayProtocolError, RemoteOverlayError
from plasm_grpc.net.errors import (
    ConnectionClosedError,
    HandshakeFailedError,
    RemoteCallError,
    RequestRefusedError,
    RequestTimeoutError,
)

if TYPE_CHECKING:
    from plasm_grpc.logs import EventLog

__all__ = [
    "ALPN",
    "CHUNK_BYTES",
    "FRAME_MIN_BYTES_PER_S",
    "ConnectionState",
    "Handler",
    "LocalIdentity",
    "OverlayConnection",
    "OverlaySettings",
    "relay_of",
    "relayed_address",
]

ALPN: Final = "plasm/1"
STREAM_ID: Final = 0  # the client's first bidirectional stream

# Room for an OverlayFrame's other fields (ids, kind, method, sizes, an error
# message) next to one chunk's bytes, under the Noise plaintext cap.
MAX_METHOD_BYTES: Final = 256
MAX_ERROR_MESSAGE_BYTES: Final = 512
CHUNK_BYTES: Final = NOISE_MAX_PLAINTEXT_BYTES - 2048
# The slowest delivery of one frame's bytes allowed on top of frame_stall_timeout.
FRAME_MIN_BYTES_PER_S: Final = 64 * 1024

# QUIC application error codes in CONNECTION_CLOSE (the reason phrase says more).
CLOSE_NORMAL: Final = 0x0
CLOSE_PROTOCOL_ERROR: Final = 0x1
CLOSE_HANDSHAKE_FAILED: Final = 0x2
CLOSE_REFUSED: Final = 0x3
_MAX_REASON_BYTES: Final = 900  # stays inside one CONNECTION_CLOSE frame
# Relayed connections (docs/reachability.md) have addresses whose host is
# "relay/<relay node id>" and whose port is the circuit id.
_RELAYED_HOST_PREFIX: Final = "relay/"
# DATAGRAM frames queued in aioquic beyond which send_datagram drops.
_MAX_PENDING_DATAGRAMS: Final = 128

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""A method handler: `await handler(peer_node_id, payload)`; its result is the response."""

_K = overlay_pb2.OverlayFrameKind
_REQUEST: Final = overlay_pb2.OVERLAY_FRAME_KIND_REQUEST
_RESPONSE: Final = overlay_pb2.OVERLAY_FRAME_KIND_RESPONSE
_ONEWAY: Final = overlay_pb2.OVERLAY_FRAME_KIND_ONEWAY
_CHUNK: Final = overlay_pb2.OVERLAY_FRAME_KIND_CHUNK
_ERROR: Final = overlay_pb2.OVERLAY_FRAME_KIND_ERROR
_CANCEL: Final = overlay_pb2.OVERLAY_FRAME_KIND_CANCEL
_MESSAGE_KINDS: Final = frozenset({_REQUEST, _RESPONSE, _ONEWAY, _ERROR})


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlaySettings:
    """Limits and timers of an endpoint and its connections (seconds, bytes)."""

    handshake_timeout: float = 5.0  # QUIC + Noise, from the first packet to a proven peer
    idle_timeout: float = 120.0  # no OverlayFrame either way, nothing in flight: close
    # A frame begun but not completed within this (plus its size at
    # FRAME_MIN_BYTES_PER_S), from its first byte: close.
    frame_stall_timeout: float = 10.0
    keepalive_interval: float = 15.0  # QUIC PING while open (liveness, RTT samples)
    max_connections: int = 256
    max_connections_per_ip: int = 16  # inbound
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_requests: int = 64  # inbound handlers running per connection
    max_outstanding_requests: int = 256  # our requests in flight per connection
    max_open_chunked_messages: int = 16  # inbound, per connection
    send_buffer_bytes: int = 256 * 1024  # unacknowledged stream bytes before chunks wait
    # UDP payload per QUIC packet. aioquic does no path-MTU discovery; 1350 is
    # what Chrome and quic-go start with and fits tunnels and PPPoE. Per-packet
    # work dominates aioquic's cost, so a larger value (on loopback or a known
    # 1500-byte path: 1452) raises bulk throughput.
    max_datagram_size: int = 1350

    def __post_init__(self) -> None:
        for name in (
            "handshake_timeout",
            "idle_timeout",
            "frame_stall_timeout",
            "keepalive_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "max_message_bytes",
            "max_concurrent_requests",
            "max_outstanding_requests",
            "max_open_chunked_messages",
            "send_buffer_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 1200 <= self.max_datagram_size <= 65527:
            raise ValueError("max_datagram_size must be 1200..65527 (RFC 9000 section 14)")

    @property
    def quic_idle_timeout(self) -> float:
        """QUIC's own idle timeout: a peer that stops answering PINGs is dead."""
        return max(3 * self.keepalive_interval, 2 * self.handshake_timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalIdentity:
    """What this endpoint presents in every handshake."""

    node_id: str
    static_private: bytes  # X25519 Noise static key
    proof: SignedEnvelope  # sign_noise_identity(identity key, static public key)
    certificate_der: bytes  # this endpoint's QUIC server certificate
    # Derived once at start-up, not per handshake: the static key and proof,
    # checked (NoiseLocalIdentity), and the prologue of the connections this
    # endpoint accepts (handshake_prologue(certificate_der)).
    noise: NoiseLocalIdentity
    server_prologue: bytes


class _Owner(Protocol):
    """What a connection needs from its endpoint."""

    @property
    def settings(self) -> OverlaySettings: ...
    @property
    def local(self) -> LocalIdentity: ...
    @property
    def events(self) -> EventLog: ...
    def sendto(self, data: bytes, addr: NetworkAddress) -> None: ...
    def cid_issued(self, cid: bytes, connection: OverlayConnection) -> None: ...
    def cid_retired(self, cid: bytes, connection: OverlayConnection) -> None: ...
    def connection_established(self, connection: OverlayConnection) -> None: ...
    def connection_finished(self, connection: OverlayConnection) -> None: ...
    def connection_terminated(self, connection: OverlayConnection) -> None: ...
    def datagram_frame_received(self, connection: OverlayConnection, data: bytes) -> None: ...
    def handler(self, method: str) -> Handler | None: ...


class ConnectionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(slots=True, kw_only=True)
class _OutgoingMessage:
    """A chunked message of ours: its first frame's fields, and who waits for it."""

    kind: _K.ValueType
    request_id: int
    method: str
    error_message: str
    sent: asyncio.Future[None]
    started: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _IncomingHeader:
    kind: _K.ValueType
    request_id: int
    method: str
    error_message: str


@dataclass(slots=True)
class _Inbound:
    """Handlers running for the peer's requests, by request id."""

    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    response_streams: dict[int, int] = field(default_factory=dict)  # request id -> stream id
    oneway: set[asyncio.Task[None]] = field(default_factory=set)


class OverlayConnection:
    """A connection to one peer. Made by `OverlayEndpoint`; see the module docstring.

    Use `request()` and `send_oneway()` once `state` is ESTABLISHED (what
    `OverlayEndpoint.connect` returns); `remote_node_id` is the proven peer.
    """

    def __init__(
        self,
        *,
        owner: _Owner,
        quic: QuicConnection,
        address: NetworkAddress,
        initiator: bool,
        expected_node_id: str | None = None,
        refuse_reason: str | None = None,
    ) -> None:
        self._owner = owner
        self._settings = owner.settings
        self._loop = asyncio.get_running_loop()
        self._quic = quic
        self.address: Final = address
        self.initiator: Final = initiator
        self.expected_node_id: Final = expected_node_id
        self._refuse_reason = refuse_reason
        self.remote_node_id: str | None = None
        self.state = ConnectionState.HANDSHAKING
        self.close_reason: str | None = None
        self.established_at: float | None = None
        # Kept open while idle (a relay reservation lives on it).
        self.pinned = False
        # Set: close as soon as no request is in flight (a relayed connection
        # replaced by a direct one); None again if it is needed after all.
        self.retire_reason: str | None = None

        # The server knows its own certificate from the start but makes its
        # handshake only once its first QUIC flight is out (datagram_received);
        # the client learns the certificate in the QUIC handshake (see
        # _quic_handshake_completed).
        self._handshake: NoiseHandshake | None = None
        self._transport: NoiseTransport | None = None
        self._decoder = FrameDecoder(max_frame_bytes=NOISE_MAX_MESSAGE_BYTES)
        self._partial = _PartialFrame()
        self._stall_handle: asyncio.TimerHandle | None = None
        self._chunker = Chunker(chunk_bytes=CHUNK_BYTES)
        self._outgoing: dict[int, _OutgoingMessage] = {}
        self._reassembler = Reassembler(
            max_message_bytes=self._settings.max_message_bytes,
            max_buffered_bytes=2 * self._settings.max_message_bytes,
            max_streams=self._settings.max_open_chunked_messages,
        )
        self._incoming: dict[int, _IncomingHeader] = {}
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._request_ids = itertools.count(1)
        self._request_slots = asyncio.Semaphore(self._settings.max_outstanding_requests)
        self._inbound = _Inbound()
        self._ping_ids = itertools.count(1)

        self._established: asyncio.Future[None] = self._loop.create_future()
        self._terminated = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._deadline: asyncio.TimerHandle | None = self._loop.call_later(
            self._settings.handshake_timeout, self._handshake_deadline
        )
        self._tick_handle: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()

    # -- public API ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.ESTABLISHED

    @property
    def direction(self) -> str:
        return "outbound" if self.initiator else "inbound"

    @property
    def rtt(self) -> float | None:
        """aioquic's smoothed RTT estimate (seconds), once it has a sample."""
        loss = self._quic._loss  # no public accessor in aioquic 1.x
        return loss._rtt_smoothed if loss._rtt_initialized else None

    def wait_established(self) -> asyncio.Future[None]:
        """Await it: returns once the peer proved its identity; raises HandshakeFailedError
        otherwise. A future, not a coroutine: the dialler wakes one event-loop turn
        after the handshake completes instead of going through an extra task."""
        return asyncio.shield(self._established)

    async def wait_terminated(self) -> None:
        """Returns once QUIC has finished closing (after its draining period)."""
        await self._terminated.wait()

    async def request(self, method: str, payload: bytes, timeout: float) -> bytes:
        """Call `method` at the peer and return its response payload.

        Raises RequestTimeoutError (the peer is told to cancel), RemoteCallError
        (the peer answered with an error) or ConnectionClosedError.
        """
        _check_method(method)
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        request_id = 0
        stream_id: int | None = None
        try:
            async with asyncio.timeout(timeout):
                async with self._request_slots:
                    self._check_open()
                    request_id = next(self._request_ids)
                    answer: asyncio.Future[bytes] = self._loop.create_future()
                    self._pending[request_id] = answer
                    stream_id = self._send_message(
                        _REQUEST, payload, request_id=request_id, method=method
                    )
                    return await answer
        except TimeoutError:
            self._abandon(request_id, stream_id)
            raise RequestTimeoutError(
                f"{method} to {self.remote_node_id}: no answer within {timeout} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(request_id, stream_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def send_oneway(self, method: str, payload: bytes) -> None:
        """Send a message that gets no answer.

        Returns once it is handed to QUIC (for a large one: its last chunk),
        which is the backpressure on a sender of many large messages.
        """
        _check_method(method)
        self._check_open()
        stream_id = self._send_message(_ONEWAY, payload, method=method)
        if stream_id is not None:
            await asyncio.shield(self._outgoing[stream_id].sent)

    @property
    def relayed(self) -> bool:
        """Whether this connection runs through a relay (docs/reachability.md)."""
        return relay_of(self.address) is not None

    def send_datagram(self, data: bytes) -> bool:
        """Queue `data` as one QUIC DATAGRAM frame (RFC 9221): unreliable, unordered.

        Returns False, sending nothing, when the connection is not established,
        `data` cannot fit one packet, or too many frames already wait (the
        caller's traffic is over what the path takes: dropped, as a router would).
        """
        if self.state is not ConnectionState.ESTABLISHED or len(data) > self.max_datagram_payload:
            return False
        pending = self._quic._datagrams_pending  # no public accessor in aioquic 1.x
        if len(pending) >= _MAX_PENDING_DATAGRAMS:
            return False
        self._quic.send_datagram_frame(data)
        self._last_activity = self._loop.time()
        self._transmit_soon()
        return True

    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM frame payload that fits one packet of this connection.

        A larger one would sit at the head of aioquic's queue for ever (it
        never fits, and nothing behind it goes), so send_datagram refuses it.
        """
        quic = self._quic  # aioquic 1.x has no public accessors for these
        remote = quic._remote_max_datagram_frame_size
        if remote is None:
            return 0
        # A short-header packet: flags, the peer's connection id, a packet
        # number (aioquic writes 2 bytes; 4 allowed for), the AEAD tag; then
        # the frame's type and its length (a 2-byte varint below 16384).
        header = 1 + len(quic._peer_cid.cid) + 4 + 16
        room = quic._max_datagram_size - header - (1 + 2)
        return max(0, min(room, remote - (1 + 2)))

    def close(self, reason: str = "closed by this node") -> None:
        """Close the connection (idempotent); `wait_terminated()` to wait for QUIC."""
        self._finish(reason, error_code=CLOSE_NORMAL)

    # -- driving QUIC (called by the endpoint) -------------------------------------------

    def dial(self) -> None:
        """Start the QUIC handshake (client side)."""
        self._quic.connect(self.address, now=self._loop.time())
        self.transmit()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        self._process_events()
        self.transmit()
        if (
            not self.initiator
            and self._handshake is None
            and self.state is ConnectionState.HANDSHAKING
            and self._refuse_reason is None
        ):
            # While the client works on our QUIC flight, not before sending it.
            self._handshake = self._new_handshake(self._owner.local.server_prologue)

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            # This call sends whatever a pending _transmit_soon would have sent.
            self._transmit_handle.cancel()
            self._transmit_handle = None
        for _ in range(4):  # refill the stream from the Chunker as QUIC drains it
            self._pump_chunks()
            datagrams = self._quic.datagrams_to_send(now=self._loop.time())
            for data, addr in datagrams:
                self._owner.sendto(data, addr)
            if not datagrams or not self._chunker.pending:
                break
        else:
            self._transmit_soon()  # QUIC is still taking chunks: go on after other work
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def force_terminate(self) -> None:
        """Forget the connection now, without waiting for QUIC's draining period."""
        self._finish("endpoint closed", error_code=CLOSE_NORMAL)
        self._on_terminated()

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None and not self._terminated.is_set():
            self._transmit_handle = self._loop.call_soon(self._transmit_scheduled)

    def _transmit_scheduled(self) -> None:
        self._transmit_handle = None
        self.transmit()

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        event = self._quic.next_event()
        while event is not None:
            if isinstance(event, quic_events.ConnectionIdIssued):
                self._owner.cid_issued(event.connection_id, self)
            elif isinstance(event, quic_events.ConnectionIdRetired):
                self._owner.cid_retired(event.connection_id, self)
            elif isinstance(event, quic_events.HandshakeCompleted):
                self._quic_handshake_completed(event)
            elif isinstance(event, quic_events.StreamDataReceived):
                self._stream_data(event)
            elif isinstance(event, quic_events.DatagramFrameReceived):
                # Only from a peer that proved its identity (relayed datagrams).
                if self.state is ConnectionState.ESTABLISHED:
                    self._last_activity = self._loop.time()
                    self._owner.datagram_frame_received(self, event.data)
            elif isinstance(event, quic_events.StreamReset):
                self._protocol_error(f"the peer reset stream {event.stream_id}")
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._finish(_describe_close(event), error_code=None)
                self._on_terminated()
                return
            event = self._quic.next_event()
        # The peer's CONNECTION_CLOSE (or a QUIC error found locally) only
        # becomes an event after the draining period; act on it now.
        close_event = self._quic._close_event
        if close_event is not None and self.close_reason is None:
            self._finish(_describe_close(close_event), error_code=None)

    def _on_terminated(self) -> None:
        if self._terminated.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        self._terminated.set()
        self._owner.connection_terminated(self)

    # -- the Noise handshake -------------------------------------------------------------

    def _new_handshake(self, prologue: bytes) -> NoiseHandshake:
        return NoiseHandshake(
            initiator=self.initiator,
            prologue=prologue,
            expected_node_id=self.expected_node_id,
            local=self._owner.local.noise,
        )

    def _quic_handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        if self._refuse_reason is not None:
            self._finish(self._refuse_reason, error_code=CLOSE_REFUSED)
            return
        if event.alpn_protocol != ALPN:
            self._finish(f"the peer negotiated ALPN {event.alpn_protocol!r}", CLOSE_REFUSED)
            return
        if not self.initiator:
            return  # the responder waits for Noise message 1
        certificate = self._quic.tls._peer_certificate
        if certificate is None:
            self._finish("the QUIC server sent no certificate", CLOSE_HANDSHAKE_FAILED)
            return
        self._handshake = self._new_handshake(
            handshake_prologue(certificate.public_bytes(Encoding.DER))
        )
        self._write(self._handshake.data_to_send())

    def _handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None and not self.initiator:
            handshake = self._handshake = self._new_handshake(self._owner.local.server_prologue)
        if handshake is None:
            self._protocol_error("stream data before the QUIC handshake finished")
            return
        handshake.receive(data)
        self._write(handshake.data_to_send())
        event = handshake.next_event()
        if isinstance(event, HandshakeFailed):
            self._finish(event.reason, error_code=CLOSE_HANDSHAKE_FAILED)
        elif isinstance(event, HandshakeComplete):
            self._noise_established(event, handshake)

    def _noise_established(self, event: HandshakeComplete, handshake: NoiseHandshake) -> None:
        self._transport = handshake.transport()
        self._handshake = None
        self.remote_node_id = event.remote_node_id
        self.state = ConnectionState.ESTABLISHED
        self.established_at = self._last_activity = self._loop.time()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._schedule_tick()
        self._owner.events.event(
            "overlay_connected",
            node_id=self._owner.local.node_id,
            peer_node_id=event.remote_node_id,
            address=_format_address(self.address),
            direction=self.direction,
        )
        self._owner.connection_established(self)
        if not self._established.done():
            self._established.set_result(None)
        if handshake.trailing_data:
            self._frame_data(handshake.trailing_data)

    def _handshake_deadline(self) -> None:
        self._deadline = None
        if self.state is ConnectionState.HANDSHAKING:
            self._finish(
                f"the handshake did not complete within {self._settings.handshake_timeout:g} s",
                error_code=CLOSE_HANDSHAKE_FAILED,
            )

    # -- frames in -----------------------------------------------------------------------

    def _stream_data(self, event: quic_events.StreamDataReceived) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if event.stream_id != STREAM_ID:
            self._protocol_error(f"the peer opened stream {event.stream_id}")
            return
        if event.data:
            if self.state is ConnectionState.HANDSHAKING:
                self._handshake_data(event.data)
            else:
                self._frame_data(event.data)
        if event.end_stream and self.close_reason is None:
            self._protocol_error("the peer ended the overlay stream")

    def _frame_data(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            ciphertexts = self._decoder.feed(data)
            self._partial.fed(data, ciphertexts, self._loop.time())
            self._arm_stall_timer()
            for ciphertext in ciphertexts:
                frame = overlay_pb2.OverlayFrame.FromString(transport.decrypt(ciphertext))
                self._frame_received(frame)
                if self.close_reason is not None:
                    return
        except OverlayProtocolError as e:
            self._protocol_error(str(e))
        except DecodeError:
            self._protocol_error("a frame is not a valid OverlayFrame")

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
        if not self.is_open:
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
        self._finish(
            f"frame stalled: {partial.bytes_in} of {total} bytes "
            f"after {now - partial.started_at:.1f} s",
            error_code=CLOSE_PROTOCOL_ERROR,
        )

    def _frame_received(self, frame: overlay_pb2.OverlayFrame) -> None:
        self._last_activity = self._loop.time()
        kind = frame.kind
        if kind == _CANCEL:
            self._peer_cancelled(frame)
            return
        if frame.stream_id == 0:
            if kind not in _MESSAGE_KINDS:
                raise RemoteOverlayError(f"a frame of kind {kind} outside a chunked message")
            self._message_received(
                _IncomingHeader(
                    kind=kind,
                    request_id=frame.request_id,
                    method=frame.method,
                    error_message=frame.error_message,
                ),
                frame.payload,
            )
            return
        first = kind != _CHUNK
        if first:
            if kind not in _MESSAGE_KINDS:
                raise RemoteOverlayError(f"a chunked message cannot start with kind {kind}")
            header = _IncomingHeader(
                kind=kind,
                request_id=frame.request_id,
                method=frame.method,
                error_message=frame.error_message,
            )
        chunk = Chunk(
            stream_id=frame.stream_id,
            data=frame.payload,
            first=first,
            end_of_message=frame.end_of_message,
            total_bytes=frame.total_payload_bytes if first or frame.total_payload_bytes else None,
        )
        message = self._reassembler.receive(chunk)
        if first:
            self._incoming[frame.stream_id] = header
        if message is not None:
            self._message_received(self._incoming.pop(frame.stream_id), message)

    def _message_received(self, header: _IncomingHeader, payload: bytes) -> None:
        kind, request_id = header.kind, header.request_id
        if kind in (_RESPONSE, _ERROR):
            answer = self._pending.get(request_id)
            if answer is not None and not answer.done():  # else: we gave up on it
                if kind == _RESPONSE:
                    answer.set_result(payload)
                else:
                    answer.set_exception(RemoteCallError(header.error_message or "remote error"))
            return
        handler = self._owner.handler(header.method)
        peer = self.remote_node_id
        assert peer is not None
        if kind == _ONEWAY:
            overloaded = len(self._inbound.oneway) >= self._settings.max_concurrent_requests
            if handler is None or overloaded:
                self._owner.events.warning(
                    "overlay_oneway_dropped",
                    peer_node_id=peer,
                    method=header.method,
                    reason="no handler" if handler is None else "overloaded",
                )
                return
            task = self._loop.create_task(self._run_oneway(handler, header.method, payload))
            self._inbound.oneway.add(task)
            task.add_done_callback(self._inbound.oneway.discard)
            return
        # A REQUEST.
        if request_id == 0 or request_id in self._inbound.tasks:
            raise RemoteOverlayError(f"request id {request_id} is zero or already in use")
        if handler is None:
            self._send_error(request_id, f"no handler for method {header.method!r}")
        elif len(self._inbound.tasks) >= self._settings.max_concurrent_requests:
            self._send_error(request_id, "overloaded: too many requests in flight")
        else:
            self._inbound.tasks[request_id] = self._loop.create_task(
                self._serve(handler, request_id, header.method, payload)
            )

    def _peer_cancelled(self, frame: overlay_pb2.OverlayFrame) -> None:
        if frame.stream_id:
            self._reassembler.abort(frame.stream_id)
            self._incoming.pop(frame.stream_id, None)
        if frame.request_id:
            task = self._inbound.tasks.get(frame.request_id)
            if task is not None:
                task.cancel()
            stream_id = self._inbound.response_streams.pop(frame.request_id, None)
            if stream_id is not None:
                self._cancel_stream(stream_id, tell_peer=False)

    async def _serve(self, handler: Handler, request_id: int, method: str, payload: bytes) -> None:
        peer = self.remote_node_id
        assert peer is not None
        try:
            response = await handler(peer, payload)
        except asyncio.CancelledError:
            return  # the peer cancelled the request, or the connection closed
        except RequestRefusedError as e:
            self._send_error(request_id, str(e))
        except Exception as e:  # noqa: BLE001 - the handler boundary: report, don't crash
            self._owner.events.warning(
                "overlay_handler_failed", peer_node_id=peer, method=method, error=repr(e)
            )
            self._send_error(request_id, f"the handler failed ({type(e).__name__})")
        else:
            if self.is_open:
                stream_id = self._send_message(_RESPONSE, response, request_id=request_id)
                if stream_id is not None:
                    self._inbound.response_streams[request_id] = stream_id
        finally:
            self._inbound.tasks.pop(request_id, None)

    async def _run_oneway(self, handler: Handler, method: str, payload: bytes) -> None:
        peer = self.remote_node_id
        assert peer is not None
        try:
            await handler(peer, payload)
        except (asyncio.CancelledError, RequestRefusedError):
            return
        except Exception as e:  # noqa: BLE001 - the handler boundary
            self._owner.events.warning(
                "overlay_handler_failed", peer_node_id=peer, method=method, error=repr(e)
            )

    # -- frames out ----------------------------------------------------------------------

    def _send_message(
        self,
        kind: _K.ValueType,
        payload: bytes,
        *,
        request_id: int = 0,
        method: str = "",
        error_message: str = "",
    ) -> int | None:
        """Send one message; returns its stream id when it is chunked."""
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

    def _send_error(self, request_id: int, message: str) -> None:
        if self.is_open:
            encoded = message.encode()[:MAX_ERROR_MESSAGE_BYTES].decode(errors="ignore")
            self._send_message(_ERROR, b"", request_id=request_id, error_message=encoded)

    def _pump_chunks(self) -> None:
        """Hand chunks to QUIC while its stream buffer is below the high-water mark."""
        while (
            self._chunker.pending
            and self.is_open
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
                if message.kind == _RESPONSE:
                    self._inbound.response_streams.pop(message.request_id, None)

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
        self._write(encode_frame(ciphertext, max_frame_bytes=NOISE_MAX_MESSAGE_BYTES))
        self._last_activity = self._loop.time()

    def _write(self, data: bytes) -> None:
        if data:
            self._quic.send_stream_data(STREAM_ID, data)
            self._transmit_soon()

    def _abandon(self, request_id: int, stream_id: int | None) -> None:
        """Our request timed out or was cancelled: stop sending it, tell the peer."""
        if request_id == 0 or not self.is_open:
            return
        cancel_stream = 0  # also abandon our chunked request if the peer holds part of it
        if stream_id is not None and self._cancel_stream(stream_id, tell_peer=False):
            cancel_stream = stream_id
        self._write_frame(
            overlay_pb2.OverlayFrame(kind=_CANCEL, request_id=request_id, stream_id=cancel_stream)
        )

    def _cancel_stream(self, stream_id: int, *, tell_peer: bool) -> bool:
        """Stop sending a chunked message; True if the peer holds part of it."""
        message = self._outgoing.pop(stream_id, None)
        if message is None:
            return False
        self._chunker.cancel(stream_id)
        if not message.sent.done():
            message.sent.set_exception(ConnectionClosedError("the message was cancelled"))
            message.sent.exception()  # retrieved: nobody may be waiting
        if tell_peer and message.started and self.is_open:
            self._write_frame(overlay_pb2.OverlayFrame(kind=_CANCEL, stream_id=stream_id))
        return message.started

    # -- keepalive, idle timeout, closing ------------------------------------------------

    def _schedule_tick(self) -> None:
        period = min(self._settings.keepalive_interval, self._settings.idle_timeout)
        self._tick_handle = self._loop.call_later(period, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        if not self.is_open:
            return
        busy = self._pending or self._inbound.tasks or self._chunker.pending
        if not busy and self.retire_reason is not None:
            self._finish(self.retire_reason, error_code=CLOSE_NORMAL)
            return
        idle_for = self._loop.time() - self._last_activity
        if not busy and not self.pinned and idle_for >= self._settings.idle_timeout:
            self._finish(f"idle for {idle_for:.0f} s", error_code=CLOSE_NORMAL)
            return
        self._quic.send_ping(next(self._ping_ids))
        self.transmit()
        self._schedule_tick()

    def _check_open(self) -> None:
        if self.state is not ConnectionState.ESTABLISHED:
            raise ConnectionClosedError(self.close_reason or "the connection is not established")

    def _protocol_error(self, reason: str) -> None:
        self._finish(f"protocol error: {reason}", error_code=CLOSE_PROTOCOL_ERROR)

    def _finish(self, reason: str, error_code: int | None) -> None:
        """Close for `reason` (error_code None: QUIC is already closing). Idempotent."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        was = self.state
        self.state = ConnectionState.CLOSED
        if error_code is not None:
            phrase = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
            self._quic.close(error_code=error_code, reason_phrase=phrase)
            self._transmit_soon()
        for handle in (self._deadline, self._tick_handle, self._stall_handle):
            if handle is not None:
                handle.cancel()
        self._deadline = self._tick_handle = self._stall_handle = None

        closed = ConnectionClosedError(reason)
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(closed)
        for message in self._outgoing.values():
            if not message.sent.done():
                message.sent.set_exception(closed)
                message.sent.exception()
        self._outgoing.clear()
        for task in [*self._inbound.tasks.values(), *self._inbound.oneway]:
            task.cancel()

        events = self._owner.events
        fields = {
            "node_id": self._owner.local.node_id,
            "address": _format_address(self.address),
            "direction": self.direction,
            "reason": reason,
        }
        if was is ConnectionState.ESTABLISHED:
            events.event("overlay_closed", peer_node_id=self.remote_node_id, **fields)
        else:
            events.warning(
                "overlay_handshake_failed", expected_node_id=self.expected_node_id, **fields
            )
            if not self._established.done():
                self._established.set_exception(
                    HandshakeFailedError(
                        f"handshake with {_format_address(self.address)} failed: {reason}"
                    )
                )
                self._established.exception()  # retrieved: a refused inbound has no waiter
        self._owner.connection_finished(self)


class _PartialFrame:
    """The frame in progress in the connection's FrameDecoder, as seen from its input.

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


def _check_method(method: str) -> None:
    if not method or len(method.encode()) > MAX_METHOD_BYTES:
        raise ValueError(f"a method name is 1..{MAX_METHOD_BYTES} bytes")


def _describe_close(event: quic_events.ConnectionTerminated) -> str:
    detail = event.reason_phrase or f"error code 0x{event.error_code:x}"
    return f"QUIC connection closed: {detail}"


def relayed_address(relay_node_id: str, circuit_id: int) -> NetworkAddress:
    """The address of a connection through circuit `circuit_id` of that relay."""
    return (_RELAYED_HOST_PREFIX + relay_node_id, circuit_id)


def relay_of(address: NetworkAddress) -> str | None:
    """The relay's node id for a relayed connection's address; None for a UDP address."""
    host = address[0]
    if isinstance(host, str) and host.startswith(_RELAYED_HOST_PREFIX):
        return host[len(_RELAYED_HOST_PREFIX) :]
    return None


def _format_address(address: NetworkAddress) -> str:
    return host_port(str(address[0]), int(address[1]))
