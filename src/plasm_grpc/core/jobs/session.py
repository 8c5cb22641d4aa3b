"""The requester's job session: find workers, offer, run, fail over, finish.

A `JobSession` is one job on the node that received its Submit. It does no
I/O: each input (`start`, `candidates_found`, `declined`, `accepted`,
`attempt_failed`, `completed`, `cancel`, ...) returns the next `Action` for the
adapter to carry out, and the events it produced are pulled with
`pop_events()`. Time comes in as `now` (monotonic seconds); the session maps
it to wall-clock time for events from the pair it was created with.

Failover: an offer that is declined, a worker that is unreachable, times
out, disconnects, fails or returns a result whose receipt does not check out
moves on to the next candidate, while attempts and the client's deadline
last. A job that had been sent to a worker before the attempt failed may have
run there: the attempt says so (`may_have_run`), and so does its
ATTEMPT_FAILED event, so the client is told.

Which inputs each state takes is data: `_ACCEPTS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.jobs.events import DeclineReason, EventKind, JobEvent
from plasm_grpc.core.jobs.placement import Candidate, Placement, PlacementMode
from plasm_grpc.core.outcome import Outcome


class AttemptResult(enum.IntEnum):
    """Values equal `plasm.v1.AttemptResult`."""

    COMPLETED = 1
    DECLINED = 2
    UNREACHABLE = 3
    TIMEOUT = 4
    DISCONNECTED = 5
    BAD_RECEIPT = 6
    ERROR = 7
    CANCELLED = 8


@dataclass(slots=True, kw_only=True)
class Attempt:
    number: int  # from 1
    node_id: str
    started: float
    local: bool = False
    result: AttemptResult | None = None
    decline_reason: DeclineReason | None = None
    detail: str = ""
    may_have_run: bool = False
    module_bytes_sent: int = 0
    finished: float | None = None

    @property
    def duration_s(self) -> float:
        return 0.0 if self.finished is None else self.finished - self.started


# -- actions: what the adapter does next -------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """Find candidate workers (a DHT provider lookup, or the named peer)."""

    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOffer:
    attempt: int
    candidate: Candidate
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRun:
    """Send the job (with the module unless the worker holds it), await its result."""

    attempt: int
    candidate: Candidate
    send_module: bool
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLocal:
    attempt: int
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRemote:
    """Ask the worker to stop the job; its JobRun then answers with a CANCELLED receipt."""

    candidate: Candidate


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelLocal:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortPending:
    """Stop waiting for the search or offer in flight, then call `aborted`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    """Nothing to do until the pending operation answers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """Terminal: the attempt's result is the job's result."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail:
    """Terminal: no result. `release`: a worker holding a lease to tell."""

    error_reason: str  # an ErrorReason name without prefix: NO_WORKER, CANCELLED
    message: str
    release: Candidate | None = None


Action = (
    Search
    | SendOffer
    | SendRun
    | RunLocal
    | CancelRemote
    | CancelLocal
    | AbortPending
    | Wait
    | Finish
    | Fail
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    max_attempts: int = 5  # workers offered to; the local fallback comes on top
    offer_timeout_s: float = 2.0
    search_timeout_s: float = 5.0
    fallback_local: bool = True  # AUTO: run here when no worker takes the job

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.offer_timeout_s > 0 and self.search_timeout_s > 0):
            raise ValueError("timeouts must be positive")


class State(enum.Enum):
    NEW = "new"
    SEARCHING = "searching"
    OFFERING = "offering"
    RUNNING = "running"  # sent to a worker
    LOCAL = "local"
    DONE = "done"
    FAILED = "failed"


_TERMINAL: Final = frozenset({State.DONE, State.FAILED})
_LIVE: Final = frozenset(State) - _TERMINAL

