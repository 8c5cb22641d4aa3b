"""Relay bookkeeping, sans-I/O: reservations, circuits and their limits.

A relay (a publicly reachable node) holds reservations for nodes that cannot
be dialled (docs/reachability.md). A reservation is bounded four ways, all
enforced here:

* count: at most `max_reservations` nodes hold one at once;
* duration: it ends `duration_s` after it was made or last renewed;
* bytes: at most `max_bytes` relayed to and from the node per term (every
  circuit together); past it the node's circuits close;
* rate: `rate_bytes_per_s` sustained (a token bucket holding one second's
  worth); frames over it are dropped, as a router drops what it cannot send.

A circuit joins a requester to a node with a reservation; there are at most
`max_circuits` per reservation and a circuit without traffic for
`circuit_idle_s` closes. Time is passed in; the adapter (net/relay.py) acts on
what the calls return.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "Circuit",
    "ClosedCircuit",
    "Cooldowns",
    "Forward",
    "Refused",
    "RelayBook",
    "RelayLimits",
    "Reservation",
]

_MAX_CIRCUIT_ID: Final = 2**31 - 1  # the frame header's top bit is a direction


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """What a relay grants each reservation (the `[relay]` config section)."""

    max_reservations: int = 16
    duration_s: float = 600.0
    max_bytes: int = 256 * 1024 * 1024
    rate_bytes_per_s: int = 1024 * 1024
    max_circuits: int = 8
    circuit_idle_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_reservations", "max_bytes", "rate_bytes_per_s", "max_circuits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("duration_s", "circuit_idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True, kw_only=True)
class Reservation:
    node_id: str
    expires_at: float
    term_started: float = 0.0
    bytes_used: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0
    circuits: set[int] = field(default_factory=set)


@dataclass(slots=True, kw_only=True)
class Circuit:
    circuit_id: int
    requester: str  # the node that asked for it
    target: str  # the node holding the reservation
    last_active: float


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the relay turns down, with the reason it tells the caller."""

    reason: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the frame on to this node, on the same circuit."""

    to_node: str


@dataclass(frozen=True, slots=True)
class ClosedCircuit:
    """A circuit that ended: tell both ends why."""

    circuit_id: int
    requester: str
    target: str
    reason: str


class Cooldowns:
    """Keys on hold until a time each (a peer not to ask, or punch for, again yet).

    Remembers at most about `max_keys`: past that, the holds already over are
    forgotten when a new one is made.
    """

    def __init__(self, max_keys: int = 1024) -> None:
        self._until: dict[str, float] = {}
        self._max_keys = max_keys

    def active(self, key: str, now: float) -> bool:
        return self._until.get(key, -math.inf) > now

    def hold(self, key: str, until: float, now: float) -> None:
        self._until[key] = until
        if len(self._until) > self._max_keys:
            self._until = {k: t for k, t in self._until.items() if t > now}


class RelayBook:
    """Every reservation and circuit of one relay."""

    def __init__(self, limits: RelayLimits, *, first_circuit_id: int = 1) -> None:
        self.limits = limits
        self._reservations: dict[str, Reservation] = {}
        self._circuits: dict[int, Circuit] = {}
        self._ids = itertools.count(max(1, first_circuit_id))
        self._closed: list[ClosedCircuit] = []
        self.dropped_frames = 0
        self.forwarded_bytes = 0

    # -- reservations --------------------------------------------------------------------

    def reserve(self, node_id: str, now: float) -> Reservation | Refused:
        """Make or renew `node_id`'s reservation (a renewal starts a fresh term)."""
        self.expire(now)
        limits = self.limits
        current = self._reservations.get(node_id)
        if current is None:
            if len(self._reservations) >= limits.max_reservations:
                return Refused(
                    f"the relay holds its maximum of {limits.max_reservations} reservations"
                )
            current = self._reservations[node_id] = Reservation(
                node_id=node_id, expires_at=0.0, tokens=float(limits.rate_bytes_per_s)
            )
            current.refilled_at = now
            current.term_started = now
        elif now - current.term_started >= limits.duration_s:
            # A fresh byte budget once a whole term has passed, not per renewal:
            # a holder renewing every second must not reset its own limit.
            current.term_started = now
            current.bytes_used = 0
        current.expires_at = now + limits.duration_s
        return current

    def reservation(self, node_id: str) -> Reservation | None:
        return self._reservations.get(node_id)

    def reservation_ids(self) -> list[str]:
        return list(self._reservations)

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    @property
    def circuits(self) -> int:
        return len(self._circuits)

    def clear(self, reason: str) -> None:
        """End every reservation and circuit (this node stopped relaying)."""
        for circuit_id in list(self._circuits):
            self._close(circuit_id, reason)
        self._reservations.clear()

    def node_gone(self, node_id: str) -> None:
        """`node_id`'s connection closed: its reservation and circuits end."""
        for circuit in list(self._circuits.values()):
            if node_id in (circuit.requester, circuit.target):
                self._close(circuit.circuit_id, "peer disconnected")
        self._reservations.pop(node_id, None)

    # -- circuits ------------------------------------------------------------------------

    def open_circuit(self, requester: str, target: str, now: float) -> Circuit | Refused:
        self.expire(now)
        if requester == target:
            return Refused("a node cannot open a circuit to itself")
        reservation = self._reservations.get(target)
        if reservation is None:
            return Refused("the target holds no reservation at this relay")
        if len(reservation.circuits) >= self.limits.max_circuits:
            return Refused(
                f"the target has its maximum of {self.limits.max_circuits} circuits open here"
            )
        if reservation.bytes_used >= self.limits.max_bytes:
            return Refused("the target's reservation used its byte limit for this term")
        circuit_id = next(self._ids)
        while circuit_id > _MAX_CIRCUIT_ID or circuit_id in self._circuits:
            if circuit_id > _MAX_CIRCUIT_ID:  # two billion circuits: start over
                self._ids = itertools.count(1)
            circuit_id = next(self._ids)
        circuit = Circuit(
            circuit_id=circuit_id, requester=requester, target=target, last_active=now
        )
        self._circuits[circuit_id] = circuit
        reservation.circuits.add(circuit_id)
        return circuit

    def circuit(self, circuit_id: int) -> Circuit | None:
        return self._circuits.get(circuit_id)

    def close_circuit(self, circuit_id: int, reason: str) -> None:
        self._close(circuit_id, reason)

    def forward(self, circuit_id: int, sender: str, size: int, now: float) -> Forward | None:
        """Where a frame of `size` bytes from `sender` on `circuit_id` goes, or None: drop it.

        Closing a circuit (the byte limit) is reported by `closed()`.
        """
        circuit = self._circuits.get(circuit_id)
        if circuit is None or sender not in (circuit.requester, circuit.target) or size < 0:
            self.dropped_frames += 1
            return None
        reservation = self._reservations.get(circuit.target)
        if reservation is None or reservation.expires_at <= now:
            self.expire(now)
            self.dropped_frames += 1
            return None
        limits = self.limits
        if reservation.bytes_used + size > limits.max_bytes:
            reservation.bytes_used = limits.max_bytes
            for other in list(reservation.circuits):
                self._close(other, "byte limit reached")
            self.dropped_frames += 1
            return None
        elapsed = max(0.0, now - reservation.refilled_at)
        reservation.tokens = min(
            float(limits.rate_bytes_per_s), reservation.tokens + elapsed * limits.rate_bytes_per_s
        )
        reservation.refilled_at = now
        if reservation.tokens < size:
            self.dropped_frames += 1
            return None
        reservation.tokens -= size
        reservation.bytes_used += size
        circuit.last_active = now
        self.forwarded_bytes += size
        return Forward(circuit.target if sender == circuit.requester else circuit.requester)

    # -- time ----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """End reservations past their term and circuits idle too long."""
        for node_id, reservation in list(self._reservations.items()):
            if reservation.expires_at <= now:
                for circuit_id in list(reservation.circuits):
                    self._close(circuit_id, "the reservation expired")
                del self._reservations[node_id]
        idle = self.limits.circuit_idle_s
        for circuit in list(self._circuits.values()):
            if now - circuit.last_active >= idle:
                self._close(circuit.circuit_id, f"no traffic for {idle:g} s")

    def next_deadline(self) -> float | None:
        """When `expire` next has something to do."""
        times = [r.expires_at for r in self._reservations.values()]
        times += [c.last_active + self.limits.circuit_idle_s for c in self._circuits.values()]
        return min(times, default=None)

    def closed(self) -> list[ClosedCircuit]:
        """The circuits closed since the last call (pull: the adapter tells their ends)."""
        closed, self._closed = self._closed, []
        return closed

    def _close(self, circuit_id: int, reason: str) -> None:
        circuit = self._circuits.pop(circuit_id, None)
        if circuit is None:
            return
        reservation = self._reservations.get(circuit.target)
        if reservation is not None:
            reservation.circuits.discard(circuit_id)
        self._closed.append(
            ClosedCircuit(
                circuit_id=circuit_id,
                requester=circuit.requester,
                target=circuit.target,
                reason=reason,
            )
        )
