"""Relays and hole punching over the overlay: the asyncio adapter of core/relay.py.

Relay side (a publicly reachable node, `serving`): answers
`plasm.v1.Relay/Reserve` and `/Connect` within the book's limits, forwards
DATAGRAM frames between a circuit's two ends (the endpoint's
`circuit_forwarder`), and tells both ends when a circuit closes.

Private side (`keep_reservations`): holds reservations at up to
`settings.reservations` relays among the connected public peers, renews them
at half their term, and reports the set (for the peer record) when it changes.

Dialling side (`connect`): reaches a node through one of its relays with an
end-to-end connection, then tries to hole punch a direct path
(`plasm.v1.Relay/HolePunch`) and keeps the relayed one when that fails.
See relay.proto and docs/reachability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from google.protobuf.message import DecodeError
from plasm.v1 import relay_pb2

from plasm_grpc import metrics
from plasm_grpc.core.address import host_port, split_host_port
from plasm_grpc.core.dht.records import RelayAddress
from plasm_grpc.core.relay import (
    ClosedCircuit,
    Cooldowns,
    Forward,
    Refused,
    RelayBook,
    RelayLimits,
)
from plasm_grpc.logs import EventLog
from plasm_grpc.net.circuits import circuit_frame
from plasm_grpc.net.connection import OverlayConnection
from plasm_grpc.net.endpoint import OverlayEndpoint
from plasm_grpc.net.errors import OverlayError, RequestRefusedError

__all__ = [
    "CIRCUIT_CLOSED",
    "CONNECT",
    "HOLE_PUNCH",
    "RESERVE",
    "RelayService",
    "RelaySettings",
]

RESERVE: Final = "plasm.v1.Relay/Reserve"
CONNECT: Final = "plasm.v1.Relay/Connect"
CIRCUIT_CLOSED: Final = "plasm.v1.Relay/CircuitClosed"
HOLE_PUNCH: Final = "plasm.v1.Relay/HolePunch"
_MAX_PUNCH_ADDRESSES: Final = 4
# When the callee sends its punch datagrams, after answering (seconds).
_PUNCH_SCHEDULE: Final = (0.0, 0.05, 0.15, 0.3, 0.6, 1.0)
_PUNCH_BYTES: Final = 8  # not QUIC: the receiving endpoint drops it unparsed
_SWEEP_S: Final = 1.0
# A peer that refused a reservation (or could not be asked) is asked again
# only after this long.
_REFUSED_BACKOFF_S: Final = 60.0
_PUNCH_INTERVAL_S: Final = 10.0  # per peer, callee side
# After a failed punch to a node, reach it through the relay without trying
# again for this long (a symmetric NAT stays symmetric; each try costs up to
# punch_timeout).
_PUNCH_FAILED_S: Final = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """The `[relay]` config section."""

    serve: bool = True  # relay for others while this node is publicly reachable
    limits: RelayLimits = field(default_factory=RelayLimits)
    use_relays: bool = True  # reserve at relays while this node is private
    reservations: int = 2  # relays a private node keeps
    hole_punch: bool = True
    request_timeout: float = 5.0
    punch_timeout: float = 3.0  # the direct dial after the punch
    retry_s: float = 5.0  # between rounds looking for relays

    def __post_init__(self) -> None:
        if not 1 <= self.reservations <= 4:
            raise ValueError("reservations must be 1..4")
        for name in ("request_timeout", "punch_timeout", "retry_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class _Held:
    """A reservation this node holds at a relay."""

    relay: RelayAddress
    renew_at: float


class RelayService:
    """Relay service, reservations and relayed dialling for one endpoint."""

    def __init__(
        self,
        endpoint: OverlayEndpoint,
        *,
        settings: RelaySettings | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = endpoint
        self.settings = settings if settings is not None else RelaySettings()
        self._events = events if events is not None else endpoint.events
        self._clock = clock
        self.book = RelayBook(self.settings.limits)
        self._serving = False
        self._notices: set[asyncio.Task[None]] = set()
        self._keeping_run = 0
        self._pinned_peers: set[str] = set()  # reservation holders' connections
        self._held: dict[str, _Held] = {}
        self._observed: dict[str, str] = {}  # relay id -> this node's address as it saw it
        self._punched = Cooldowns()  # peers this node punched for lately (callee side)
        self._punch_failed = Cooldowns()  # peers a punch to failed lately (caller side)
        self._not_before = Cooldowns()  # relay candidates that refused lately
        self._listeners: list[Callable[[list[RelayAddress]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.punches_tried = 0
        self.punches_succeeded = 0

    def install(self) -> None:
        """Serve the relay methods on the endpoint and start the sweeper."""
        endpoint = self._endpoint
        endpoint.handle(RESERVE, self._on_reserve)
        endpoint.handle(CONNECT, self._on_connect)
        endpoint.handle(CIRCUIT_CLOSED, self._on_circuit_closed)
        endpoint.handle(HOLE_PUNCH, self._on_hole_punch)
        endpoint.circuit_forwarder = self._forward
        self._tasks.append(asyncio.get_running_loop().create_task(self._sweep()))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._notices]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def serving(self) -> bool:
        """Whether this node relays now (it is publicly reachable)."""
        return self._serving

    @serving.setter
    def serving(self, serving: bool) -> None:
        if self._serving and not serving:
            # Its holders advertise it: end their reservations and circuits
            # now, with the reason, rather than relay on until they expire.
            self.book.clear("the relay stopped relaying")
            self._tell_closed()
            self._unpin()
            self._events.event("relay_stopped")
        self._serving = serving

    def on_relays_changed(self, listener: Callable[[list[RelayAddress]], None]) -> None:
        self._listeners.append(listener)

    @property
    def relays(self) -> list[RelayAddress]:
        """The relays this node holds reservations at (for its peer record)."""
        return [held.relay for _, held in sorted(self._held.items())]

    # -- relay side ----------------------------------------------------------------------

    async def _on_reserve(self, peer: str, payload: bytes) -> bytes:
        _parse(relay_pb2.RelayReserveRequest(), payload)
        connection = self._endpoint.connection_to(peer)
        if connection is None or connection.relayed:
            raise RequestRefusedError("Reserve needs a direct connection")
        refusal = self._refusal()
        result = self.book.reserve(peer, self._clock()) if refusal is None else Refused(refusal)
        if isinstance(result, Refused):
            # debug: any peer can ask, as often as it likes
            self._events.event(
                "relay_reservation_refused", level="debug", peer_node_id=peer, reason=result.reason
            )
            return relay_pb2.RelayReserveResponse(
                accepted=False, reason=result.reason
            ).SerializeToString()
        limits = self.book.limits
        connection.pinned = True  # the holder is reached through it: not idle
        self._pinned_peers.add(peer)
        self._events.event(
            "relay_reserved",
            level="debug",
            peer_node_id=peer,
            reservations=self.book.reservations,
        )
        return relay_pb2.RelayReserveResponse(
            accepted=True,
            limits=relay_pb2.RelayLimits(
                duration_s=round(limits.duration_s),
                max_bytes=limits.max_bytes,
                rate_bytes_per_s=limits.rate_bytes_per_s,
                max_circuits=limits.max_circuits,
            ),
            observed_address=_format(connection),
        ).SerializeToString()

    async def _on_connect(self, peer: str, payload: bytes) -> bytes:
        request = _parse(relay_pb2.RelayConnectRequest(), payload)
        if len(request.target_node_id) != 32:
            raise RequestRefusedError("target_node_id is 32 bytes")
        target = request.target_node_id.hex()
        connection = self._endpoint.connection_to(peer)
        if connection is None or connection.relayed:
            raise RequestRefusedError("Connect needs a direct connection")
        refusal = self._refusal()
        reserved = self.book.reservation(target) is not None
        if refusal is None and reserved and self._endpoint.connection_to(target) is None:
            self.book.node_gone(target)
            refusal = "the target is not connected to this relay"
        result = (
            self.book.open_circuit(peer, target, self._clock())
            if refusal is None
            else Refused(refusal)
        )
        self._tell_closed()
        if isinstance(result, Refused):
            self._events.event(
                "relay_circuit_refused",
                level="debug",
                peer_node_id=peer,
                target=target,
                reason=result.reason,
            )
            return relay_pb2.RelayConnectResponse(
                accepted=False, reason=result.reason
            ).SerializeToString()
        self._events.event(
            "relay_circuit_opened",
            level="debug",
            circuit_id=result.circuit_id,
            requester=peer,
            target=target,
        )
        return relay_pb2.RelayConnectResponse(
            accepted=True, circuit_id=result.circuit_id, observed_address=_format(connection)
        ).SerializeToString()

    def _refusal(self) -> str | None:
        if not self.settings.serve:
            return "this node does not relay (relay.serve = false)"
        if not self.serving:
            return "this node relays only while it is publicly reachable"
        return None

    def _forward(self, connection: OverlayConnection, circuit_id: int, packet: bytes) -> None:
        sender = connection.remote_node_id
        assert sender is not None
        decision = self.book.forward(circuit_id, sender, len(packet), self._clock())
        if isinstance(decision, Forward):
            out = self._endpoint.connection_to(decision.to_node)
            if out is None:
                self.book.node_gone(decision.to_node)
            elif out.send_datagram(circuit_frame(circuit_id, packet, delivered=True)):
                metrics.RELAY_FORWARDED_BYTES.inc(amount=len(packet))
            else:
                metrics.RELAY_DROPPED_FRAMES.inc()
        else:
            metrics.RELAY_DROPPED_FRAMES.inc()
        self._tell_closed()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            book = self.book
            book.expire(self._clock())
            for node_id in book.reservation_ids():
                if self._endpoint.connection_to(node_id) is None:
                    book.node_gone(node_id)  # its connection closed: the reservation ends
            self._tell_closed()
            self._unpin()

    def _unpin(self) -> None:
        """Connections of nodes whose reservation ended may idle out again."""
        reserved = set(self.book.reservation_ids())
        for peer in self._pinned_peers - reserved:
            connection = self._endpoint.connection_to(peer)
            if connection is not None:
                connection.pinned = False
        self._pinned_peers &= reserved

    def _tell_closed(self) -> None:
        for closed in self.book.closed():
            self._events.event(
                "relay_circuit_closed",
                level="debug",
                circuit_id=closed.circuit_id,
                requester=closed.requester,
                target=closed.target,
                reason=closed.reason,
            )
            for node_id in (closed.requester, closed.target):
                connection = self._endpoint.connection_to(node_id)
                if connection is not None:
                    task = asyncio.get_running_loop().create_task(_notify(connection, closed))
                    self._notices.add(task)
                    task.add_done_callback(self._notices.discard)

    # -- private side: reservations ------------------------------------------------------

    async def keep_reservations(
        self, candidates: Callable[[], Iterable[tuple[str, str, int]]]
    ) -> None:
        """Hold up to `settings.reservations` reservations among `candidates()`
        ((node id, host, port) of public peers), renewing and replacing them;
        run until cancelled (then they are dropped from this node's view).
        A second call supersedes the first."""
        self._keeping_run += 1
        run = self._keeping_run
        try:
            while True:
                changed = self._drop_lost()
                changed |= await self._renew_due()
                if len(self._held) < self.settings.reservations:
                    changed |= await self._reserve_more(candidates())
                if changed:
                    self._changed()
                await asyncio.sleep(self.settings.retry_s)
        finally:
            if run == self._keeping_run and self._held:  # not superseded meanwhile
                for relay_id in list(self._held):
                    self._release(relay_id)
                self._changed()

    def _release(self, relay_id: str) -> None:
        """Stop using the reservation at `relay_id` (this node's side)."""
        self._held.pop(relay_id, None)
        self._observed.pop(relay_id, None)
        self._endpoint.accept_circuits(relay_id, False)
        connection = self._endpoint.connection_to(relay_id)
        if connection is not None:
            connection.pinned = False

    def _drop_lost(self) -> bool:
        lost = [r for r in self._held if self._endpoint.connection_to(r) is None]
        for relay_id in lost:
            self._release(relay_id)
            self._events.event("relay_reservation_lost", relay_node_id=relay_id)
        return bool(lost)

    async def _renew_due(self) -> bool:
        changed = False
        now = self._clock()
        for relay_id, held in list(self._held.items()):
            if held.renew_at > now:
                continue
            address = split_host_port(held.relay.address)
            if await self._reserve(relay_id, *address) is None:
                self._release(relay_id)
                changed = True
        return changed

    async def _reserve_more(self, candidates: Iterable[tuple[str, str, int]]) -> bool:
        changed = False
        for node_id, host, port in candidates:
            if len(self._held) >= self.settings.reservations:
                break
            if node_id in self._held or node_id == self._endpoint.node_id:
                continue
            if self._not_before.active(node_id, self._clock()):
                continue
            if await self._reserve(node_id, host, port) is not None:
                changed = True
            else:
                now = self._clock()
                self._not_before.hold(node_id, now + _REFUSED_BACKOFF_S, now)
        return changed

    async def _reserve(self, relay_id: str, host: str, port: int) -> _Held | None:
        try:
            connection = await asyncio.wait_for(
                self._endpoint.connect(host, port, relay_id), self.settings.request_timeout
            )
            raw = await connection.request(
                RESERVE,
                relay_pb2.RelayReserveRequest().SerializeToString(),
                self.settings.request_timeout,
            )
            response = relay_pb2.RelayReserveResponse.FromString(raw)
        except (OverlayError, OSError, TimeoutError, ValueError, DecodeError) as err:
            self._events.event(
                "relay_reserve_failed", level="debug", relay_node_id=relay_id, error=str(err)
            )
            return None
        if not response.accepted:
            self._events.event(
                "relay_reserve_refused",
                level="debug",
                relay_node_id=relay_id,
                reason=response.reason,
            )
            return None
        duration = max(2.0, float(response.limits.duration_s))
        held = _Held(
            relay=RelayAddress(relay_node_id=relay_id, address=host_port(host, port)),
            renew_at=self._clock() + duration / 2,
        )
        renewed = relay_id in self._held
        self._held[relay_id] = held
        self._observed[relay_id] = response.observed_address
        self._endpoint.accept_circuits(relay_id, True)
        connection.pinned = True  # this node is reached through it: never idle
        if not renewed:
            self._events.event(
                "relay_reservation",
                relay_node_id=relay_id,
                relay=held.relay.address,
                observed_address=response.observed_address,
                duration_s=response.limits.duration_s,
                max_bytes=response.limits.max_bytes,
                rate_bytes_per_s=response.limits.rate_bytes_per_s,
            )
        return held

    def _changed(self) -> None:
        relays = self.relays
        for listener in self._listeners:
            listener(relays)

    # -- dialling through a relay --------------------------------------------------------

    async def connect(self, node_id: str, relays: Sequence[RelayAddress]) -> OverlayConnection:
        """A connection to `node_id`, reached through one of `relays`: direct after a
        successful hole punch, else relayed. Raises OverlayError naming why each
        relay failed."""
        existing = self._endpoint.connection_to(node_id)
        if existing is not None:
            return existing
        errors: list[str] = []
        for relay in relays:
            try:
                # One budget for the relay, the circuit and the end-to-end handshake.
                async with asyncio.timeout(self.settings.request_timeout):
                    inner = await self._connect_via(relay, node_id)
            except (OverlayError, OSError, TimeoutError, ValueError, DecodeError) as err:
                errors.append(f"via {relay.relay_node_id[:16]}: {err or type(err).__name__}")
                continue
            if not self.settings.hole_punch:
                return inner
            if self._punch_failed.active(node_id, self._clock()):
                return inner  # it failed lately: the relayed path it is
            return await self._hole_punch(inner, node_id)
        raise OverlayError(
            f"cannot reach {node_id} through a relay: " + ("; ".join(errors) or "it names none")
        )

    async def _connect_via(self, relay: RelayAddress, node_id: str) -> OverlayConnection:
        host, port = split_host_port(relay.address)
        timeout = self.settings.request_timeout
        connection = await self._endpoint.connect(host, port, relay.relay_node_id)
        raw = await connection.request(
            CONNECT,
            relay_pb2.RelayConnectRequest(
                target_node_id=bytes.fromhex(node_id)
            ).SerializeToString(),
            timeout,
        )
        response = relay_pb2.RelayConnectResponse.FromString(raw)
        if not response.accepted:
            raise OverlayError(f"the relay refused: {response.reason}")
        self._observed[relay.relay_node_id] = response.observed_address
        inner = await self._endpoint.dial_via(relay.relay_node_id, response.circuit_id, node_id)
        self._events.event(
            "relay_connected",
            level="debug",
            peer_node_id=node_id,
            relay_node_id=relay.relay_node_id,
            circuit_id=response.circuit_id,
        )
        return inner

    async def _hole_punch(self, inner: OverlayConnection, node_id: str) -> OverlayConnection:
        """Try for a direct connection within `punch_timeout` in all; else keep `inner`."""
        self.punches_tried += 1
        started = self._clock()
        errors: list[str] = []
        try:
            async with asyncio.timeout(self.settings.punch_timeout):
                direct = await self._punch(inner, node_id, errors)
        except TimeoutError:
            errors.append(f"no direct connection within {self.settings.punch_timeout:g} s")
            direct = None
        if direct is None:
            self._punch_result(node_id, False, started, "; ".join(errors))
            now = self._clock()
            self._punch_failed.hold(node_id, now + _PUNCH_FAILED_S, now)
            return inner
        self.punches_succeeded += 1
        self._punch_result(node_id, True, started, "", address=_format(direct))
        return direct

    async def _punch(
        self, inner: OverlayConnection, node_id: str, errors: list[str]
    ) -> OverlayConnection | None:
        mine = self._observed_addresses()
        try:
            raw = await inner.request(
                HOLE_PUNCH,
                relay_pb2.HolePunchRequest(observed_addresses=mine).SerializeToString(),
                self.settings.punch_timeout,
            )
            response = relay_pb2.HolePunchResponse.FromString(raw)
        except (OverlayError, ValueError, DecodeError) as err:
            errors.append(f"HolePunch failed: {err}")
            return None
        if not response.accepted:
            errors.append(response.reason)
            return None
        for address in _valid_addresses(response.observed_addresses):
            host, port = split_host_port(address)
            try:
                return await self._endpoint.dial_direct(host, port, node_id)
            except (OverlayError, OSError) as err:
                errors.append(f"{address}: {err or type(err).__name__}")
        if not errors:
            errors.append("the peer named no address")
        return None

    def _punch_result(
        self, node_id: str, ok: bool, started: float, error: str, address: str = ""
    ) -> None:
        metrics.HOLE_PUNCHES.inc("direct" if ok else "relayed")
        self._events.event(
            "hole_punch",
            peer_node_id=node_id,
            direct=ok,
            address=address,
            error=error,
            ms=round((self._clock() - started) * 1000, 1),
        )

    async def _on_hole_punch(self, peer: str, payload: bytes) -> bytes:
        request = _parse(relay_pb2.HolePunchRequest(), payload)
        if not self.settings.hole_punch:
            return relay_pb2.HolePunchResponse(
                accepted=False, reason="hole punching is off (relay.hole_punch = false)"
            ).SerializeToString()
        # Punch datagrams go to addresses the caller names: only for a caller that
        # came through a relay (whose limits bound it), and rarely, so this node
        # cannot be made to spray datagrams at third parties.
        if self._endpoint.relayed_connection_to(peer) is None:
            raise RequestRefusedError("HolePunch is for a connection through a relay")
        now = self._clock()
        if self._punched.active(peer, now):
            return relay_pb2.HolePunchResponse(
                accepted=False, reason=f"at most one hole punch per {_PUNCH_INTERVAL_S:g} s"
            ).SerializeToString()
        self._punched.hold(peer, now + _PUNCH_INTERVAL_S, now)
        targets = _valid_addresses(request.observed_addresses)
        loop = asyncio.get_running_loop()
        for delay in _PUNCH_SCHEDULE:
            for address in targets:
                host, port = split_host_port(address)
                loop.call_later(delay, self._endpoint.punch, host, port, os.urandom(_PUNCH_BYTES))
        return relay_pb2.HolePunchResponse(
            accepted=True, observed_addresses=self._observed_addresses()
        ).SerializeToString()

    def _observed_addresses(self) -> list[str]:
        """This node's address as relays it is connected to saw it (held ones first)."""
        for relay_id in [r for r in self._observed if self._endpoint.connection_to(r) is None]:
            del self._observed[relay_id]
        ordered = sorted(self._observed.items(), key=lambda item: item[0] not in self._held)
        unique = dict.fromkeys(address for _, address in ordered if address)
        return list(unique)[:_MAX_PUNCH_ADDRESSES]

    async def _on_circuit_closed(self, peer: str, payload: bytes) -> bytes:
        message = _parse(relay_pb2.RelayCircuitClosed(), payload)
        self._endpoint.circuit_closed(peer, message.circuit_id, message.reason)
        return b""


async def _notify(connection: OverlayConnection, closed: ClosedCircuit) -> None:
    with contextlib.suppress(OverlayError):
        await connection.send_oneway(
            CIRCUIT_CLOSED,
            relay_pb2.RelayCircuitClosed(
                circuit_id=closed.circuit_id, reason=closed.reason
            ).SerializeToString(),
        )


_Request = TypeVar(
    "_Request",
    relay_pb2.RelayReserveRequest,
    relay_pb2.RelayConnectRequest,
    relay_pb2.RelayCircuitClosed,
    relay_pb2.HolePunchRequest,
)


def _parse(message: _Request, payload: bytes) -> _Request:
    try:
        message.ParseFromString(payload)
    except (ValueError, DecodeError):
        raise RequestRefusedError(f"malformed {type(message).__name__}") from None
    return message


def _format(connection: OverlayConnection) -> str:
    return host_port(str(connection.address[0]), int(connection.address[1]))


def _valid_addresses(addresses: Iterable[str]) -> list[str]:
    """At most 4 "ip:port" literals (never names: nothing here resolves DNS)."""
    valid = []
    for address in list(addresses)[:_MAX_PUNCH_ADDRESSES]:
        try:
            host, port = split_host_port(address)
            ipaddress.ip_address(host)
        except ValueError:
            continue
        if 1 <= port <= 65535:
            valid.append(address)
    return valid
