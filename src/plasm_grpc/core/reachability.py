"""Reachability detection by dial-back, sans-I/O (docs/reachability.md).

A `ReachabilityCheck` runs rounds. `start_round(helpers, now, nonce)` picks up
to `max_helpers` peers and returns the dial-back requests to send, each with a
fresh nonce; the adapter sends them and feeds the outcomes back:

* `probe_received(helper, nonce)` when a Probe arrives: True (answer it) only
  for a nonce this round issued to that helper, once;
* `helper_answered(helper, dialled)` with the helper's DialBack response;
* `helper_failed(helper)` when the DialBack call itself failed (no vote).

A helper counts as a success only when it says it dialled AND its Probe
arrived with the right nonce (a lying helper cannot make a node think it is
public). The round ends when every helper has answered or at the deadline
(`handle_timer(now)`); the verdict is the majority of the votes cast:
PUBLIC, PRIVATE, or UNKNOWN on a tie or no votes. A change of verdict is
queued as a `ReachabilityChanged` event (`next_event()`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MIN_NONCE_BYTES",
    "DialBackLimiter",
    "DialBackRequestOut",
    "Reachability",
    "ReachabilityChanged",
    "ReachabilityCheck",
]

MIN_NONCE_BYTES: Final = 16
MAX_NONCE_BYTES: Final = 64


class Reachability(enum.Enum):
    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBackRequestOut:
    """Ask `helper` (a node id) to dial this node back with `nonce`."""

    helper: str
    nonce: bytes

    def __post_init__(self) -> None:
        if not MIN_NONCE_BYTES <= len(self.nonce) <= MAX_NONCE_BYTES:
            raise ValueError(f"a nonce has {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReachabilityChanged:
    old: Reachability
    new: Reachability
    successes: int
    failures: int


@dataclass(slots=True)
class _Helper:
    nonce: bytes
    probed: bool = False
    answer: bool | None = None  # the helper's claim; None: not yet / failed
    failed: bool = False


@dataclass(slots=True)
class _Round:
    deadline: float
    helpers: dict[str, _Helper] = field(default_factory=dict)

    def done(self) -> bool:
        return all(h.failed or h.answer is not None for h in self.helpers.values())


class ReachabilityCheck:
    """The dial-back state machine of one node. Time and nonces come in as arguments."""

    def __init__(self, *, max_helpers: int = 3, round_timeout: float = 15.0) -> None:
        if max_helpers < 1:
            raise ValueError("max_helpers must be at least 1")
        if round_timeout <= 0:
            raise ValueError("round_timeout must be positive")
        self._max_helpers = max_helpers
        self._round_timeout = round_timeout
        self._round: _Round | None = None
        self._status = Reachability.UNKNOWN
        self._events: list[ReachabilityChanged] = []

    @property
    def status(self) -> Reachability:
        return self._status

    @property
    def running(self) -> bool:
        return self._round is not None

    def start_round(
        self, helpers: Sequence[str], now: float, nonce: Callable[[], bytes]
    ) -> list[DialBackRequestOut]:
        """Begin a round with the first `max_helpers` of `helpers` (distinct node ids).

        Returns nothing when a round is running or there is no helper.
        """
        if self._round is not None:
            return []
        chosen = list(dict.fromkeys(helpers))[: self._max_helpers]
        if not chosen:
            return []
        self._round = _Round(deadline=now + self._round_timeout)
        out = []
        for helper in chosen:
            request = DialBackRequestOut(helper=helper, nonce=nonce())
            self._round.helpers[helper] = _Helper(nonce=request.nonce)
            out.append(request)
        return out

    def probe_received(self, helper: str, nonce: bytes) -> bool:
        """A Probe from `helper`: True (answer it) only for the nonce issued to it, once."""
        if self._round is None:
            return False
        state = self._round.helpers.get(helper)
        if state is None or state.probed or state.nonce != nonce:
            return False
        state.probed = True
        return True

    def helper_answered(self, helper: str, dialled: bool, now: float) -> None:
        state = self._helper(helper)
        if state is not None and not state.failed and state.answer is None:
            state.answer = dialled
        self._maybe_finish(now)

    def helper_failed(self, helper: str, now: float) -> None:
        state = self._helper(helper)
        if state is not None and state.answer is None:
            state.failed = True
        self._maybe_finish(now)

    def get_timer(self) -> float | None:
        return self._round.deadline if self._round is not None else None

    def handle_timer(self, now: float) -> None:
        if self._round is not None and now >= self._round.deadline:
            self._finish()

    def next_event(self) -> ReachabilityChanged | None:
        return self._events.pop(0) if self._events else None

    # -- internals -----------------------------------------------------------------------

    def _helper(self, helper: str) -> _Helper | None:
        return self._round.helpers.get(helper) if self._round is not None else None

    def _maybe_finish(self, now: float) -> None:
        if self._round is not None and (self._round.done() or now >= self._round.deadline):
            self._finish()

    def _finish(self) -> None:
        assert self._round is not None
        successes = failures = 0
        for state in self._round.helpers.values():
            if state.answer is None:
                continue  # no vote: the call failed or never came back
            if state.answer and state.probed:
                successes += 1
            else:
                failures += 1
        self._round = None
        if successes == failures == 0:
            return  # nobody voted: keep what we knew
        if successes > failures:
            verdict = Reachability.PUBLIC
        elif failures > successes:
            verdict = Reachability.PRIVATE
        else:
            verdict = Reachability.UNKNOWN
        if verdict is not self._status:
            self._events.append(
                ReachabilityChanged(
                    old=self._status, new=verdict, successes=successes, failures=failures
                )
            )
            self._status = verdict


class DialBackLimiter:
    """Helper side: at most `per_window` dial-backs per requester IP per `window` seconds.

    A sliding window per IP, and at most `max_ips` IPs tracked (the oldest
    is forgotten first), so the limiter's memory is bounded too.
    """

    def __init__(self, *, per_window: int = 4, window: float = 60.0, max_ips: int = 4096) -> None:
        if per_window < 1 or window <= 0 or max_ips < 1:
            raise ValueError("per_window, window and max_ips must be positive")
        self._per_window = per_window
        self._window = window
        self._max_ips = max_ips
        self._seen: dict[str, list[float]] = {}

    def allow(self, ip: str, now: float) -> bool:
        """Record a dial-back to `ip` at `now` if it is within the limit; False if not."""
        times = [t for t in self._seen.pop(ip, []) if now - t < self._window]
        allowed = len(times) < self._per_window
        if allowed:
            times.append(now)
        if times:
            self._seen[ip] = times  # re-inserted: most recently used last
        while len(self._seen) > self._max_ips:
            del self._seen[next(iter(self._seen))]
        return allowed
