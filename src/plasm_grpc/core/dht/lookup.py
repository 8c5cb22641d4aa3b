"""The iterative FIND_NODE lookup (Kademlia paper, section 2.3).

The initiator starts from the contacts it knows nearest the target, sends
FIND_NODE to `alpha` of them in parallel and, as replies name closer nodes,
keeps up to `alpha` queries in flight to the nearest contacts not yet queried.
A contact that fails or times out is dropped from consideration (section 2.3:
"nodes that fail to respond quickly are removed from consideration"). The
lookup terminates once the k nearest contacts it has heard of, failures
excluded, have all been queried and have answered; `result()` is those k.

This is a pure state machine: the caller sends what `next_queries(now)`
returns, feeds back `on_response` / `on_failure`, and calls `on_timer(now)`
at or after `get_timer()` so queries older than `timeout` count as failed.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.routing import Contact, K

ALPHA: Final = 3
"""Parallelism of a lookup (section 2.3; DESIGN.md item 6)."""
DEFAULT_TIMEOUT: Final = 2.0
"""Seconds before an unanswered query counts as failed."""


class _State(enum.Enum):
    CANDIDATE = "candidate"
    IN_FLIGHT = "in flight"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(slots=True)
class _Entry:
    contact: Contact
    distance: int
    hops: int
    state: _State = _State.CANDIDATE
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupStats:
    queries: int
    answered: int
    failed: int
    hops: int
    """Longest referral chain from a seed to a contact in the result."""


class Lookup:
    """One iterative FIND_NODE lookup for `target`.

    Entries are kept in one list sorted by distance, so each step walks only
    the nearest entries (k plus the failed ones among them) instead of
    sorting everything heard of; the in-flight entries are kept apart.
    """

    def __init__(
        self,
        target: Key,
        seeds: Iterable[Contact],
        *,
        k: int = K,
        alpha: int = ALPHA,
        timeout: float = DEFAULT_TIMEOUT,
        exclude: Iterable[str] = (),
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._target = target
        self._k = k
        self._alpha = alpha
        self._timeout = timeout
        self._exclude = frozenset(exclude)
        self._entries: dict[str, _Entry] = {}
        self._order: list[_Entry] = []
        """Every entry, nearest the target first."""
        self._flying: dict[str, _Entry] = {}
        self._failed = 0
        """Entries that failed (their answer may still come late)."""
        self._queries = 0
        for seed in seeds:
            self._learn(seed, hops=0)

    @property
    def target(self) -> Key:
        return self._target

    def _learn(self, contact: Contact, hops: int) -> None:
        if contact.node_id in self._exclude or contact.node_id in self._entries:
            return
        entry = _Entry(
            contact=contact, distance=int(contact.node_id, 16) ^ self._target.value, hops=hops
        )
        self._entries[contact.node_id] = entry
        bisect.insort(self._order, entry, key=_by_distance)

    def _nearest_live(self) -> list[_Entry]:
        """The k nearest entries that have not failed, nearest first."""
        if not self._failed:
            return self._order[: self._k]
        live: list[_Entry] = []
        for entry in self._order:
            if entry.state is not _State.FAILED:
                live.append(entry)
                if len(live) == self._k:
                    break
        return live

    @property
    def done(self) -> bool:
        return all(e.state is _State.ANSWERED for e in self._nearest_live())

    def next_queries(self, now: float) -> list[Contact]:
        """Contacts to send FIND_NODE(target) to now; marks them in flight."""
        budget = self._alpha - len(self._flying)
        if budget <= 0:
            return []
        chosen: list[Contact] = []
        for entry in self._nearest_live():
            if budget <= 0:
                break
            if entry.state is _State.CANDIDATE:
                entry.state = _State.IN_FLIGHT
                entry.sent_at = now
                self._flying[entry.contact.node_id] = entry
                chosen.append(entry.contact)
                budget -= 1
        self._queries += len(chosen)
        return chosen

    def on_response(self, contact: Contact, closer: Iterable[Contact], now: float) -> None:
        """`contact` answered with the contacts it knows nearest the target.

        Replies from contacts never queried are ignored; a late reply after a
        timeout is accepted, since the contact has proven it is alive.
        """
        del now  # part of the uniform event signature; timing is tracked at send
        entry = self._entries.get(contact.node_id)
        if entry is None or entry.state not in (_State.IN_FLIGHT, _State.FAILED):
            return
        if entry.state is _State.FAILED:
            self._failed -= 1
        entry.state = _State.ANSWERED
        self._flying.pop(contact.node_id, None)
        entries, exclude, hops = self._entries, self._exclude, entry.hops + 1
        for other in closer:
            if other.node_id not in entries and other.node_id not in exclude:
                self._learn(other, hops)

    def on_failure(self, contact: Contact, now: float) -> None:
        del now
        entry = self._flying.pop(contact.node_id, None)
        if entry is not None:
            entry.state = _State.FAILED
            self._failed += 1

    def get_timer(self) -> float | None:
        """When the oldest query in flight times out, or None."""
        if not self._flying:
            return None
        return min(e.sent_at for e in self._flying.values()) + self._timeout

    def on_timer(self, now: float) -> None:
        for node_id, entry in list(self._flying.items()):
            if now - entry.sent_at >= self._timeout:
                entry.state = _State.FAILED
                self._failed += 1
                del self._flying[node_id]

    def result(self) -> list[Contact]:
        """The (up to) k nearest contacts that answered, nearest first."""
        answered = [e for e in self._nearest_live() if e.state is _State.ANSWERED]
        return [e.contact for e in answered]

    def stats(self) -> LookupStats:
        states = [e.state for e in self._entries.values()]
        result_hops = [e.hops for e in self._nearest_live() if e.state is _State.ANSWERED]
        return LookupStats(
            queries=self._queries,
            answered=states.count(_State.ANSWERED),
            failed=states.count(_State.FAILED),
            hops=max(result_hops, default=0),
        )


def _by_distance(entry: _Entry) -> int:
    return entry.distance
