"""Run jobs on this node: admission control, the sandbox in worker threads,
signed receipts, and durable storage before anything is acknowledged.

The sandbox, signing and hashing run in a thread pool sized to the job slots,
so the event loop keeps answering health checks and other RPCs while a large
module compiles or a long job runs.

For jobs that arrive from other nodes the executor also takes a caller-chosen
job id and requester, holds capacity reservations (a lease granted before the
job's bytes arrive) and cancels one admitted job (`cancel`), which then ends
as CANCELLED with a signed, stored receipt like any other outcome.

Every method except `state` and the counters must be called from the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from plasm_grpc import metrics
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.errors import InvalidIdError, PlasmError
from plasm_grpc.core.ids import check_hex64, check_job_id, new_job_id, sha256_hex
from plasm_grpc.core.input_hash import input_sha256
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits, resolve_limits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.receipt import Receipt
from plasm_grpc.jobs.hashing import arg_env_bytes, module_sha256
from plasm_grpc.logs import EventLog
from plasm_grpc.sandbox.cache import ModuleUnavailableError
from plasm_grpc.sandbox.runner import CancelFlag, Execution, JobSpec, Sandbox
from plasm_grpc.store.receipts import ReceiptStore

_UNRUNNABLE = frozenset({Outcome.INVALID_MODULE, Outcome.UNKNOWN_IMPORT, Outcome.COMPILE_LIMIT})
# Uploaded bytes are kept for submit-by-hash only once they compiled; a job
# cancelled before it started was never compiled.
_BYTES_NOT_KEPT = _UNRUNNABLE | {Outcome.CANCELLED}
DEFAULT_CANCEL_REASON = "cancelled by the requester"

JobState = Literal["queued", "running"]


class AdmissionError(PlasmError):
    """The job was refused before it started; `reason` names an ErrorReason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class InputLimits:
    max_module_bytes: int = 16 * 1024 * 1024
    max_stdin_bytes: int = 8 * 1024 * 1024
    max_args: int = 1024
    max_env: int = 1024
    max_arg_env_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    module_sha256: str  # "" when only bytes were sent
    module: bytes  # b"" when submitting by hash
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    stdin: bytes
    limits: ResourceLimits  # as requested; zeros are defaults


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDone:
    job_id: str
    execution: Execution
    receipt: Receipt
    envelope: SignedEnvelope


ReceiptEncoder = Callable[[Receipt], bytes]
EnvelopeEncoder = Callable[[SignedEnvelope], bytes]


@dataclass(slots=True, kw_only=True)
class _Admitted:
    """One admitted job, from admission until its receipt is committed."""

    flag: CancelFlag
    state: JobState = "queued"  # set to "running" by the worker thread, under _running_lock
    work: Callable[[], None] | None = None
    queued: Future[None] | None = None  # in the pool's queue until a worker takes it


