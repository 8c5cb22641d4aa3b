"""The iterative FIND_NODE lookup (Kademlia paper, section 2.3).

The initiator starts from the contacts it knows nearest the target, sends
FIND_NODE to `alpha` of them in parallel and, as replies name closer nodes,
keeps up to `alpha` queries in flight to the nearest contacts not yet queried.
A contact that fails or times out is dropped from consideration (section 2.3:
"nodes that fail to respond quickly are removed from consideration"). The
lookup terminates once the k nearest contacts it has heard of, failures
excluded, have all been queried and have answered; `result()` is those k.

This is a pure state machine: the caller sends what `next_queries(now)`
returns and feeds back `on_response` / `on_failure`. A caller without its own
RPC timeouts calls `on_timer(now)` at or after `get_timer()` so queries older
than `timeout` count as failed; `DhtNode` does not, because its transport
answers every request it sends (the overlay's request timeout).
With `retries` > 0 a contact whose query failed is asked again (if it is
still among the nearest) before it is dropped: worth it over a lossy
transport, wasted on dead nodes (QUIC already retransmits lost packets).

Defence against referrers that lie: the lookup remembers who named each
contact. A referrer whose referrals fail far more often than they answer (at
least `DISTRUST_FAILURES` failures and more than `DISTRUST_RATIO` times as many
failures as answers) is distrusted for the rest of the lookup, and contacts
only distrusted referrers named are dropped from consideration unqueried. An
eclipse attempt that answers with made-up contacts next to the target then
costs `alpha` timed-out queries instead of k; an honest referrer that named a
few dead nodes loses nothing that another referrer also named.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.routing import Contact, K

ALPHA: Final = 3
"""Parallelism of a lookup (section 2.3; DESIGN.md item 6)."""
DEFAULT_TIMEOUT: Final = 2.0
"""Seconds before an unanswered query counts as failed."""
DISTRUST_FAILURES: Final = 3
"""Failed referrals before a referrer can be distrusted."""
DISTRUST_RATIO: Final = 2
"""A referrer is distrusted once its failed referrals outnumber its answered
ones by more than this factor (and number at least `DISTRUST_FAILURES`)."""


class _State(enum.Enum):
    CANDIDATE = "candidate"
    IN_FLIGHT = "in flight"
    ANSWERED = "answered"
    FAILED = "failed"
    PRUNED = "pruned"
    """Named only by distrusted referrers: dropped without being queried."""


@dataclass(slots=True)
class _Entry:
    contact: Contact
    distance: int
    hops: int
    state: _State = _State.CANDIDATE
    sent_at: float = 0.0
    referrers: list[str] = field(default_factory=list)
    """Who named this contact; empty for a seed (trusted)."""
    failures: int = 0


@dataclass(slots=True)
class _Referrer:
    answered: int = 0
    failed: int = 0
    distrusted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupStats:
    queries: int
    answered: int
    failed: int
    hops: int
    """Longest referral chain from a seed to a contact in the result."""
    pruned: int = 0
    """Contacts dropped unqueried because only distrusted referrers named them."""
    distrusted: int = 0
    """Referrers distrusted (see the module docstring)."""


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
        retries: int = 0,
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        if retries < 0:
            raise ValueError("retries must be non-negative")
        self._retries = retries
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
        """Entries out of consideration: failed (an answer may still come
        late) or pruned."""
        self._referrers: dict[str, _Referrer] = {}
        self._queries = 0
        for seed in seeds:
            self._learn(seed, hops=0)

    @property
    def target(self) -> Key:
        return self._target

    def _learn(self, contact: Contact, hops: int, referrer: str | None = None) -> None:
        if contact.node_id in self._exclude or contact.node_id in self._entries:
            return
        entry = _Entry(
            contact=contact, distance=int(contact.node_id, 16) ^ self._target.value, hops=hops
        )
        if referrer is not None:
            entry.referrers.append(referrer)
        self._entries[contact.node_id] = entry
        bisect.insort(self._order, entry, key=_by_distance)

    def _named_again(self, entry: _Entry, referrer: str) -> None:
        """A known contact is named by another referrer too."""
        if referrer in entry.referrers or not entry.referrers:
            return  # a seed needs no referrer
        entry.referrers.append(referrer)
        if entry.state is _State.PRUNED and not self._referrers[referrer].distrusted:
            entry.state = _State.CANDIDATE  # vouched for by a referrer still trusted
            self._failed -= 1

    def _credit(self, entry: _Entry, *, answered: bool) -> None:
        """Count `entry`'s outcome for whoever named it; distrust liars."""
        for name in entry.referrers:
            referrer = self._referrers[name]
            if answered:
                referrer.answered += 1
                continue
            referrer.failed += 1
            if (
                not referrer.distrusted
                and referrer.failed >= DISTRUST_FAILURES
                and referrer.failed > DISTRUST_RATIO * referrer.answered
            ):
                referrer.distrusted = True
                self._prune()

    def _prune(self) -> None:
        for entry in self._order:
            if (
                entry.state is _State.CANDIDATE
                and entry.referrers
                and all(self._referrers[r].distrusted for r in entry.referrers)
            ):
                entry.state = _State.PRUNED
                self._failed += 1

    def _nearest_live(self) -> list[_Entry]:
        """The k nearest entries that have not failed, nearest first."""
        if not self._failed:
            return self._order[: self._k]
        live: list[_Entry] = []
        for entry in self._order:
            if entry.state is not _State.FAILED and entry.state is not _State.PRUNED:
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
            for name in entry.referrers:  # it was counted as a failure: undo that
                self._referrers[name].failed -= 1
        entry.state = _State.ANSWERED
        self._flying.pop(contact.node_id, None)
        self._credit(entry, answered=True)
        name = contact.node_id
        self._referrers.setdefault(name, _Referrer())
        entries, exclude, hops = self._entries, self._exclude, entry.hops + 1
        distrusted = self._referrers[name].distrusted
        for other in closer:
            known = entries.get(other.node_id)
            if known is not None:
                self._named_again(known, name)
            elif other.node_id not in exclude and not distrusted:
                self._learn(other, hops, name)

    def on_failure(self, contact: Contact, now: float) -> None:
        del now
        entry = self._flying.pop(contact.node_id, None)
        if entry is not None:
            self._fail(entry)

    def _fail(self, entry: _Entry) -> None:
        entry.failures += 1
        if entry.failures <= self._retries:
            entry.state = _State.CANDIDATE  # asked again if still among the nearest
            return
        entry.state = _State.FAILED
        self._failed += 1
        self._credit(entry, answered=False)

    def get_timer(self) -> float | None:
        """When the oldest query in flight times out, or None."""
        if not self._flying:
            return None
        return min(e.sent_at for e in self._flying.values()) + self._timeout

    def on_timer(self, now: float) -> None:
        for node_id, entry in list(self._flying.items()):
            if now - entry.sent_at >= self._timeout:
                del self._flying[node_id]
                self._fail(entry)

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
            pruned=states.count(_State.PRUNED),
            distrusted=sum(r.distrusted for r in self._referrers.values()),
        )


def _by_distance(entry: _Entry) -> int:
    return entry.distance
