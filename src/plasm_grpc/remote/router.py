"""The requester: place a job, fail over, check the receipt, answer.

`JobRouter.submit` drives one `core.jobs.session.JobSession` per job: the
session decides (search, offer, run, fail over, fall back, finish or fail)
and this adapter carries each action out over the DHT and the overlay:

- **Search**: a DHT provider lookup for the job's capability class (cached
  for `worker_cache_s`), or the named peer's record; candidates are ranked by
  `core.jobs.placement.rank` (our jobs in flight there, round-trip time, free
  slots).
- **Offer**: dial (or reuse) the overlay connection and send a `JobOffer`; a
  decline must be signed by the worker the connection authenticated.
- **Run**: send the `JobRun` (the module only if the worker lacks it) and,
  while it is out, ask the worker for the job's status every
  `heartbeat_interval_s`: progress becomes QUEUED/RUNNING events, and
  `heartbeat_misses` unanswered checks in a row mean the worker is gone.
- **Check**: before anything is answered, the receipt must be signed by the
  worker the connection authenticated, name this node as requester and the
  job's id, and every hash in it must equal what was sent (module, input) and
  what came back (stdout, stderr). A worker whose result fails this is
  distrusted for `distrust_s`. The receipt is stored here too.

Each job runs in its own task: a client that goes away does not stop it
(its receipt is stored; `Cancel` stops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError
from plasm.v1 import job_pb2, receipt_pb2

from plasm_grpc import metrics, wire
from plasm_grpc.api.routing import PlacementError, RoutedJob
from plasm_grpc.api.verify import verify_receipt
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.address import split_host_port
from plasm_grpc.core.dht.records import (
    DEFAULT_WASI_VERSION,
    PeerRecord,
    RecordError,
    WorkerRequirements,
    requirement_class,
)
from plasm_grpc.core.errors import InvalidIdError, VerificationError
from plasm_grpc.core.jobs.admission import release_one
from plasm_grpc.core.jobs.events import DeclineReason, EventKind
from plasm_grpc.core.jobs.placement import Candidate, Placement, PlacementMode, rank
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
from plasm_grpc.jobs.hashing import (
    arg_env_bytes,
    job_input_sha256,
    module_sha256,
    off_loop_if_large,
)
from plasm_grpc.logs import EventLog
from plasm_grpc.net import (
    ConnectionClosedError,
    DhtClosedError,
    DhtService,
    OverlayConnection,
    OverlayEndpoint,
    OverlayError,
    RemoteCallError,
)
from plasm_grpc.net.relay import RelayService
from plasm_grpc.remote import messages
from plasm_grpc.remote.futures import discard_outcome
from plasm_grpc.remote.messages import OFFER_METHOD, RUN_METHOD, STATUS_METHOD
from plasm_grpc.sandbox.runner import CancelFlag

_MAX_DETAIL: Final = 300  # a peer's text in our events and errors
_WORKERS_LOOKED_UP: Final = 20
_ENDED_REMEMBERED: Final = 4096
_HOLDS_REMEMBERED: Final = 65536
_UNRUNNABLE: Final = frozenset(
    {Outcome.INVALID_MODULE, Outcome.UNKNOWN_IMPORT, Outcome.COMPILE_LIMIT}
)

_PROGRESS: Final = {
    job_pb2.WORKER_JOB_STATE_QUEUED: EventKind.QUEUED,
    job_pb2.WORKER_JOB_STATE_RUNNING: EventKind.RUNNING,
}


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
    request: JobRequest
    module_sha256: str
    input_sha256: str
    module: bytes | None  # None: not read (local runs need no copy)
    task: asyncio.Task[RoutedJob] | None = None  # the job's own task (`_drive`)
    abortable: bool = False  # awaiting a search or an offer that `cancel` may abandon
    aborting: bool = False
    lease_id: str = ""
    counted: str = ""  # the worker whose in-flight count this job holds
    result: RoutedJob | None = None
    # A JobRun sent right behind the offer (the worker was known to hold the module).
    pipelined: asyncio.Future[bytes] | None = None
    # For a local run: settable before the executor has admitted the job.
    flag: CancelFlag = field(default_factory=CancelFlag)

    def drop_pipelined(self) -> None:
        """Abandon a pipelined JobRun that will not be used (it is refused or cancelled)."""
        if self.pipelined is not None:
            if not self.pipelined.done():
                self.pipelined.cancel()
            self.pipelined = None


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
        self._in_flight: dict[str, int] = {}
        self._distrusted: dict[str, float] = {}
        self._workers: dict[str, tuple[float, list[PeerRecord]]] = {}
        # (worker, module sha256) pairs the worker was seen to hold, newest last.
        self._holds: OrderedDict[tuple[str, str], None] = OrderedDict()
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
            module_sha, module = await self._module(job, placement)
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
        entry = _Job(
            session=session,
            request=job,
            module_sha256=module_sha,
            input_sha256=""
            if placement.mode is PlacementMode.LOCAL
            else await job_input_sha256(job.args, job.env, job.stdin),
            module=module,
        )
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
            self._spawn(self._cancel_remote(action.candidate, job_id))
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
                        self._spawn(self._cancel_remote(action.release, session.job_id))
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
            entry.drop_pipelined()
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

    # -- the module ------------------------------------------------------------------------

    async def _module(self, job: JobRequest, placement: Placement) -> tuple[str, bytes | None]:
        """The module's hash, and its bytes when they may have to be sent."""
        if job.module:
            if len(job.module) > self.executor.input_limits.max_module_bytes:
                return job.module_sha256, job.module  # the executor refuses it, with sizes
            sha = await module_sha256(job.module)
            if job.module_sha256 and job.module_sha256 != sha:
                raise PlacementError(
                    "MODULE_HASH_MISMATCH",
                    f"module bytes hash to {sha}, manifest says {job.module_sha256}",
                )
            return sha, job.module
        if not job.module_sha256:
            raise PlacementError(
                "INVALID_REQUEST", "send the module bytes or manifest.module_sha256"
            )
        if placement.mode is PlacementMode.LOCAL:
            return job.module_sha256, None
        module = await asyncio.to_thread(self.executor.sandbox.cache.read_module, job.module_sha256)
        if module is None:
            raise PlacementError(
                "MODULE_NOT_FOUND",
                f"this node does not hold module {job.module_sha256}; send its bytes",
            )
        return job.module_sha256, module

    # -- search ----------------------------------------------------------------------------

    async def _search(self, entry: _Job, action: Search) -> Action:
        session = entry.session
        placement = session.placement
        if self.dht is None or self.overlay is None:
            return session.search_failed("this node has no overlay, so no peers", self._clock())
        try:
            if placement.mode is PlacementMode.PEER:
                candidates, detail = await self._find_peer(placement.peer_node_id, action.timeout_s)
            else:
                candidates, detail = await self._find_workers(entry, action.timeout_s)
        except TimeoutError:
            return session.search_failed(
                f"the DHT lookup did not finish in {action.timeout_s:.1f} s", self._clock()
            )
        except DhtClosedError:
            return session.search_failed("the node is shutting down", self._clock())
        except RecordError as err:
            return session.search_failed(str(err), self._clock())
        return session.candidates_found(self._rank(candidates), self._clock(), detail)

    async def _find_peer(self, node_id: str, timeout: float) -> tuple[list[Candidate], str]:
        assert self.overlay is not None
        assert self.dht is not None
        if self._is_distrusted(node_id):
            left = self._distrusted[node_id] - self._clock()
            return [], (
                f"peer {node_id} is not trusted for another {left:.0f} s: a result it "
                "returned did not check out"
            )
        connection = self.overlay.connection_to(node_id)
        if connection is not None:
            host, port = str(connection.address[0]), int(connection.address[1])
            return [
                Candidate(node_id=node_id, host=host, port=port, free_slots=1, total_slots=1)
            ], ""
        found = await self.dht.find_peer(node_id, timeout=timeout)
        if found.record is None:
            return [], f"peer {node_id} was not found in the DHT ({found.rpcs} RPCs)"
        candidate = self._candidate(found.record)
        if candidate is None:
            return [], f"peer {node_id} advertises no address this node can dial"
        return [candidate], ""

    async def _find_workers(self, entry: _Job, timeout: float) -> tuple[list[Candidate], str]:
        assert self.dht is not None
        placement = entry.session.placement
        requirements = WorkerRequirements(
            wasi_version=placement.wasi_version or DEFAULT_WASI_VERSION,
            min_memory_bytes=max(placement.min_memory_bytes, entry.request.limits.max_memory_bytes),
            arch=placement.arch,
        )
        name = requirement_class(requirements)
        cache_key = f"{name};arch={placement.arch}"
        now = self._clock()
        cached = self._workers.get(cache_key)
        if cached is not None and cached[0] > now:
            records = cached[1]
        else:
            records = list(
                await self.dht.find_workers(requirements, limit=_WORKERS_LOOKED_UP, timeout=timeout)
            )
            ttl = self.settings.worker_cache_s if records else self.settings.empty_cache_s
            self._workers[cache_key] = (self._clock() + ttl, records)
        candidates = []
        for record in records:
            if record.node_id == self.key.node_id or self._is_distrusted(record.node_id):
                continue
            candidate = self._candidate(record)
            if candidate is not None:
                candidates.append(candidate)
        return candidates, f"no worker other than this node provides {name}"

    def _candidate(self, record: PeerRecord) -> Candidate | None:
        caps = record.capabilities
        candidate = functools.partial(
            Candidate,
            node_id=record.node_id,
            free_slots=caps.free_job_slots,
            total_slots=caps.total_job_slots,
        )
        for address in record.content.addresses:
            with contextlib.suppress(ValueError):
                host, port = split_host_port(address)
                return candidate(host=host, port=port)
        if record.content.relays and self.relay is not None:
            # Behind a NAT: its relays, not a contact from before it knew that.
            return candidate(host="", port=0, relays=record.content.relays)
        assert self.dht is not None
        for peer in self.dht.known_peers():  # a node bound to a wildcard names no address
            if peer.contact.node_id == record.node_id:
                return candidate(host=peer.contact.host, port=peer.contact.port)
        return None

    def _relay_allowance(self, candidate: Candidate) -> float:
        """Extra time to dial a worker with no connection yet through a relay:
        the relay, the circuit, the end-to-end handshake, then the hole punch."""
        if candidate.host or self.relay is None or self.overlay is None:
            return 0.0
        if self.overlay.connection_to(candidate.node_id) is not None:
            return 0.0
        return self.relay.settings.punch_timeout + self.relay.settings.request_timeout

    def _rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        rtt: dict[str, float] = {}
        if self.overlay is not None:
            rtt = {p.node_id: p.rtt for p in self.overlay.connections() if p.rtt is not None}
        return rank(candidates, in_flight=self._in_flight, rtt=rtt, salt=os.urandom(8))

    def _is_distrusted(self, node_id: str) -> bool:
        until = self._distrusted.get(node_id)
        if until is None:
            return False
        if until < self._clock():
            del self._distrusted[node_id]
            return False
        return True

    def _forget_worker(self, node_id: str) -> None:
        """Drop a worker that failed from the cached lookups (found again if it recovers)."""
        for key, (expires, records) in list(self._workers.items()):
            kept = [r for r in records if r.node_id != node_id]
            if len(kept) != len(records):
                self._workers[key] = (expires, kept)

    # -- offer -----------------------------------------------------------------------------

    async def _offer(self, entry: _Job, action: SendOffer) -> Action:
        session = entry.session
        c = action.candidate
        entry.lease_id = ""  # a pipelined JobRun must not carry the last worker's lease
        self._count(entry, c.node_id)
        assert self.overlay is not None
        try:
            dial_s = action.timeout_s + self._relay_allowance(c)
            async with asyncio.timeout(min(dial_s, max(0.001, session.deadline - self._clock()))):
                if c.host or self.relay is None:
                    connection = await self.overlay.connect(c.host, c.port, c.node_id)
                else:  # through a relay; direct after a hole punch when the NATs allow
                    connection = await self.relay.connect(c.node_id, c.relays)
        except (TimeoutError, OverlayError, OSError) as err:
            self._forget_worker(c.node_id)
            where = f"{c.host}:{c.port}" if c.host else "it through its relays"
            return session.attempt_failed(
                AttemptResult.UNREACHABLE,
                f"cannot connect to {where}: {_describe(err)}",
                self._clock(),
            )
        offer = self._offer_pb(entry)
        left = max(0.001, session.deadline - self._clock())
        offered = asyncio.ensure_future(
            connection.request(OFFER_METHOD, offer.SerializeToString(), min(action.timeout_s, left))
        )
        if (c.node_id, entry.module_sha256) in self._holds:
            # One round trip instead of two: the JobRun goes right behind the
            # offer (the worker handles them in order; see JobRun.lease_id).
            entry.pipelined = asyncio.ensure_future(
                connection.request(RUN_METHOD, self._run_pb(entry, send_module=False), left)
            )
            entry.pipelined.add_done_callback(discard_outcome)
        sent = entry.pipelined is not None
        try:
            reply = await offered
        except TimeoutError:
            entry.drop_pipelined()
            # A late acceptance would hold a place there until its lease expires.
            self._spawn(self._cancel_remote(c, session.job_id))
            return session.attempt_failed(
                AttemptResult.TIMEOUT,
                "no answer to the offer in time",
                self._clock(),
                may_have_run=sent,
            )
        except ConnectionClosedError as err:
            entry.drop_pipelined()
            return session.attempt_failed(
                AttemptResult.DISCONNECTED, _clip(err.reason), self._clock(), may_have_run=sent
            )
        except RemoteCallError as err:
            entry.drop_pipelined()
            return session.attempt_failed(
                AttemptResult.ERROR, f"the worker refused: {_clip(str(err))}", self._clock()
            )
        except BaseException:  # cancelled (the job was): nothing may be left running
            entry.drop_pipelined()
            offered.cancel()
            raise
        return self._answered(entry, c, reply)

    def _answered(self, entry: _Job, c: Candidate, reply: bytes) -> Action:
        session = entry.session
        response = job_pb2.JobResponse()
        try:
            response.ParseFromString(reply)
        except DecodeError:
            entry.drop_pipelined()
            return session.attempt_failed(
                AttemptResult.ERROR, "malformed answer to the offer", self._clock()
            )
        if response.HasField("accept"):
            accept = response.accept
            if accept.job_id != session.job_id or not accept.lease_id:
                entry.drop_pipelined()
                return session.attempt_failed(
                    AttemptResult.ERROR, "the acceptance names another job", self._clock()
                )
            entry.lease_id = accept.lease_id[: messages.MAX_TEXT]
            key = (c.node_id, entry.module_sha256)
            if accept.has_module:
                self._remember_hold(key)
            else:
                self._holds.pop(key, None)
            size = len(entry.module) if entry.module is not None else 0
            return session.accepted(accept.has_module, size, self._clock())
        entry.drop_pipelined()
        if response.HasField("decline"):
            return self._declined(entry, c.node_id, response)
        return session.attempt_failed(
            AttemptResult.ERROR, "an empty answer to the offer", self._clock()
        )

    def _remember_hold(self, key: tuple[str, str]) -> None:
        self._holds[key] = None
        self._holds.move_to_end(key)
        while len(self._holds) > _HOLDS_REMEMBERED:
            self._holds.popitem(last=False)

    def _run_pb(self, entry: _Job, *, send_module: bool) -> bytes:
        job = entry.request
        run = job_pb2.JobRun(
            job_id=entry.session.job_id,
            lease_id=entry.lease_id,
            module=entry.module if send_module and entry.module else b"",
            args=job.args,
            stdin=job.stdin,
        )
        for name, value in job.env:
            run.env.add(name=name, value=value)
        return run.SerializeToString()

    def _offer_pb(self, entry: _Job) -> job_pb2.JobOffer:
        session, job = entry.session, entry.request
        placement = session.placement
        input_size = len(job.stdin) + arg_env_bytes(job.args, job.env)
        offer = job_pb2.JobOffer(
            job_id=session.job_id,
            limits=wire.limits_to_pb(job.limits),
            module_sha256=entry.module_sha256,
            module_size=len(entry.module) if entry.module is not None else 0,
            input_size=input_size,
            requester_node_id=self.key.node_id,
            input_sha256=entry.input_sha256,
        )
        offer.requirements.arch = placement.arch
        offer.requirements.wasi_version = placement.wasi_version
        offer.requirements.min_memory_bytes = placement.min_memory_bytes
        offer.deadline.FromNanoseconds(
            time.time_ns() + int(max(0.0, session.deadline - self._clock()) * 1e9)
        )
        return offer

    def _declined(self, entry: _Job, worker: str, response: job_pb2.JobResponse) -> Action:
        session = entry.session
        envelope = wire.envelope_from_pb(response.decline)
        try:
            envelopes.verify(envelope, envelopes.DECLINE_DOMAIN)
            signer = envelope.signer_node_id
        except (VerificationError, InvalidIdError) as err:
            return session.attempt_failed(
                AttemptResult.ERROR, f"a decline with a bad signature ({err})", self._clock()
            )
        body = job_pb2.JobDecline()
        try:
            body.ParseFromString(envelope.payload)
            reason = DeclineReason(body.reason)
        except (DecodeError, ValueError):
            return session.attempt_failed(AttemptResult.ERROR, "a malformed decline", self._clock())
        if signer != worker or body.job_id != session.job_id or body.worker_node_id != worker:
            return session.attempt_failed(
                AttemptResult.ERROR,
                "a decline not signed by the worker, or for another job",
                self._clock(),
            )
        return session.declined(reason, _clip(body.detail), self._clock(), envelope)

    # -- run -------------------------------------------------------------------------------

    async def _run_remote(self, entry: _Job, action: SendRun) -> Action:
        session = entry.session
        c = action.candidate
        connection = self.overlay.connection_to(c.node_id) if self.overlay else None
        if connection is None:
            return session.attempt_failed(
                AttemptResult.DISCONNECTED, "the connection closed after the offer", self._clock()
            )
        if entry.pipelined is not None:
            call = entry.pipelined
            entry.pipelined = None
            if action.send_module:  # the worker lost the module: the pipelined run fails
                call.cancel()
                return session.attempt_failed(
                    AttemptResult.ERROR, "the worker no longer holds the module", self._clock()
                )
        else:
            call = asyncio.ensure_future(
                connection.request(
                    RUN_METHOD,
                    self._run_pb(entry, send_module=action.send_module),
                    max(action.timeout_s, 0.001),
                )
            )
        try:
            gone = await self._watch_worker(entry, connection, call)
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
        if gone is not None:
            self._forget_worker(c.node_id)
            return session.attempt_failed(AttemptResult.DISCONNECTED, gone, self._clock())
        try:
            reply = call.result()
        except TimeoutError:
            return session.attempt_failed(
                AttemptResult.TIMEOUT, "no result within the deadline", self._clock()
            )
        except ConnectionClosedError as err:
            self._forget_worker(c.node_id)
            return session.attempt_failed(
                AttemptResult.DISCONNECTED, _clip(err.reason), self._clock()
            )
        except RemoteCallError as err:
            return session.attempt_failed(
                AttemptResult.ERROR, f"the worker failed the job: {_clip(str(err))}", self._clock()
            )
        result = job_pb2.JobResult()
        try:
            result.ParseFromString(reply)
        except DecodeError:
            problem: str | None = "the result does not decode"
        else:
            problem = await self._check_result(entry, c.node_id, result)
        if problem is not None:
            self._distrust(c.node_id, session.job_id, problem)
            return session.attempt_failed(AttemptResult.BAD_RECEIPT, problem, self._clock())
        try:
            outcome = Outcome(result.outcome)
        except ValueError:
            self._distrust(c.node_id, session.job_id, "an unknown outcome")
            return session.attempt_failed(
                AttemptResult.BAD_RECEIPT, "an unknown outcome", self._clock()
            )
        self._remember_hold((c.node_id, entry.module_sha256))
        await self._store(session.job_id, result)
        cache = self.executor.sandbox.cache
        if (
            entry.module is not None
            and outcome not in _UNRUNNABLE
            and not cache.has_module(entry.module_sha256)
        ):
            # It ran: keep it so the client may resubmit by hash (as for a local
            # job). A cache, so off the answer's path.
            self._spawn(asyncio.to_thread(cache.put_module, entry.module_sha256, entry.module))
        entry.result = RoutedJob(
            result=result, executor_node_id=c.node_id, attempts=session.attempts
        )
        return session.completed(outcome, result.exit_code, self._clock())

    async def _watch_worker(
        self, entry: _Job, connection: OverlayConnection, call: asyncio.Future[bytes]
    ) -> str | None:
        """Wait for `call`, asking the worker for progress meanwhile.

        Returns why the worker is presumed gone, or None once `call` is done.
        """
        interval = self.settings.heartbeat_interval_s
        query = job_pb2.JobStatusQuery(job_id=entry.session.job_id).SerializeToString()
        misses = 0
        while True:
            done, _ = await asyncio.wait({call}, timeout=interval)
            if done:
                return None
            try:
                reply = await connection.request(STATUS_METHOD, query, 2 * interval)
            except TimeoutError:
                misses += 1
            except ConnectionClosedError as err:
                # The run may not have seen the close yet; it cannot finish now.
                return f"the connection closed: {_clip(err.reason)}"
            except RemoteCallError:
                misses += 1
            else:
                misses = 0
                status = job_pb2.JobStatus()
                with contextlib.suppress(DecodeError):
                    status.ParseFromString(reply)
                kind = _PROGRESS.get(status.state)
                if kind is not None and not call.done():
                    entry.session.worker_progress(kind, self._clock())
                    self._publish(entry.session)
            if misses >= self.settings.heartbeat_misses:
                return f"the worker stopped answering ({misses} status checks in a row)"

    async def _check_result(
        self, entry: _Job, worker: str, result: job_pb2.JobResult
    ) -> str | None:
        """Why the result cannot be trusted, or None when every check passes."""
        session, job = entry.session, entry.request
        if result.job_id != session.job_id:
            return f"the result is for job {result.job_id[:40]!r}"
        # Up to 40 MiB of output to hash: off the event loop when large.
        checked = await off_loop_if_large(
            lambda: verify_receipt(
                wire.envelope_from_pb(result.receipt),
                expected_executor_node_id=worker,
                stdout=result.stdout,
                stderr=result.stderr,
            ),
            len(result.stdout) + len(result.stderr),
        )
        failed = [c for c in checked.checks if not c.passed]
        if failed:
            return f"receipt check {failed[0].name} failed: {_clip(failed[0].detail)}"
        body = checked.body
        assert body is not None
        expected = {
            "job_id": session.job_id,
            "requester_node_id": self.key.node_id,
            "module_sha256": entry.module_sha256,
            "input_sha256": entry.input_sha256,
        }
        for name, value in expected.items():
            if getattr(body, name) != value:
                return f"the receipt's {name} is not the job's"
        if body.outcome != result.outcome or body.exit_code != result.exit_code:
            return "the result's outcome or exit code is not the receipt's"
        requested = wire.limits_to_pb(job.limits)
        for f in requested.DESCRIPTOR.fields:
            want = getattr(requested, f.name)
            if want and getattr(body.limits, f.name) != want:
                return f"the receipt's limit {f.name} is not the one requested"
        return None

    def _distrust(self, worker: str, job_id: str, problem: str) -> None:
        self._distrusted[worker] = self._clock() + self.settings.distrust_s
        self._forget_worker(worker)
        self.log.warning(
            "worker_distrusted",
            worker=worker,
            job_id=job_id,
            problem=problem,
            for_s=self.settings.distrust_s,
        )

    async def _store(self, job_id: str, result: job_pb2.JobResult) -> None:
        finished_ns = time.time_ns()
        stored = self.executor.store.add(job_id, result.receipt.SerializeToString(), finished_ns)
        try:
            await asyncio.wrap_future(stored)
        except Exception as err:  # noqa: BLE001 - the result stands; the log says why
            self.log.warning("receipt_not_stored", job_id=job_id, error=repr(err))

    async def _cancel_remote(self, candidate: Candidate, job_id: str) -> None:
        connection = self.overlay.connection_to(candidate.node_id) if self.overlay else None
        if connection is None:
            return
        with contextlib.suppress(OverlayError, TimeoutError):
            await connection.request(
                messages.CANCEL_METHOD,
                job_pb2.JobCancel(job_id=job_id).SerializeToString(),
                5.0,
            )

    # -- local -----------------------------------------------------------------------------

    async def _run_local(self, entry: _Job) -> Action:
        session = entry.session
        mismatch = self._local_mismatch(session.placement)
        if mismatch is not None:
            return session.local_refused("PLACEMENT_UNAVAILABLE", mismatch, self._clock())
        try:
            done = await self.executor.submit(
                entry.request, job_id=session.job_id, cancel=entry.flag
            )
        except AdmissionError as err:
            return session.local_refused(err.reason, str(err), self._clock())
        ex = done.execution
        entry.result = RoutedJob(
            result=job_pb2.JobResult(
                job_id=done.job_id,
                outcome=receipt_pb2.Outcome.ValueType(int(ex.outcome)),
                exit_code=ex.exit_code,
                trap_code=ex.trap_code,
                stdout=ex.stdout,
                stderr=ex.stderr,
                receipt=wire.envelope_to_pb(done.envelope),
                detail=ex.detail,
            ),
            executor_node_id=self.key.node_id,
            attempts=session.attempts,
        )
        return session.completed(ex.outcome, ex.exit_code, self._clock())

    def _local_mismatch(self, placement: Placement) -> str | None:
        """Why this node cannot meet the job's requirements, if it cannot."""
        runtime = self.executor.sandbox.engine.runtime
        if placement.arch and placement.arch != platform.machine():
            return f"job requires arch {placement.arch!r}; this node is {platform.machine()!r}"
        if placement.wasi_version and placement.wasi_version != runtime.wasi_version:
            return (
                f"job requires WASI {placement.wasi_version!r}; this node runs "
                f"{runtime.wasi_version!r}"
            )
        max_mem = self.executor.max_limits.max_memory_bytes
        if placement.min_memory_bytes > max_mem:
            return (
                f"job requires {placement.min_memory_bytes} bytes of memory; this node "
                f"offers at most {max_mem}"
            )
        return None

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, entry: _Job, node_id: str) -> None:
        self._uncount(entry)
        entry.counted = node_id
        self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1

    def _uncount(self, entry: _Job) -> None:
        if not entry.counted:
            return
        release_one(self._in_flight, entry.counted)
        entry.counted = ""


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return _clip(str(err) or type(err).__name__)