class JobExecutor:
    def __init__(
        self,
        *,
        key: NodeKey,
        sandbox: Sandbox,
        store: ReceiptStore,
        encode_receipt: ReceiptEncoder,
        encode_envelope: EnvelopeEncoder,
        slots: int,
        queue_limit: int,
        default_limits: ResourceLimits,
        max_limits: ResourceLimits,
        input_limits: InputLimits,
        log: EventLog,
    ) -> None:
        self.key = key
        self.sandbox = sandbox
        self.store = store
        self._encode_receipt = encode_receipt
        self._encode_envelope = encode_envelope
        self.slots = slots
        self.queue_limit = queue_limit
        self.default_limits = default_limits
        self.max_limits = max_limits
        self.input_limits = input_limits
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="job")
        self._jobs: dict[str, _Admitted] = {}  # queued + running, by job id
        self._reserved = 0  # capacity held for leases (reserve / release_reservation)
        self.running = 0
        self._running_lock = threading.Lock()
        self.completed = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[JobDone]] = set()

    @property
    def queued(self) -> int:
        return max(0, len(self._jobs) - self.running)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.running)

    @property
    def draining(self) -> bool:
        """True once `drain` began: no new jobs or reservations are accepted."""
        return self._draining

    @property
    def reserved_count(self) -> int:
        return self._reserved

    @property
    def capacity_left(self) -> int:
        """Jobs this node would still admit: slots and queue places not taken
        by admitted jobs or reservations."""
        return max(0, self.slots + self.queue_limit - len(self._jobs) - self._reserved)

    def reserve(self) -> None:
        """Hold one job's capacity (slot or queue place) for a job to come.

        The reservation is used by `submit(..., reserved=True)` or given back
        with `release_reservation`; it does not expire by itself.
        """
        self._refuse_if_draining()
        if self.capacity_left <= 0:
            raise AdmissionError("BUSY", self._busy_message())
        self._reserved += 1

    def release_reservation(self) -> None:
        """Give back one reservation that will not be used."""
        if self._reserved <= 0:
            raise RuntimeError("release_reservation() without a reservation")
        self._reserved -= 1

    def state(self, job_id: str) -> JobState | None:
        """Where an admitted job is; None if it is not (unknown or finished)."""
        with self._running_lock:
            entry = self._jobs.get(job_id)
            return None if entry is None else entry.state

    def cancel(self, job_id: str, reason: str = DEFAULT_CANCEL_REASON) -> bool:
        """Stop one admitted job; False if it is unknown or already finished.

        The job ends as CANCELLED with `reason` as its detail, and a signed,
        stored receipt; its `submit` returns that JobDone as usual. A queued job
        ends at once without waiting for a slot; a running guest stops at its
        next epoch tick. A job whose guest already returned keeps its own
        outcome. Cancelling twice keeps the first reason.
        """
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        if entry.flag.cancel(reason):
            self.log.event("job_cancelling", job_id=job_id, state=entry.state)
        if entry.queued is not None and entry.work is not None and entry.queued.cancel():
            # Taken out of the pool's queue: its CANCELLED run (instant: the
            # sandbox sees the flag first), signing and storing happen on a
            # thread of the loop's default executor, not behind the running jobs.
            entry.queued = None
            asyncio.get_running_loop().run_in_executor(None, entry.work)
        return True

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise AdmissionError("SHUTTING_DOWN", "node is shutting down; not accepting jobs")

    def _busy_message(self) -> str:
        return f"all {self.slots} job slots and {self.queue_limit} queue places are taken" + (
            f" ({self._reserved} reserved)" if self._reserved else ""
        )

    def _check_input(self, req: JobRequest, module_sha: str) -> tuple[str, ResourceLimits]:
        lim = self.input_limits
        if len(req.module) > lim.max_module_bytes:
            raise AdmissionError(
                "MODULE_TOO_LARGE",
                f"module is {len(req.module)} bytes; this node accepts at most "
                f"{lim.max_module_bytes}",
            )
        if len(req.stdin) > lim.max_stdin_bytes:
            raise AdmissionError(
                "INPUT_TOO_LARGE",
                f"stdin is {len(req.stdin)} bytes; this node accepts at most {lim.max_stdin_bytes}",
            )
        if len(req.args) > lim.max_args or len(req.env) > lim.max_env:
            raise AdmissionError(
                "INPUT_TOO_LARGE",
                f"{len(req.args)} args and {len(req.env)} env vars; this node accepts at most "
                f"{lim.max_args} and {lim.max_env}",
            )
        text_bytes = arg_env_bytes(req.args, req.env)
        if text_bytes > lim.max_arg_env_bytes:
            raise AdmissionError(
                "INPUT_TOO_LARGE",
                f"args and env total {text_bytes} bytes; this node accepts at most "
                f"{lim.max_arg_env_bytes}",
            )
        for text in (*req.args, *(k for k, _ in req.env), *(v for _, v in req.env)):
            if "\x00" in text:
                raise AdmissionError("INVALID_REQUEST", "args and env may not contain NUL")
        if any(not k or "=" in k for k, _ in req.env):
            raise AdmissionError("INVALID_REQUEST", "env names must be non-empty without '='")
        try:
            limits = resolve_limits(req.limits, self.default_limits, self.max_limits)
        except PlasmError as err:
            raise AdmissionError("LIMITS_TOO_HIGH", str(err)) from err
        if req.module:
            sha = module_sha
            if req.module_sha256 and req.module_sha256 != sha:
                raise AdmissionError(
                    "MODULE_HASH_MISMATCH",
                    f"module bytes hash to {sha}, manifest says {req.module_sha256}",
                )
        else:
            sha = req.module_sha256
            if not sha:
                raise AdmissionError(
                    "INVALID_REQUEST", "send the module bytes or manifest.module_sha256"
                )
            if not self.sandbox.cache.has_module(sha):
                raise AdmissionError(
                    "MODULE_NOT_FOUND",
                    f"this node does not hold module {sha}; send its bytes",
                )
        return sha, limits

    async def submit(
        self,
        req: JobRequest,
        *,
        job_id: str | None = None,
        requester_node_id: str | None = None,
        reserved: bool = False,
        cancel: CancelFlag | None = None,
    ) -> JobDone:
        """Admit, run, sign and store one job; returns once its receipt is committed.

        `job_id`: the caller's (32 lowercase hex) instead of a random one; refused
        if a job with that id is admitted or has a stored receipt, so one id is
        never run twice. `requester_node_id`: the receipt's requester (default:
        this node). `reserved`: admit on a reservation from `reserve()` instead
        of free capacity. The reservation is used up by this call whatever
        happens: it becomes the job's place, or is released when the job is
        refused, including SHUTTING_DOWN (a reservation does not let a job in
        while the node drains). `cancel`: the job's flag, given by a caller that
        may have to cancel it before it is admitted (set already: the job ends
        CANCELLED at once, with its receipt).
        """
        if reserved and self._reserved <= 0:
            raise RuntimeError("submit(reserved=True) without a reservation")
        try:
            job_id, spec = await self._admit(req, job_id, requester_node_id, reserved=reserved)
        except BaseException:
            if reserved:
                self._reserved -= 1
            raise
        if reserved:
            self._reserved -= 1  # now counted as an admitted job instead
        entry = _Admitted(flag=cancel if cancel is not None else CancelFlag())
        self._jobs[job_id] = entry
        self._idle.clear()
        requester = requester_node_id or self.key.node_id
        # Shielded: a client that cancels or times out does not stop the job
        # half-way; it still finishes, and its receipt is stored (GetReceipt).
        task = asyncio.create_task(
            self._execute(job_id, spec, req.module or None, entry, requester)
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return await asyncio.shield(task)

    async def _admit(
        self,
        req: JobRequest,
        job_id: str | None,
        requester_node_id: str | None,
        *,
        reserved: bool,
    ) -> tuple[str, JobSpec]:
        """Every admission check; the caller admits right after, with no await between."""
        self._refuse_if_draining()
        if not reserved and self.capacity_left <= 0:
            raise AdmissionError("BUSY", self._busy_message())
        try:
            if job_id is not None:
                check_job_id(job_id)
            if requester_node_id:
                check_hex64(requester_node_id, "requester_node_id")
        except InvalidIdError as err:
            raise AdmissionError("INVALID_REQUEST", str(err)) from err
        # Hashing a large module (up to 16 MiB, ~10 ms) must not stall the loop.
        module_sha = ""
        if len(req.module) > self.input_limits.max_module_bytes:
            pass  # refused by _check_input before the hash matters
        elif req.module:
            module_sha = await module_sha256(req.module)
        self._refuse_if_draining()  # may have begun while a large module was hashed
        sha, limits = self._check_input(req, module_sha)
        if job_id is None:
            job_id = new_job_id(os.urandom(16))
        elif job_id in self._jobs:
            raise AdmissionError("INVALID_REQUEST", f"job {job_id} is already admitted")
        elif self.store.get(job_id) is not None:  # one indexed SQLite read
            raise AdmissionError("INVALID_REQUEST", f"job id {job_id} already used")
        spec = JobSpec(
            module_sha256=sha, args=req.args, env=req.env, stdin=req.stdin, limits=limits
        )
        return job_id, spec

    def _task_done(self, task: asyncio.Task[JobDone]) -> None:
        self._tasks.discard(task)
        # The exception is retrieved here so it is logged even when the client went away.
        err = None if task.cancelled() else task.exception()
        if err is not None and not isinstance(err, AdmissionError):
            self.log.error("job_failed", error=repr(err))

    async def _execute(
        self,
        job_id: str,
        spec: JobSpec,
        module: bytes | None,
        entry: _Admitted,
        requester: str,
    ) -> JobDone:
        # One hop out and one back: a worker thread runs, signs and queues the
        # receipt; the store's writer thread wakes the loop once it committed.
        # (run_in_executor + wrap_future would wake the loop twice per job.)
        loop = asyncio.get_running_loop()
        result: asyncio.Future[JobDone] = loop.create_future()

        def settle(outcome: JobDone | BaseException) -> None:
            if result.done():
                return
            if isinstance(outcome, BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)

        def work() -> None:
            try:
                done = self._run_and_sign(job_id, spec, module, entry, requester)
                stored = self.store.add(
                    job_id, self._encode_envelope(done.envelope), done.receipt.finished_at_ns
                )
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
                loop.call_soon_threadsafe(settle, err)
                return

            def committed(fut: Future[None]) -> None:
                err = None if fut.cancelled() else fut.exception()
                loop.call_soon_threadsafe(settle, err if err is not None else done)
                if err is None:  # logged here, after the answer is on its way
                    self._log_finished(done)

            stored.add_done_callback(committed)

        try:
            entry.work = work
            if entry.flag.cancelled:  # cancelled before it reached the pool's queue
                loop.run_in_executor(None, work)
            else:
                entry.queued = self._pool.submit(work)
            done = await result
        finally:
            # Only now, with its receipt committed: until then the id stays
            # taken, so a duplicate is refused by one check or the other.
            del self._jobs[job_id]
            if not self._jobs:
                self._idle.set()
        self.completed += 1
        metrics.JOBS.inc(done.execution.outcome.label)  # here, on the loop's thread
        return done

    def _log_finished(self, done: JobDone) -> None:
        ex = done.execution
        self.log.event(
            "job_finished",
            job_id=done.job_id,
            module_sha256=done.receipt.module_sha256,
            outcome=ex.outcome.label,
            exit_code=ex.exit_code,
            trap_code=ex.trap_code,
            fuel=ex.fuel_consumed,
            wall_time_us=ex.wall_time_us,
            stdout_bytes=len(ex.stdout),
        )

    def _run_and_sign(
        self,
        job_id: str,
        spec: JobSpec,
        module: bytes | None,
        entry: _Admitted,
        requester: str,
    ) -> JobDone:
        with self._running_lock:
            entry.state = "running"
            self.running += 1
        try:
            try:
                ex = self.sandbox.run(spec, module, entry.flag)
            except ModuleUnavailableError as err:  # evicted between admission and run
                raise AdmissionError("MODULE_NOT_FOUND", str(err)) from err
            if module is not None and ex.outcome not in _BYTES_NOT_KEPT:
                # Keep the bytes for submit-by-hash only once they compiled:
                # garbage uploads must not fill the disk.
                self.sandbox.cache.put_module(spec.module_sha256, module)
        finally:
            with self._running_lock:
                self.running -= 1
        receipt = Receipt(
            job_id=job_id,
            module_sha256=spec.module_sha256,
            input_sha256=input_sha256(spec.args, spec.env, spec.stdin),
            stdout_sha256=sha256_hex(ex.stdout),
            stderr_sha256=sha256_hex(ex.stderr),
            stdout_bytes=len(ex.stdout),
            stderr_bytes=len(ex.stderr),
            outcome=ex.outcome,
            exit_code=ex.exit_code,
            trap_code=ex.trap_code,
            fuel_consumed=ex.fuel_consumed,
            wall_time_us=ex.wall_time_us,
            limits=spec.limits,
            runtime=self.sandbox.engine.runtime,
            executor_node_id=self.key.node_id,
            requester_node_id=requester,
            started_at_ns=ex.started_at_ns,
            finished_at_ns=ex.finished_at_ns,
            detail=ex.detail,
        )
        envelope = envelopes.sign(self.key, envelopes.RECEIPT_DOMAIN, self._encode_receipt(receipt))
        return JobDone(job_id=job_id, execution=ex, receipt=receipt, envelope=envelope)

    async def drain(self, timeout: float) -> bool:
        """Refuse new jobs and wait for admitted ones. True if all finished."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Wait for the worker threads (call after drain)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
