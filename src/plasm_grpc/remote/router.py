"""The requester: place a job, fail over, check the receipt, answer.

`JobRouter.submit` drives one `core.jobs.session.JobSession` per job: the
session decides (search, offer, run, fail over, fall back, finish or fail)
and this adapter carries each action out with the pieces beside it:

- **Search**: `placement.WorkerFinder` finds and ranks the candidates (the
  named peer, or the DHT providers of the job's capability class).
- **Offer and run**: one `attempts.WorkerAttempt` per attempt dials the worker,
  offers the job, sends the run and checks on the worker while it is out.
- **Check**: `verification` checks the worker's decline or its result and
  receipt against the `outbound.OutboundJob` that was sent, before anything is
  answered. A worker whose result fails this is distrusted for `distrust_s`;
  one that vanished is forgotten from the cached lookups.
- **Answer**: the receipt is stored here too, the job's events published, and
  the module kept in the cache once it ran so the client may resubmit by hash.

Each job runs in its own task: a client that goes away does not stop it
(its receipt is stored; `Cancel` stops it).
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from plasm.v1 import job_pb2

from plasm_grpc import metrics
from plasm_grpc.api.routing import PlacementError, RoutedJob
from plasm_grpc.core.jobs.events import EventKind
from plasm_grpc.core.jobs.placement import Placement, PlacementMode, unmet_requirement
from plasm_grpc.core.jobs.session import (
    AbortPending,
    Action,
    AttemptResult,
    CancelLocal,
    CancelRemote,
    Fail,
    Finish,
    JobSession,
    RunLocal,
    Search,
    SendOffer,
    SendRun,
    SessionSettings,
    State,
)
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.jobs.executor import AdmissionError, JobExecutor, JobRequest
from plasm_grpc.jobs.hashing import job_input_sha256
from plasm_grpc.logs import EventLog
from plasm_grpc.net import DhtService, OverlayEndpoint
from plasm_grpc.net.relay import RelayService
from plasm_grpc.remote.attempts import (
    Accepted,
    Failed,
    ModuleHolds,
    WorkerAttempt,
    cancel_on_worker,
)
from plasm_grpc.remote.messages import result_to_pb
from plasm_grpc.remote.outbound import OutboundJob, module_to_send, with_module
from plasm_grpc.remote.placement import Links, SearchError, WorkerFinder
from plasm_grpc.remote.verification import CheckedDecline
from plasm_grpc.sandbox.runner import CancelFlag

_ENDED_REMEMBERED: Final = 4096
_UNRUNNABLE: Final = frozenset(
    {Outcome.INVALID_MODULE, Outcome.UNKNOWN_IMPORT, Outcome.COMPILE_LIMIT}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    session: SessionSettings = field(default_factory=SessionSettings)
    heartbeat_interval_s: float = 0.5
    heartbeat_misses: int = 3
    worker_cache_s: float = 30.0
    empty_cache_s: float = 2.0  # "no workers" is remembered briefly
    distrust_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0 or self.heartbeat_misses < 1:
            raise ValueError("heartbeat_interval_s > 0 and heartbeat_misses >= 1")


@dataclass(slots=True)
class _Job:
    """One job in flight on this node."""

    session: JobSession
    job: OutboundJob
    task: asyncio.Task[RoutedJob] | None = None  # the job's own task (`_drive`)
    abortable: bool = False  # awaiting a search or an offer that `cancel` may abandon
    aborting: bool = False
    counted: str = ""  # the worker whose in-flight count this job holds
    attempt: WorkerAttempt | None = None  # the latest attempt on a worker
    result: RoutedJob | None = None
    # For a local run: settable before the executor has admitted the job.
    flag: CancelFlag = field(default_factory=CancelFlag)

    def drop_attempt(self) -> None:
        """Abandon what the latest attempt left in flight (a pipelined JobRun)."""
        if self.attempt is not None:
            self.attempt.drop_pipelined()


class JobRouter:
    """Places jobs submitted to this node (the api's `JobRouter`)."""

    def __init__(
        self,
        *,
        key: NodeKey,
        executor: JobExecutor,
        events: JobEventBus | None,
        overlay: OverlayEndpoint | None,
        dht: DhtService | None,
        settings: RouterSettings,
        log: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.executor = executor
        self.events = events
        self.overlay = overlay
        self.dht = dht
        self.settings = settings
        self.log = log
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._claimed: set[str] = set()  # job ids whose Submit is still being checked
        self._tasks: set[asyncio.Task[RoutedJob]] = set()
        self._ended: dict[str, None] = {}  # recently ended job ids, oldest first
        self._finder = WorkerFinder(own_node_id=key.node_id, clock=clock, log=log)
        self._holds = ModuleHolds()
        self._draining = False
        # Reaches workers that advertise relays instead of an address.
        self.relay: RelayService | None = None
        self._background: set[asyncio.Future[None]] = set()
        # Whether a peer's job holds this id on this node's worker (the daemon
        # wires it): jobs of both kinds share one receipt store, so one id space.
        self.job_id_taken: Callable[[str], bool] = lambda _: False

    # -- the api's JobRouter ---------------------------------------------------------------

    async def submit(
        self, job: JobRequest, *, job_id: str, placement: Placement, timeout_s: float
    ) -> RoutedJob:
        if self._draining:
            raise PlacementError("SHUTTING_DOWN", "node is shutting down; not accepting jobs")
        if (
            self.has_job(job_id)
            or self.job_id_taken(job_id)
            or self.executor.state(job_id) is not None
            or self.executor.store.get(job_id)
        ):
            raise PlacementError("INVALID_REQUEST", f"job id {job_id} is already used on this node")
        self._claimed.add(job_id)  # before the first await: a concurrent duplicate is refused
        try:
            module_sha, module = await module_to_send(
                job,
                placement,
                max_module_bytes=self.executor.input_limits.max_module_bytes,
                read_module=self.executor.sandbox.cache.read_module,
                holds_module=self.executor.sandbox.cache.holds_raw,
            )
        finally:
            self._claimed.discard(job_id)
        now = self._clock()
        session = JobSession(
            job_id=job_id,
            own_node_id=self.key.node_id,
            placement=placement,
            settings=self.settings.session,
            deadline=now + timeout_s,
            created=now,
            created_wall_ns=time.time_ns(),
        )
        outbound = OutboundJob(
            job_id=job_id,
            requester_node_id=self.key.node_id,
            request=job,
            module_sha256=module_sha,
            module=module,
            input_sha256=""
            if placement.mode is PlacementMode.LOCAL
            else await job_input_sha256(job.args, job.env, job.stdin),
            placement=placement,
            deadline=session.deadline,
        )
        entry = _Job(session=session, job=outbound)
        self._jobs[job_id] = entry
        task = asyncio.create_task(self._drive(entry))
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        # Shielded: the job goes on if the client goes away (Cancel stops it).
        return await asyncio.shield(task)

    def has_job(self, job_id: str) -> bool:
        """A job of this node's clients uses `job_id` (the worker must not take it)."""
        return job_id in self._jobs or job_id in self._claimed or job_id in self._ended

    def cancel(self, job_id: str) -> bool | None:
        entry = self._jobs.get(job_id)
        if entry is None:
            if job_id in self._ended or self.executor.store.get(job_id) is not None:
                return False
            return None
        session = entry.session
        if session.state in (State.DONE, State.FAILED):
            return False
        action = session.cancel(self._clock())
        self._publish(session)
        self.log.event("job_cancel_requested", job_id=job_id, state=session.state.value)
        if isinstance(action, CancelRemote):
            self._spawn(cancel_on_worker(self.overlay, action.candidate.node_id, job_id))
        elif isinstance(action, CancelLocal):
            entry.flag.cancel("cancelled by the client")
            self.executor.cancel(job_id, "cancelled by the client")
        elif isinstance(action, AbortPending) and entry.abortable and entry.task is not None:
            entry.aborting = True
            entry.task.cancel()  # turned into session.aborted() by _abortable
        return True

    async def drain(self, timeout: float) -> bool:
        """Refuse new jobs; wait for the ones in flight, then cancel those on peers.

        Jobs running here are the executor's to drain (the daemon drains both
        at once); this waits for them but does not cancel them.
        """
        self._draining = True
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if not pending:
            return True
        for job_id, entry in list(self._jobs.items()):
            if entry.session.state is not State.LOCAL:
                self.cancel(job_id)
        await asyncio.wait(set(self._tasks), timeout=10.0)
        return False

    # -- the pump --------------------------------------------------------------------------

    async def _drive(self, entry: _Job) -> RoutedJob:
        session = entry.session
        action = session.start(self._clock())
        try:
            while True:
                self._publish(session)
                if isinstance(action, Finish):
                    assert entry.result is not None
                    return entry.result
                if isinstance(action, Fail):
                    metrics.JOBS_FAILED.inc(action.error_reason)
                    if action.release is not None:  # it may hold a lease: free it now
                        self._spawn(
                            cancel_on_worker(self.overlay, action.release.node_id, session.job_id)
                        )
                    self.log.event(
                        "job_not_placed",
                        job_id=session.job_id,
                        reason=action.error_reason,
                        detail=action.message,
                        attempts=len(session.attempts),
                    )
                    raise PlacementError(action.error_reason, action.message, session.attempts)
                if isinstance(action, Search):
                    action = await self._abortable(entry, self._search(entry, action))
                elif isinstance(action, SendOffer):
                    action = await self._abortable(entry, self._offer(entry, action))
                elif isinstance(action, SendRun):
                    action = await self._run_remote(entry, action)
                elif isinstance(action, RunLocal):
                    action = await self._run_local(entry)
                else:  # Wait, CancelRemote, CancelLocal, AbortPending come from cancel()
                    raise AssertionError(f"unexpected action {action!r}")
        finally:
            entry.drop_attempt()
            self._uncount(entry)
            self._publish(session)
            for attempt in session.attempts:
                if not attempt.local and attempt.result is not None:
                    metrics.REMOTE_ATTEMPTS.inc(attempt.result.name.lower())
            if entry.result is not None:
                ran_here = entry.result.executor_node_id == self.key.node_id
                placed = "local" if ran_here else "remote"
                metrics.JOB_DURATION.observe(self._clock() - session.created, placed)
            self._jobs.pop(session.job_id, None)
            self._ended[session.job_id] = None
            while len(self._ended) > _ENDED_REMEMBERED:
                del self._ended[next(iter(self._ended))]

    async def _abortable(self, entry: _Job, work: Coroutine[Any, Any, Action]) -> Action:
        """Await a search or an offer that `cancel` may abandon.

        Abandoning cancels the job's own task while it waits here (no task per
        step: this is every job's path); the cancellation is taken back and the
        session told, so the job ends through the session like any other.
        """
        entry.abortable = True
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not entry.aborting or task is None:
                raise  # the node is stopping
            task.uncancel()
            entry.aborting = False
            return entry.session.aborted(self._clock())
        finally:
            entry.abortable = False

    def _task_done(self, task: asyncio.Task[RoutedJob]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            err = task.exception()
            if err is not None and not isinstance(err, PlacementError):
                self.log.error("job_failed", error=repr(err))

    def _publish(self, session: JobSession) -> None:
        events = session.pop_events()
        if self.events is not None:
            for event in events:
                self.events.publish(event)
        for event in events:
            if event.kind in (EventKind.DECLINED, EventKind.ATTEMPT_FAILED):
                self.log.event(
                    "job_attempt_failed",
                    job_id=event.job_id,
                    attempt=event.attempt,
                    worker=event.node_id,
                    decline_reason=event.decline_reason.name if event.decline_reason else "",
                    detail=event.detail,
                    may_have_run=event.may_have_run,
                )

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("job_background_failed", error=repr(task.exception()))

    # -- search ----------------------------------------------------------------------------

    async def _search(self, entry: _Job, action: Search) -> Action:
        session = entry.session
        if self.dht is None or self.overlay is None:
            return session.search_failed("this node has no overlay, so no peers", self._clock())
        try:
            candidates, detail = await self._finder.search(
                entry.job,
                Links(self.overlay, self.dht, self.relay),
                timeout_s=action.timeout_s,
                cache_s=self.settings.worker_cache_s,
                empty_cache_s=self.settings.empty_cache_s,
            )
        except SearchError as err:
            return session.search_failed(str(err), self._clock())
        return session.candidates_found(candidates, self._clock(), detail)

    # -- offer and run: one attempt on one worker --------------------------------------------

    async def _offer(self, entry: _Job, action: SendOffer) -> Action:
        session = entry.session
        self._count(entry, action.candidate.node_id)
        assert self.overlay is not None
        entry.drop_attempt()
        # A worker may need the module: read it now (automatic placement left it).
        entry.job = await with_module(entry.job, self.executor.sandbox.cache.read_module)
        attempt = WorkerAttempt(
            entry.job,
            action.candidate,
            overlay=self.overlay,
            relay=self.relay,
            holds=self._holds,
            clock=self._clock,
        )
        entry.attempt = attempt
        answer = await attempt.offer(action.timeout_s)
        if isinstance(answer, Accepted):
            return session.accepted(answer.has_module, entry.job.module_size, self._clock())
        if isinstance(answer, CheckedDecline):
            return session.declined(answer.reason, answer.detail, self._clock(), answer.envelope)
        return self._failed(entry, answer)

    async def _run_remote(self, entry: _Job, action: SendRun) -> Action:
        session = entry.session
        attempt = entry.attempt
        assert attempt is not None  # the session runs only what it offered
        assert attempt.candidate.node_id == action.candidate.node_id

        def progress(kind: EventKind) -> None:
            session.worker_progress(kind, self._clock())
            self._publish(session)

        ran = await attempt.run(
            send_module=action.send_module,
            timeout_s=action.timeout_s,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            heartbeat_misses=self.settings.heartbeat_misses,
            on_progress=progress,
        )
        if isinstance(ran, Failed):
            return self._failed(entry, ran)
        job, result = entry.job, ran.result
        await self._store(session.job_id, result)
        cache = self.executor.sandbox.cache
        if (
            job.module is not None
            and ran.outcome not in _UNRUNNABLE
            and not cache.has_module(job.module_sha256)
        ):
            # It ran: keep it so the client may resubmit by hash (as for a local
            # job). A cache, so off the answer's path.
            self._spawn(asyncio.to_thread(cache.put_module, job.module_sha256, job.module))
        entry.result = RoutedJob(
            result=result, executor_node_id=attempt.candidate.node_id, attempts=session.attempts
        )
        return session.completed(ran.outcome, result.exit_code, self._clock())

    def _failed(self, entry: _Job, failed: Failed) -> Action:
        """What a failed attempt costs the worker, then the session's next step."""
        session = entry.session
        assert entry.attempt is not None
        worker = entry.attempt.candidate.node_id
        if failed.result is AttemptResult.BAD_RECEIPT:
            self._finder.distrust(
                worker, session.job_id, failed.detail, for_s=self.settings.distrust_s
            )
        elif failed.gone:
            self._finder.forget(worker)
        if failed.release:
            self._spawn(cancel_on_worker(self.overlay, worker, session.job_id))
        return session.attempt_failed(
            failed.result, failed.detail, self._clock(), may_have_run=failed.may_have_run
        )

    async def _store(self, job_id: str, result: job_pb2.JobResult) -> None:
        finished_ns = time.time_ns()
        stored = self.executor.store.add(job_id, result.receipt.SerializeToString(), finished_ns)
        try:
            await asyncio.wrap_future(stored)
        except Exception as err:  # noqa: BLE001 - the result stands; the log says why
            self.log.warning("receipt_not_stored", job_id=job_id, error=repr(err))

    # -- local -----------------------------------------------------------------------------

    async def _run_local(self, entry: _Job) -> Action:
        session = entry.session
        mismatch = unmet_requirement(
            session.placement,
            arch=platform.machine(),
            wasi_version=self.executor.sandbox.engine.runtime.wasi_version,
            max_memory_bytes=self.executor.max_limits.max_memory_bytes,
        )
        if mismatch is not None:
            return session.local_refused("PLACEMENT_UNAVAILABLE", mismatch, self._clock())
        try:
            done = await self.executor.submit(
                entry.job.request, job_id=session.job_id, cancel=entry.flag
            )
        except AdmissionError as err:
            return session.local_refused(err.reason, str(err), self._clock())
        entry.result = RoutedJob(
            result=result_to_pb(done), executor_node_id=self.key.node_id, attempts=session.attempts
        )
        ex = done.execution
        return session.completed(ex.outcome, ex.exit_code, self._clock())

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, entry: _Job, node_id: str) -> None:
        self._uncount(entry)
        entry.counted = node_id
        self._finder.count(node_id)

    def _uncount(self, entry: _Job) -> None:
        if not entry.counted:
            return
        self._finder.uncount(entry.counted)
        entry.counted = ""
