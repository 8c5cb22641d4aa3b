"""The worker: a node's `plasm.v1.Jobs/*` overlay handlers.

`Offer` is answered with a lease or a signed decline (core.jobs.admission
decides); a lease reserves a job place in the `JobExecutor` until the `Run`
naming it arrives or it expires. `Run` checks what arrives against the
accepted offer (module hash and size, input hash) and runs the job in the
same sandbox as local jobs; the receipt names the requester the overlay
authenticated. `Status` reports where a job is; `Cancel` stops it.

Every peer is known by the identity its overlay connection proved; a peer
can see and cancel only its own jobs. If the requester abandons a `Run` (its
timeout, or the connection closing) the guest is cancelled: nobody waits for
the result any more.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from plasm.v1 import job_pb2

from plasm_grpc import wire
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.jobs.admission import (
    Decline,
    LeaseBook,
    LeaseError,
    Offer,
    WorkerLoad,
    WorkerPolicy,
    decide,
    release_one,
)
from plasm_grpc.core.jobs.events import DeclineReason
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.jobs.executor import AdmissionError, JobExecutor, JobRequest
from plasm_grpc.jobs.hashing import job_input_sha256, module_sha256
from plasm_grpc.logs import EventLog
from plasm_grpc.net import OverlayEndpoint, RequestRefusedError
from plasm_grpc.remote import messages
from plasm_grpc.remote.futures import discard_outcome
from plasm_grpc.remote.messages import JobWireError
from plasm_grpc.sandbox.runner import CancelFlag

_FINISHED_REMEMBERED: Final = 4096
_ADMISSION_DECLINES: Final = {
    "BUSY": DeclineReason.BUSY,
    "SHUTTING_DOWN": DeclineReason.SHUTTING_DOWN,
}


@dataclass(slots=True)
class _Job:
    requester: str
    state: str  # "leased", "checking", "queued" (handed to the executor)
    flag: CancelFlag = field(default_factory=CancelFlag)


class JobWorker:
    """Serves jobs to peers on `overlay` (call `attach`)."""

    def __init__(
        self,
        *,
        key: NodeKey,
        executor: JobExecutor,
        policy: WorkerPolicy,
        log: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.executor = executor
        self.policy = policy
        self.log = log
        self._clock = clock
        self.leases = LeaseBook(policy)
        self._jobs: dict[str, _Job] = {}  # leased or running for a peer
        self._held: dict[str, int] = {}  # requester -> jobs admitted (not leases)
        self._finished: OrderedDict[str, str] = OrderedDict()  # job id -> requester
        self._expiry: asyncio.TimerHandle | None = None
        # Whether this node's own clients use a job id (the daemon wires the
        # router's has_job): both share one receipt store, so one id space.
        self.job_id_in_use: Callable[[str], bool] = lambda _: False

    def attach(self, overlay: OverlayEndpoint) -> None:
        overlay.handle(messages.OFFER_METHOD, self._offer)
        overlay.handle(messages.RUN_METHOD, self._run)
        overlay.handle(messages.STATUS_METHOD, self._status)
        overlay.handle(messages.CANCEL_METHOD, self._cancel)

    def _release_share(self, peer: str) -> None:
        release_one(self._held, peer)

    def has_job(self, job_id: str) -> bool:
        """A peer's job holds `job_id` here (leased, checked, queued or running)."""
        return job_id in self._jobs

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for lease in self.leases.clear():
            self._jobs.pop(lease.job_id, None)
            self.executor.release_reservation()

    # -- Offer ---------------------------------------------------------------------------

    async def _offer(self, peer: str, payload: bytes) -> bytes:
        try:
            offer = messages.offer_from_bytes(payload)
        except JobWireError as err:
            self.log.event("job_offer_refused", peer_node_id=peer, reason=str(err))
            raise RequestRefusedError(f"malformed offer: {err}") from err
        self._expire()
        decline = self._decide(peer, offer)
        if decline is None:
            try:
                self.executor.reserve()
            except AdmissionError as err:
                decline = Decline(
                    reason=_ADMISSION_DECLINES.get(err.reason, DeclineReason.BUSY), detail=str(err)
                )
        if decline is not None:
            self.log.event(
                "job_declined",
                job_id=offer.job_id,
                requester=peer,
                reason=decline.reason.name,
                detail=decline.detail,
            )
            return self._signed_decline(offer.job_id, decline).SerializeToString()
        lease = self.leases.grant(offer, os.urandom(16).hex(), self._clock())
        self._jobs[offer.job_id] = _Job(requester=peer, state="leased")
        self._arm_expiry()
        has_module = self.executor.sandbox.cache.has_module(offer.module_sha256)
        self.log.event(
            "job_accepted",
            level="debug",
            job_id=offer.job_id,
            requester=peer,
            module_sha256=offer.module_sha256,
            has_module=has_module,
        )
        accept = job_pb2.JobAccept(
            job_id=offer.job_id, lease_id=lease.lease_id, has_module=has_module
        )
        accept.lease_expires_at.FromNanoseconds(time.time_ns() + self.policy.lease_ns)
        return job_pb2.JobResponse(accept=accept).SerializeToString()

    def _decide(self, peer: str, offer: Offer) -> Decline | None:
        if offer.requester_node_id != peer:
            return Decline(
                reason=DeclineReason.INVALID_OFFER,
                detail="requester_node_id is not the identity of the connection it came on",
            )
        taken = (
            self.job_id_in_use(offer.job_id)
            or offer.job_id in self._jobs
            or offer.job_id in self._finished
            or self.executor.state(offer.job_id) is not None
            or self.executor.store.get(offer.job_id) is not None
        )
        load = WorkerLoad(
            draining=self.executor.draining,
            capacity_left=self.executor.capacity_left,
            held_by_requester=self.leases.held(peer) + self._held.get(peer, 0),
            job_id_taken=taken,
        )
        return decide(offer, self.policy, load, time.time_ns())

    def _signed_decline(self, job_id: str, decline: Decline) -> job_pb2.JobResponse:
        body = job_pb2.JobDecline(
            job_id=job_id,
            reason=job_pb2.DeclineReason.ValueType(int(decline.reason)),
            detail=decline.detail,
            worker_node_id=self.key.node_id,
        )
        body.declined_at.FromNanoseconds(time.time_ns())
        envelope = envelopes.sign(
            self.key, envelopes.DECLINE_DOMAIN, body.SerializeToString(deterministic=True)
        )
        return job_pb2.JobResponse(decline=wire.envelope_to_pb(envelope))

    # -- Run -----------------------------------------------------------------------------

    async def _run(self, peer: str, payload: bytes) -> bytes:
        try:
            run = messages.run_from_bytes(payload)
        except JobWireError as err:
            raise RequestRefusedError(f"malformed job: {err}") from err
        self._expire()
        try:
            lease = self.leases.take(run.job_id, run.lease_id, peer)
        except LeaseError as err:
            self.log.event("job_run_refused", job_id=run.job_id, requester=peer, reason=err.reason)
            raise RequestRefusedError(err.reason) from err
        offer = lease.offer
        job = self._jobs[run.job_id]
        job.state = "checking"
        # Counted against the requester's share from here (the lease no longer is).
        self._held[peer] = self._held.get(peer, 0) + 1
        try:
            await self._check_arrival(run, offer)
            if job.flag.cancelled:  # a Cancel came while the job was checked
                raise RequestRefusedError("cancelled by the requester before it started")
        except BaseException as err:  # refused, or the requester went away meanwhile
            self._jobs.pop(run.job_id, None)
            self._release_share(peer)
            self.executor.release_reservation()
            if isinstance(err, RequestRefusedError):
                self.log.event(
                    "job_run_refused", job_id=run.job_id, requester=peer, reason=str(err)
                )
            raise
        job.state = "queued"
        submitted = asyncio.ensure_future(
            self.executor.submit(
                JobRequest(
                    module_sha256=offer.module_sha256,
                    module=run.module,
                    args=tuple(run.args),
                    env=tuple((e.name, e.value) for e in run.env),
                    stdin=run.stdin,
                    limits=offer.limits,
                ),
                job_id=run.job_id,
                requester_node_id=peer,
                reserved=True,
                cancel=job.flag,  # settable before the executor has admitted the job
            )
        )
        try:
            done = await asyncio.shield(submitted)
        except asyncio.CancelledError:
            # The requester abandoned the call (its timeout, its Cancel of the
            # request, or the connection closed): nobody awaits the result.
            self._stop(run.job_id, job, "cancelled: the requester went away")
            self.log.event("job_abandoned", job_id=run.job_id, requester=peer)
            raise
        except AdmissionError as err:
            self.log.event("job_run_refused", job_id=run.job_id, requester=peer, reason=str(err))
            raise RequestRefusedError(f"{err.reason}: {err}") from err
        finally:
            self._job_ended(run.job_id, peer, submitted)
        return messages.result_to_pb(done).SerializeToString()

    async def _check_arrival(self, run: job_pb2.JobRun, offer: Offer) -> None:
        """The job must be the one offered: same module, same input. Large
        modules and stdin are hashed off the event loop."""
        if run.module:
            if len(run.module) != offer.module_size:
                raise RequestRefusedError(
                    f"module is {len(run.module)} bytes; the offer said {offer.module_size}"
                )
            actual = await module_sha256(run.module)
            if actual != offer.module_sha256:
                raise RequestRefusedError(
                    f"module hashes to {actual}; the offer said {offer.module_sha256}"
                )
        elif not self.executor.sandbox.cache.has_module(offer.module_sha256):
            raise RequestRefusedError(
                f"MODULE_NOT_FOUND: this node no longer holds module {offer.module_sha256}"
            )
        env = tuple((e.name, e.value) for e in run.env)
        actual_input = await job_input_sha256(tuple(run.args), env, run.stdin)
        if actual_input != offer.input_sha256:
            raise RequestRefusedError(
                f"input hashes to {actual_input}; the offer said {offer.input_sha256}"
            )

    def _stop(self, job_id: str, job: _Job, reason: str) -> bool:
        """Cancel a job whether or not the executor has admitted it yet."""
        first = job.flag.cancel(reason)
        return self.executor.cancel(job_id, reason) or first

    def _job_ended(self, job_id: str, peer: str, submitted: asyncio.Future[Any]) -> None:
        self._jobs.pop(job_id, None)
        if submitted.done():
            self._release_share(peer)
        else:  # abandoned: the job holds its place until the executor lets it go
            submitted.add_done_callback(lambda _: self._release_share(peer))
        self._finished[job_id] = peer
        while len(self._finished) > _FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        if not submitted.done():  # abandoned: collect the outcome when it comes
            submitted.add_done_callback(discard_outcome)

    # -- Status and Cancel ---------------------------------------------------------------

    async def _status(self, peer: str, payload: bytes) -> bytes:
        try:
            job_id = messages.status_job_id(payload)
        except JobWireError as err:
            raise RequestRefusedError(str(err)) from err
        state = job_pb2.WORKER_JOB_STATE_UNKNOWN
        job = self._jobs.get(job_id)
        if job is not None and job.requester == peer:
            if job.state == "leased":
                state = job_pb2.WORKER_JOB_STATE_LEASED
            elif self.executor.state(job_id) == "running":
                state = job_pb2.WORKER_JOB_STATE_RUNNING
            else:
                state = job_pb2.WORKER_JOB_STATE_QUEUED
        elif self._finished.get(job_id) == peer:
            # An abandoned job may still be stopping in the executor.
            running = self.executor.state(job_id)
            state = (
                job_pb2.WORKER_JOB_STATE_FINISHED
                if running is None
                else job_pb2.WORKER_JOB_STATE_RUNNING
                if running == "running"
                else job_pb2.WORKER_JOB_STATE_QUEUED
            )
        return job_pb2.JobStatus(state=state).SerializeToString()

    async def _cancel(self, peer: str, payload: bytes) -> bytes:
        try:
            job_id = messages.cancel_job_id(payload)
        except JobWireError as err:
            raise RequestRefusedError(str(err)) from err
        job = self._jobs.get(job_id)
        found = False
        if job is not None and job.requester == peer:
            if job.state == "leased":
                if self.leases.drop(job_id, peer) is not None:
                    self._jobs.pop(job_id, None)
                    self.executor.release_reservation()
                found = True
            else:
                self._stop(job_id, job, "cancelled by the requester")
                found = True
        self.log.event("job_cancel_requested", job_id=job_id, requester=peer, found=found)
        return job_pb2.JobCancelResult(found=found).SerializeToString()

    # -- leases --------------------------------------------------------------------------

    def _expire(self) -> None:
        for lease in self.leases.expire(self._clock()):
            self._jobs.pop(lease.job_id, None)
            self.executor.release_reservation()
            self.log.event(
                "job_lease_expired", job_id=lease.job_id, requester=lease.requester_node_id
            )

    def _arm_expiry(self) -> None:
        """A timer at the next lease expiry, so unused leases free their places."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        when = self.leases.next_expiry()
        if when is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - self._clock()) + 0.01

        def fire() -> None:
            self._expiry = None
            self._expire()
            self._arm_expiry()

        self._expiry = loop.call_later(delay, fire)
