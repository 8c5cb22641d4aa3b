"""One attempt: one job on one worker, over the overlay.

A `WorkerAttempt` carries an `OutboundJob` to one `Candidate` and says how
each step went as a value, not a session input, so it serves whoever runs
a job on a worker (the router feeds the values to its `JobSession`):

- `offer`: dial the worker (or reuse the connection; through its relays when
  it advertises no address) and send the JobOffer. When the worker is known
  to hold the module, the JobRun goes right behind the offer (one round trip
  instead of two). `Accepted`, a `CheckedDecline` (a decline `verification`
  checked) or `Failed`.
- `run`: send the JobRun (the module only if the worker lacks it) and, while
  it is out, ask the worker for the job's status every heartbeat interval:
  progress goes to a callback, and that many unanswered checks in a row mean
  the worker is gone. The result is returned only once `verification` checked
  it: a `CheckedResult`, or `Failed` (`BAD_RECEIPT` when it did not check out).

`ModuleHolds` remembers which workers hold which modules; `cancel_on_worker`
asks a worker to stop a job. What a failure costs the worker (forgotten from
the lookups, distrusted) is the caller's to decide: `Failed` says what
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError
from plasm.v1 import job_pb2

from plasm_grpc.core.jobs.events import EventKind
from plasm_grpc.core.jobs.placement import Candidate
from plasm_grpc.core.jobs.session import AttemptResult
from plasm_grpc.net import (
    ConnectionClosedError,
    OverlayConnection,
    OverlayEndpoint,
    OverlayError,
    RemoteCallError,
)
from plasm_grpc.net.relay import RelayService
from plasm_grpc.remote import messages
from plasm_grpc.remote.futures import discard_outcome
from plasm_grpc.remote.messages import OFFER_METHOD, RUN_METHOD, STATUS_METHOD, clip
from plasm_grpc.remote.outbound import OutboundJob
from plasm_grpc.remote.verification import CheckedDecline, CheckedResult, read_decline, read_result

__all__ = [
    "Accepted",
    "Failed",
    "ModuleHolds",
    "WorkerAttempt",
    "cancel_on_worker",
]

_HOLDS_REMEMBERED: Final = 65536

_PROGRESS: Final = {
    job_pb2.WORKER_JOB_STATE_QUEUED: EventKind.QUEUED,
    job_pb2.WORKER_JOB_STATE_RUNNING: EventKind.RUNNING,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    has_module: bool  # the worker holds the module: the JobRun goes without it


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    result: AttemptResult
    detail: str
    may_have_run: bool = False  # the job may have reached the worker (a pipelined JobRun)
    gone: bool = False  # the worker is unreachable or vanished: forget it from the lookups
    release: bool = False  # a late acceptance may hold a lease there: cancel the job on it


class ModuleHolds:
    """(worker, module sha256) pairs a worker was seen to hold, the newest kept."""

    def __init__(self, limit: int = _HOLDS_REMEMBERED) -> None:
        self._limit = limit
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def held(self, worker: str, module_sha256: str) -> bool:
        return (worker, module_sha256) in self._pairs

    def add(self, worker: str, module_sha256: str) -> None:
        key = (worker, module_sha256)
        self._pairs[key] = None
        self._pairs.move_to_end(key)
        while len(self._pairs) > self._limit:
            self._pairs.popitem(last=False)

    def discard(self, worker: str, module_sha256: str) -> None:
        self._pairs.pop((worker, module_sha256), None)


class WorkerAttempt:
    """`job` on `candidate`: an offer, then (once accepted) a run."""

    def __init__(
        self,
        job: OutboundJob,
        candidate: Candidate,
        *,
        overlay: OverlayEndpoint,
        relay: RelayService | None,
        holds: ModuleHolds,
        clock: Callable[[], float],
    ) -> None:
        self.job = job
        self.candidate = candidate
        self.overlay = overlay
        self.relay = relay
        self.holds = holds
        self._clock = clock
        self.lease_id = ""  # "" until accepted: a pipelined JobRun means the offer's lease
        # A JobRun sent right behind the offer (the worker was known to hold the module).
        self._pipelined: asyncio.Future[bytes] | None = None

    def drop_pipelined(self) -> None:
        """Abandon a pipelined JobRun that will not be used (it is refused or cancelled)."""
        if self._pipelined is not None:
            if not self._pipelined.done():
                self._pipelined.cancel()
            self._pipelined = None

    # -- offer -------------------------------------------------------------------------------

    async def offer(self, timeout_s: float) -> Accepted | CheckedDecline | Failed:
        job, c = self.job, self.candidate
        try:
            dial_s = timeout_s + self._relay_allowance()
            async with asyncio.timeout(min(dial_s, max(0.001, job.deadline - self._clock()))):
                if c.host or self.relay is None:
                    connection = await self.overlay.connect(c.host, c.port, c.node_id)
                else:  # through a relay; direct after a hole punch when the NATs allow
                    connection = await self.relay.connect(c.node_id, c.relays)
        except (TimeoutError, OverlayError, OSError) as err:
            where = f"{c.host}:{c.port}" if c.host else "it through its relays"
            return Failed(
                result=AttemptResult.UNREACHABLE,
                detail=f"cannot connect to {where}: {_describe(err)}",
                gone=True,
            )
        offer = job.offer_pb(time.time_ns() + int(max(0.0, job.deadline - self._clock()) * 1e9))
        left = max(0.001, job.deadline - self._clock())
        offered = asyncio.ensure_future(
            connection.request(OFFER_METHOD, offer.SerializeToString(), min(timeout_s, left))
        )
        if self.holds.held(c.node_id, job.module_sha256):
            # One round trip instead of two: the JobRun goes right behind the
            # offer (the worker handles them in order; see JobRun.lease_id).
            self._pipelined = asyncio.ensure_future(
                connection.request(RUN_METHOD, job.run_pb("", send_module=False), left)
            )
            self._pipelined.add_done_callback(discard_outcome)
        sent = self._pipelined is not None
        try:
            reply = await offered
        except TimeoutError:
            self.drop_pipelined()
            # A late acceptance would hold a place there until its lease expires.
            return Failed(
                result=AttemptResult.TIMEOUT,
                detail="no answer to the offer in time",
                may_have_run=sent,
                release=True,
            )
        except ConnectionClosedError as err:
            self.drop_pipelined()
            return Failed(
                result=AttemptResult.DISCONNECTED, detail=clip(err.reason), may_have_run=sent
            )
        except RemoteCallError as err:
            self.drop_pipelined()
            return Failed(
                result=AttemptResult.ERROR, detail=f"the worker refused: {clip(str(err))}"
            )
        except BaseException:  # cancelled (the job was): nothing may be left running
            self.drop_pipelined()
            offered.cancel()
            raise
        answer = self._answered(reply)
        if not isinstance(answer, Accepted):
            self.drop_pipelined()
        return answer

    def _answered(self, reply: bytes) -> Accepted | CheckedDecline | Failed:
        job, worker = self.job, self.candidate.node_id
        response = job_pb2.JobResponse()
        try:
            response.ParseFromString(reply)
        except DecodeError:
            return Failed(result=AttemptResult.ERROR, detail="malformed answer to the offer")
        if response.HasField("accept"):
            accept = response.accept
            if accept.job_id != job.job_id or not accept.lease_id:
                return Failed(result=AttemptResult.ERROR, detail="the acceptance names another job")
            self.lease_id = accept.lease_id[: messages.MAX_TEXT]
            if accept.has_module:
                self.holds.add(worker, job.module_sha256)
            else:
                self.holds.discard(worker, job.module_sha256)
            return Accepted(accept.has_module)
        if response.HasField("decline"):
            checked = read_decline(response.decline, job_id=job.job_id, worker=worker)
            if isinstance(checked, CheckedDecline):
                return checked
            return Failed(result=AttemptResult.ERROR, detail=checked.problem)
        return Failed(result=AttemptResult.ERROR, detail="an empty answer to the offer")

    def _relay_allowance(self) -> float:
        """Extra time to dial a worker with no connection yet through a relay:
        the relay, the circuit, the end-to-end handshake, then the hole punch."""
        if self.candidate.host or self.relay is None:
            return 0.0
        if self.overlay.connection_to(self.candidate.node_id) is not None:
            return 0.0
        return self.relay.settings.punch_timeout + self.relay.settings.request_timeout

    # -- run ---------------------------------------------------------------------------------

    async def run(
        self,
        *,
        send_module: bool,
        timeout_s: float,
        heartbeat_interval_s: float,
        heartbeat_misses: int,
        on_progress: Callable[[EventKind], None],
    ) -> CheckedResult | Failed:
        """The accepted job's result, checked; `on_progress`: QUEUED, RUNNING."""
        job, worker = self.job, self.candidate.node_id
        connection = self.overlay.connection_to(worker)
        if connection is None:
            return Failed(
                result=AttemptResult.DISCONNECTED, detail="the connection closed after the offer"
            )
        if self._pipelined is not None:
            call = self._pipelined
            self._pipelined = None
            if send_module:  # the worker lost the module: the pipelined run fails
                call.cancel()
                return Failed(
                    result=AttemptResult.ERROR, detail="the worker no longer holds the module"
                )
        else:
            call = asyncio.ensure_future(
                connection.request(
                    RUN_METHOD,
                    job.run_pb(self.lease_id, send_module=send_module),
                    max(timeout_s, 0.001),
                )
            )
        try:
            gone = await self._watch(
                connection, call, heartbeat_interval_s, heartbeat_misses, on_progress
            )
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
        if gone is not None:
            return Failed(result=AttemptResult.DISCONNECTED, detail=gone, gone=True)
        try:
            reply = call.result()
        except TimeoutError:
            return Failed(result=AttemptResult.TIMEOUT, detail="no result within the deadline")
        except ConnectionClosedError as err:
            return Failed(result=AttemptResult.DISCONNECTED, detail=clip(err.reason), gone=True)
        except RemoteCallError as err:
            return Failed(
                result=AttemptResult.ERROR, detail=f"the worker failed the job: {clip(str(err))}"
            )
        checked = await read_result(reply, sent=job, worker=worker)
        if not isinstance(checked, CheckedResult):
            return Failed(result=AttemptResult.BAD_RECEIPT, detail=checked.problem)
        self.holds.add(worker, job.module_sha256)
        return checked

    async def _watch(
        self,
        connection: OverlayConnection,
        call: asyncio.Future[bytes],
        interval: float,
        misses_allowed: int,
        on_progress: Callable[[EventKind], None],
    ) -> str | None:
        """Wait for `call`, asking the worker for progress meanwhile.

        Returns why the worker is presumed gone, or None once `call` is done.
        """
        query = job_pb2.JobStatusQuery(job_id=self.job.job_id).SerializeToString()
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
                return f"the connection closed: {clip(err.reason)}"
            except RemoteCallError:
                misses += 1
            else:
                misses = 0
                status = job_pb2.JobStatus()
                with contextlib.suppress(DecodeError):
                    status.ParseFromString(reply)
                kind = _PROGRESS.get(status.state)
                if kind is not None and not call.done():
                    on_progress(kind)
            if misses >= misses_allowed:
                return f"the worker stopped answering ({misses} status checks in a row)"


async def cancel_on_worker(overlay: OverlayEndpoint | None, worker: str, job_id: str) -> None:
    """Ask `worker` to stop `job_id`, if a connection to it is open (best effort)."""
    connection = overlay.connection_to(worker) if overlay else None
    if connection is None:
        return
    with contextlib.suppress(OverlayError, TimeoutError):
        await connection.request(
            messages.CANCEL_METHOD,
            job_pb2.JobCancel(job_id=job_id).SerializeToString(),
            5.0,
        )


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return clip(str(err) or type(err).__name__)
