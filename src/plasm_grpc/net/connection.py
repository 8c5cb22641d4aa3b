"""One overlay connection: a pump around aioquic's QuicConnection (DESIGN.md
item 5), and the connection's life from first packet to termination.

The shape is aioquic's own asyncio/protocol.py: the QUIC state machine is fed
datagrams and timer ticks by the owning `OverlayEndpoint` (which holds the one
UDP socket and demultiplexes by connection id), and after each input this
object pulls `next_event()` and `datagrams_to_send()`. It owns the QUIC side
(events, timers, transmission), the state (HANDSHAKING, ESTABLISHED, CLOSED),
keepalive and idle timeout, and closing; the rest is in its parts:

- net/handshake.py: the Noise handshake on stream 0 and the peer's identity;
- net/frames.py: stream 0 afterwards, encrypted frames and chunked messages;
- net/rpc.py: requests, answers, one-way messages and the handlers serving them;
- net/circuits.py: relayed addresses and DATAGRAM frames (relayed paths).

**Failures** of the peer (bad handshake, bad frame, forged ciphertext, a
deadline) close only this connection, with a reason that is logged and sent
in the QUIC CONNECTION_CLOSE.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from typing import TYPE_CHECKING, Final, Protocol

from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress, QuicConnection

from plasm_grpc.core.address import host_port
from plasm_grpc.core.overlay_errors import OverlayProtocolError
from plasm_grpc.net.circuits import max_datagram_payload, queue_datagram, relay_of
from plasm_grpc.net.errors import HandshakeFailedError
from plasm_grpc.net.frames import STREAM_ID, FramedStream
from plasm_grpc.net.handshake import (
    HandshakeDone,
    HandshakeFailure,
    LocalIdentity,
    OverlayHandshake,
)
from plasm_grpc.net.rpc import Handler, RpcSession
from plasm_grpc.net.settings import (
    CLOSE_HANDSHAKE_FAILED,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    OverlaySettings,
)

if TYPE_CHECKING:
    from plasm_grpc.logs import EventLog

__all__ = ["ConnectionState", "OverlayConnection"]

_MAX_REASON_BYTES: Final = 900  # stays inside one CONNECTION_CLOSE frame


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

        self._handshake = OverlayHandshake(
            local=owner.local, initiator=initiator, expected_node_id=expected_node_id
        )
        self._frames = FramedStream(
            quic=quic,
            settings=self._settings,
            transmit_soon=self._transmit_soon,
            stalled=lambda reason: self._finish(reason, error_code=CLOSE_PROTOCOL_ERROR),
        )
        self._rpc = RpcSession(
            frames=self._frames, settings=self._settings, handler=owner.handler, events=owner.events
        )
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
        # Besides the frames' own (FramedStream.last_activity): datagrams, the handshake.
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
        return await self._rpc.request(method, payload, timeout)

    async def send_oneway(self, method: str, payload: bytes) -> None:
        """Send a message that gets no answer.

        Returns once it is handed to QUIC (for a large one: its last chunk),
        which is the backpressure on a sender of many large messages.
        """
        await self._rpc.send_oneway(method, payload)

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
        if self.state is not ConnectionState.ESTABLISHED or not queue_datagram(self._quic, data):
            return False
        self._last_activity = self._loop.time()
        self._transmit_soon()
        return True

    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM frame payload that fits one packet of this connection."""
        return max_datagram_payload(self._quic)

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
        if self.state is ConnectionState.HANDSHAKING and self._refuse_reason is None:
            # While the client works on our QUIC flight, not before sending it.
            self._handshake.server_flight_sent()

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            # This call sends whatever a pending _transmit_soon would have sent.
            self._transmit_handle.cancel()
            self._transmit_handle = None
        for _ in range(4):  # refill the stream from the Chunker as QUIC drains it
            self._frames.pump()
            datagrams = self._quic.datagrams_to_send(now=self._loop.time())
            for data, addr in datagrams:
                self._owner.sendto(data, addr)
            if not datagrams or not self._frames.sending:
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

    # -- the handshake (net/handshake.py) ------------------------------------------------

    def _quic_handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        if self._refuse_reason is not None:
            self._finish(self._refuse_reason, error_code=CLOSE_REFUSED)
            return
        failure = self._handshake.quic_handshake_completed(self._quic, event.alpn_protocol)
        if failure is not None:
            self._finish(failure.reason, failure.error_code)
            return
        self._frames.write(self._handshake.data_to_send())

    def _handshake_data(self, data: bytes) -> None:
        outcome = self._handshake.receive(data)
        self._frames.write(self._handshake.data_to_send())
        if isinstance(outcome, HandshakeFailure):
            self._finish(outcome.reason, error_code=outcome.error_code)
        elif isinstance(outcome, HandshakeDone):
            self._established_as(outcome)

    def _established_as(self, done: HandshakeDone) -> None:
        self._frames.start(done.transport)
        self._rpc.start(done.remote_node_id)
        self.remote_node_id = done.remote_node_id
        self.state = ConnectionState.ESTABLISHED
        self.established_at = self._last_activity = self._loop.time()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._schedule_tick()
        self._owner.events.event(
            "overlay_connected",
            node_id=self._owner.local.node_id,
            peer_node_id=done.remote_node_id,
            address=_format_address(self.address),
            direction=self.direction,
        )
        self._owner.connection_established(self)
        if not self._established.done():
            self._established.set_result(None)
        if done.trailing_data:
            self._frame_data(done.trailing_data)

    def _handshake_deadline(self) -> None:
        self._deadline = None
        if self.state is ConnectionState.HANDSHAKING:
            self._finish(
                f"the handshake did not complete within {self._settings.handshake_timeout:g} s",
                error_code=CLOSE_HANDSHAKE_FAILED,
            )

    # -- stream 0 (net/frames.py, net/rpc.py) --------------------------------------------

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
        try:
            for inbound in self._frames.receive(data):
                self._rpc.received(inbound)
                if self.close_reason is not None:
                    return
        except OverlayProtocolError as e:
            self._protocol_error(str(e))

    # -- keepalive, idle timeout, closing ------------------------------------------------

    def _schedule_tick(self) -> None:
        period = min(self._settings.keepalive_interval, self._settings.idle_timeout)
        self._tick_handle = self._loop.call_later(period, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        if not self.is_open:
            return
        busy = self._rpc.busy or self._frames.sending
        if not busy and self.retire_reason is not None:
            self._finish(self.retire_reason, error_code=CLOSE_NORMAL)
            return
        last_activity = max(self._last_activity, self._frames.last_activity)
        idle_for = self._loop.time() - last_activity
        if not busy and not self.pinned and idle_for >= self._settings.idle_timeout:
            self._finish(f"idle for {idle_for:.0f} s", error_code=CLOSE_NORMAL)
            return
        self._quic.send_ping(next(self._ping_ids))
        self.transmit()
        self._schedule_tick()

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
        for handle in (self._deadline, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._deadline = self._tick_handle = None
        self._rpc.close(reason)
        self._frames.close(reason)

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


def _describe_close(event: quic_events.ConnectionTerminated) -> str:
    detail = event.reason_phrase or f"error code 0x{event.error_code:x}"
    return f"QUIC connection closed: {detail}"


def _format_address(address: NetworkAddress) -> str:
    return host_port(str(address[0]), int(address[1]))