# Which states each input is valid in; anything else is a bug in the adapter.
_ACCEPTS: Final[dict[str, frozenset[State]]] = {
    "start": frozenset({State.NEW}),
    "candidates_found": frozenset({State.SEARCHING}),
    "search_failed": frozenset({State.SEARCHING}),
    "declined": frozenset({State.OFFERING}),
    "accepted": frozenset({State.OFFERING}),
    "worker_progress": frozenset({State.RUNNING, State.LOCAL}),
    "attempt_failed": frozenset({State.OFFERING, State.RUNNING}),
    "completed": frozenset({State.RUNNING, State.LOCAL}),
    "local_refused": frozenset({State.LOCAL}),
    "cancel": _LIVE,
    "aborted": frozenset({State.SEARCHING, State.OFFERING}),
}


class SessionError(RuntimeError):
    """An input the session's state does not take (an adapter bug)."""


@dataclass(slots=True)
class JobSession:
    job_id: str
    own_node_id: str
    placement: Placement
    settings: SessionSettings
    deadline: float  # monotonic seconds
    created: float  # monotonic seconds ...
    created_wall_ns: int  # ... and the wall clock at the same moment
    state: State = State.NEW
    attempts: list[Attempt] = field(default_factory=list)
    cancelled: bool = False
    _queue: list[Candidate] = field(default_factory=list)
    _current: Candidate | None = None
    _search_detail: str = ""
    _events: list[JobEvent] = field(default_factory=list)
    _progress: set[EventKind] = field(default_factory=set)

    # -- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> Action:
        self._enter("start")
        self._emit(EventKind.SUBMITTED, now, detail=f"placement {self.placement.mode.name.lower()}")
        mode = self.placement.mode
        if mode is PlacementMode.LOCAL or (
            mode is PlacementMode.PEER and self.placement.peer_node_id == self.own_node_id
        ):
            return self._local(now)
        self.state = State.SEARCHING
        what = (
            f"looking up peer {self.placement.peer_node_id}"
            if mode is PlacementMode.PEER
            else "looking for capable workers"
        )
        self._emit(EventKind.SEARCHING, now, detail=what)
        return Search(timeout_s=max(0.0, min(self.settings.search_timeout_s, self._left(now))))

    def candidates_found(self, candidates: list[Candidate], now: float, detail: str = "") -> Action:
        """Ranked candidates (best first); this node itself is skipped."""
        self._enter("candidates_found")
        tried = {a.node_id for a in self.attempts}
        self._queue = [
            c for c in candidates if c.node_id != self.own_node_id and c.node_id not in tried
        ]
        self._search_detail = detail
        names = ", ".join(f"{c.node_id[:12]}…" for c in self._queue[:8])
        more = f" and {len(self._queue) - 8} more" if len(self._queue) > 8 else ""
        self._emit(
            EventKind.CANDIDATES,
            now,
            detail=f"{len(self._queue)} worker(s): {names}{more}" if self._queue else detail,
        )
        return self._next(now)

    def search_failed(self, detail: str, now: float) -> Action:
        self._enter("search_failed")
        self._search_detail = detail
        return self._next(now)

    def declined(
        self,
        reason: DeclineReason,
        detail: str,
        now: float,
        envelope: SignedEnvelope | None = None,
    ) -> Action:
        self._enter("declined")
        attempt = self._close(now, AttemptResult.DECLINED, detail)
        attempt.decline_reason = reason
        self._emit(
            EventKind.DECLINED,
            now,
            attempt=attempt,
            decline_reason=reason,
            detail=detail,
            decline=envelope,
        )
        return self._next(now)

    def accepted(self, has_module: bool, module_size: int, now: float) -> Action:
        self._enter("accepted")
        attempt = self.attempts[-1]
        candidate = self._current
        assert candidate is not None
        if self.cancelled:  # cancelled while the offer was out: release the lease
            self._close(now, AttemptResult.CANCELLED, "cancelled before the job was sent")
            return self._fail(now, "CANCELLED", "cancelled before any node ran the job", candidate)
        self.state = State.RUNNING
        attempt.may_have_run = True
        attempt.module_bytes_sent = 0 if has_module else module_size
        self._emit(EventKind.ACCEPTED, now, attempt=attempt)
        self._emit(
            EventKind.TRANSFERRING,
            now,
            attempt=attempt,
            module_bytes=attempt.module_bytes_sent,
            detail="the worker holds the module; sending the input"
            if has_module
            else f"sending the module ({module_size} bytes) and the input",
        )
        return SendRun(
            attempt=attempt.number,
            candidate=candidate,
            send_module=not has_module,
            timeout_s=max(0.0, self._left(now)),
        )

    def worker_progress(self, kind: EventKind, now: float) -> None:
        """QUEUED or RUNNING, reported once each per attempt."""
        self._enter("worker_progress")
        if kind not in (EventKind.QUEUED, EventKind.RUNNING) or kind in self._progress:
            return
        self._progress.add(kind)
        self._emit(kind, now, attempt=self.attempts[-1])

    def attempt_failed(
        self, result: AttemptResult, detail: str, now: float, *, may_have_run: bool = False
    ) -> Action:
        """`may_have_run`: the job may have reached the worker even before an
        acceptance arrived (a JobRun pipelined behind the offer)."""
        self._enter("attempt_failed")
        attempt = self._close(now, result, detail)
        attempt.may_have_run = attempt.may_have_run or may_have_run
        self._emit(
            EventKind.ATTEMPT_FAILED,
            now,
            attempt=attempt,
            detail=f"{result.name.lower().replace('_', ' ')}: {detail}",
            may_have_run=attempt.may_have_run,
        )
        if self.cancelled:
            return self._fail(now, "CANCELLED", "cancelled; no result")
        return self._next(now)

    def completed(self, outcome: Outcome, exit_code: int, now: float) -> Action:
        """The result arrived and checked out (the adapter verified the receipt)."""
        self._enter("completed")
        attempt = self._close(now, AttemptResult.COMPLETED, outcome.label)
        attempt.may_have_run = False  # it did run, and this is its result
        self.state = State.DONE
        self._emit(
            EventKind.FINISHED,
            now,
            attempt=attempt,
            outcome=outcome,
            exit_code=exit_code,
            detail=f"{outcome.label} in {attempt.duration_s * 1000:.1f} ms",
        )
        return Finish(attempt=attempt.number)

    def local_refused(self, reason: str, message: str, now: float) -> Action:
        """This node refused to run the job (its admission control): that is the answer."""
        self._enter("local_refused")
        self._close(now, AttemptResult.ERROR, message).may_have_run = False  # it never ran
        return self._fail(now, reason, message)

    def cancel(self, now: float) -> Action:
        self._enter("cancel")
        if self.cancelled:
            return Wait()
        self.cancelled = True
        self._emit(EventKind.CANCEL_REQUESTED, now)
        if self.state is State.RUNNING:
            assert self._current is not None
            return CancelRemote(candidate=self._current)
        if self.state is State.LOCAL:
            return CancelLocal()
        if self.state is State.NEW:
            return self._fail(now, "CANCELLED", "cancelled before any node ran the job")
        return AbortPending()

    def aborted(self, now: float) -> Action:
        """The search or offer in flight was abandoned after `cancel`."""
        self._enter("aborted")
        if self.state is State.OFFERING:
            self._close(now, AttemptResult.CANCELLED, "cancelled while the offer was out")
            # The worker may have granted a lease: tell it.
            return self._fail(
                now, "CANCELLED", "cancelled before any node ran the job", self._current
            )
        return self._fail(now, "CANCELLED", "cancelled before any node ran the job")

    # -- outputs -------------------------------------------------------------------------

    def pop_events(self) -> list[JobEvent]:
        events, self._events = self._events, []
        return events

    @property
    def current(self) -> Candidate | None:
        return self._current

    def failure_summary(self) -> str:
        """Every attempt and why it did not produce the result, for an error message."""
        parts = []
        for a in self.attempts:
            if a.result is AttemptResult.COMPLETED:
                continue
            who = "this node" if a.local else f"{a.node_id[:16]}…"
            what = a.result.name.lower().replace("_", " ") if a.result else "unfinished"
            if a.decline_reason is not None:
                what = f"declined ({a.decline_reason.name})"
            extra = " (it may have run the job)" if a.may_have_run else ""
            parts.append(f"{who} {what}: {a.detail}{extra}")
        return "; ".join(parts)

    # -- internals -----------------------------------------------------------------------

    def _enter(self, name: str) -> None:
        if self.state not in _ACCEPTS[name]:
            raise SessionError(f"{name} in state {self.state.value}")

    def _left(self, now: float) -> float:
        return self.deadline - now

    def _next(self, now: float) -> Action:
        self._current = None
        self._progress.clear()
        if self.cancelled:
            return self._fail(now, "CANCELLED", "cancelled before any node ran the job")
        if self._left(now) <= 0:
            summary = self.failure_summary()
            return self._fail(
                now,
                "DEADLINE_EXCEEDED",
                "the deadline passed before a result came back"
                + (f": {summary}" if summary else ""),
            )
        remote_tries = sum(1 for a in self.attempts if not a.local)
        if self._queue and remote_tries < self.settings.max_attempts:
            candidate = self._queue.pop(0)
            self._current = candidate
            attempt = Attempt(number=len(self.attempts) + 1, node_id=candidate.node_id, started=now)
            self.attempts.append(attempt)
            self.state = State.OFFERING
            self._emit(
                EventKind.OFFERED, now, attempt=attempt, detail=f"{candidate.host}:{candidate.port}"
            )
            return SendOffer(
                attempt=attempt.number,
                candidate=candidate,
                timeout_s=min(self.settings.offer_timeout_s, self._left(now)),
            )
        if self.placement.mode is PlacementMode.AUTO and self.settings.fallback_local:
            return self._local(now)
        return self._fail(now, "NO_WORKER", self._no_worker_message())

    def _no_worker_message(self) -> str:
        if self.placement.mode is PlacementMode.PEER:
            head = f"peer {self.placement.peer_node_id} did not run the job"
        else:
            head = "no worker ran the job"
        if self.attempts:
            return f"{head}: {self.failure_summary()}"
        return f"{head}: {self._search_detail or 'no capable worker found'}"

    def _local(self, now: float) -> Action:
        attempt = Attempt(
            number=len(self.attempts) + 1, node_id=self.own_node_id, started=now, local=True
        )
        attempt.may_have_run = True
        self.attempts.append(attempt)
        self.state = State.LOCAL
        self._emit(
            EventKind.ACCEPTED,
            now,
            attempt=attempt,
            detail="running on this node"
            + (" (no worker took it)" if self.placement.mode is PlacementMode.AUTO else ""),
        )
        return RunLocal(attempt=attempt.number, timeout_s=max(0.0, self._left(now)))

    def _close(self, now: float, result: AttemptResult, detail: str) -> Attempt:
        attempt = self.attempts[-1]
        attempt.result = result
        attempt.detail = detail
        attempt.finished = now
        return attempt

    def _fail(
        self, now: float, reason: str, message: str, release: Candidate | None = None
    ) -> Action:
        self.state = State.FAILED
        self._emit(EventKind.FAILED, now, error_reason=reason, detail=message)
        return Fail(error_reason=reason, message=message, release=release)

    def _emit(
        self,
        kind: EventKind,
        now: float,
        *,
        attempt: Attempt | None = None,
        detail: str = "",
        decline_reason: DeclineReason | None = None,
        outcome: Outcome | None = None,
        exit_code: int = 0,
        may_have_run: bool = False,
        module_bytes: int = 0,
        error_reason: str = "",
        decline: SignedEnvelope | None = None,
    ) -> None:
        self._events.append(
            JobEvent(
                job_id=self.job_id,
                kind=kind,
                at_ns=self.created_wall_ns + int((now - self.created) * 1e9),
                attempt=attempt.number if attempt else 0,
                node_id=attempt.node_id if attempt else "",
                decline_reason=decline_reason,
                detail=detail,
                outcome=outcome,
                exit_code=exit_code,
                may_have_run=may_have_run,
                module_bytes=module_bytes,
                error_reason=error_reason,
                decline=decline,
            )
        )
