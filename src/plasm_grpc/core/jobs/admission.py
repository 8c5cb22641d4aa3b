"""The worker's side of the offer/accept handshake: decide, lease, expire.

A requester offers a job (`Offer`) before any module bytes move; the worker
answers with an `Accept` holding a lease, or a `Decline` with a reason from a
fixed list. A lease reserves one job place (a slot or a queue place) for the
requester until its `JobRun` arrives or the lease expires.

Fairness between requesters: one requester may hold (leased, queued or
running) at most `max_share` of the worker's slots and queue places, so
another requester always finds room that the first cannot take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from plasm_grpc.core.errors import LimitError
from plasm_grpc.core.jobs.events import DeclineReason
from plasm_grpc.core.limits import ResourceLimits, resolve_limits

# A requester's clock may be ahead of ours; a deadline this far in the past
# is still "the past" only beyond this skew.
CLOCK_SKEW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A JobOffer as values; sizes in bytes, times in ns since the epoch."""

    job_id: str
    requester_node_id: str
    module_sha256: str
    module_size: int
    input_size: int
    input_sha256: str
    limits: ResourceLimits  # as requested: zeros take the worker's defaults
    deadline_ns: int  # the requester's wall clock
    arch: str = ""
    wasi_version: str = ""
    min_memory_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPolicy:
    """What a worker will take. Replaced as a whole on reload (SIGHUP)."""

    accept_jobs: bool
    arch: str
    wasi_version: str
    default_limits: ResourceLimits
    max_limits: ResourceLimits
    max_module_bytes: int
    max_input_bytes: int  # stdin + args + env
    lease_ns: int
    capacity: int  # slots + queue places
    max_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")
        if self.capacity < 1 or self.lease_ns <= 0:
            raise ValueError("capacity and lease must be positive")

    @property
    def per_requester(self) -> int:
        # The epsilon: 100 * 0.29 is 28.999999999999996 in binary floating point.
        return max(1, math.floor(self.capacity * self.max_share + 1e-9))


@dataclass(frozen=True, slots=True, kw_only=True)
class Decline:
    reason: DeclineReason
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    lease_id: str
    job_id: str
    requester_node_id: str
    offer: Offer
    limits: ResourceLimits  # resolved
    expires_ns: int  # on the worker's monotonic clock


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLoad:
    """What the decision needs to know about the worker right now."""

    draining: bool
    capacity_left: int  # places neither admitted nor reserved
    held_by_requester: int  # this requester's leases + admitted jobs
    job_id_taken: bool  # a job with this id is leased, admitted or has a receipt


def decide(offer: Offer, policy: WorkerPolicy, load: WorkerLoad, now_ns: int) -> Decline | None:
    """None to accept, or why not. Cheap checks that need no state first."""
    if not policy.accept_jobs:
        return Decline(
            reason=DeclineReason.NOT_ACCEPTING, detail="this node does not run jobs for peers"
        )
    if load.draining:
        return Decline(reason=DeclineReason.SHUTTING_DOWN, detail="the node is shutting down")
    if offer.wasi_version and offer.wasi_version != policy.wasi_version:
        return Decline(
            reason=DeclineReason.UNSUPPORTED_RUNTIME,
            detail=f"job requires WASI {offer.wasi_version!r}; this node runs "
            f"{policy.wasi_version!r}",
        )
    if offer.arch and offer.arch != policy.arch:
        return Decline(
            reason=DeclineReason.UNSUPPORTED_RUNTIME,
            detail=f"job requires arch {offer.arch!r}; this node is {policy.arch!r}",
        )
    try:
        limits = resolve_limits(offer.limits, policy.default_limits, policy.max_limits)
    except LimitError as err:
        return Decline(reason=DeclineReason.LIMITS_TOO_HIGH, detail=str(err))
    if offer.min_memory_bytes > policy.max_limits.max_memory_bytes:
        return Decline(
            reason=DeclineReason.LIMITS_TOO_HIGH,
            detail=f"job requires {offer.min_memory_bytes} bytes of memory; this node offers "
            f"at most {policy.max_limits.max_memory_bytes}",
        )
    if offer.module_size > policy.max_module_bytes:
        return Decline(
            reason=DeclineReason.MODULE_TOO_LARGE,
            detail=f"module is {offer.module_size} bytes; this node accepts at most "
            f"{policy.max_module_bytes}",
        )
    if offer.input_size > policy.max_input_bytes:
        return Decline(
            reason=DeclineReason.INPUT_TOO_LARGE,
            detail=f"input is {offer.input_size} bytes; this node accepts at most "
            f"{policy.max_input_bytes}",
        )
    if offer.deadline_ns and offer.deadline_ns + CLOCK_SKEW_NS < now_ns:
        return Decline(
            reason=DeclineReason.DEADLINE_TOO_SHORT,
            detail=f"the offer's deadline passed {(now_ns - offer.deadline_ns) / 1e9:.1f} s ago "
            "by this node's clock",
        )
    if load.job_id_taken:
        return Decline(
            reason=DeclineReason.DUPLICATE_JOB,
            detail=f"this node already has a job {offer.job_id}",
        )
    if load.held_by_requester >= policy.per_requester:
        return Decline(
            reason=DeclineReason.REQUESTER_LIMIT,
            detail=f"this requester holds {load.held_by_requester} of this node's "
            f"{policy.capacity} job places; its share is {policy.per_requester}",
        )
    if load.capacity_left <= 0:
        return Decline(
            reason=DeclineReason.BUSY,
            detail=f"all {policy.capacity} job places (slots and queue) are taken",
        )
    del limits  # resolved again when the lease is granted; checked here for the reason
    return None


class LeaseError(Exception):
    """A JobRun that no lease covers: `reason` is for the requester."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class LeaseBook:
    """Leases granted and not yet taken by a JobRun or expired."""

    policy: WorkerPolicy
    _by_job: dict[str, Lease] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)  # requester -> leases

    def __len__(self) -> int:
        return len(self._by_job)

    def held(self, requester_node_id: str) -> int:
        return self._held.get(requester_node_id, 0)

    def has_job(self, job_id: str) -> bool:
        return job_id in self._by_job

    def grant(self, offer: Offer, lease_id: str, now: float) -> Lease:
        """Record a lease for an offer `decide` accepted (`now`: monotonic seconds)."""
        lease = Lease(
            lease_id=lease_id,
            job_id=offer.job_id,
            requester_node_id=offer.requester_node_id,
            offer=offer,
            limits=resolve_limits(offer.limits, self.policy.default_limits, self.policy.max_limits),
            expires_ns=int(now * 1e9) + self.policy.lease_ns,
        )
        self._by_job[offer.job_id] = lease
        self._held[offer.requester_node_id] = self.held(offer.requester_node_id) + 1
        return lease

    def take(self, job_id: str, lease_id: str, requester_node_id: str) -> Lease:
        """The lease a JobRun names, removed from the book; raises LeaseError.

        An empty `lease_id` takes the lease the requester holds for `job_id`
        (a JobRun pipelined behind its JobOffer). Call `expire(now)` first:
        an expired lease is then simply not there.
        """
        lease = self._by_job.get(job_id)
        if lease is None or lease.requester_node_id != requester_node_id:
            raise LeaseError(f"no lease for job {job_id} (never granted, declined, or expired)")
        if lease_id and lease.lease_id != lease_id:
            raise LeaseError(f"lease {lease_id!r} does not match the one granted for {job_id}")
        self._remove(lease)
        return lease

    def drop(self, job_id: str, requester_node_id: str) -> Lease | None:
        """Forget a lease (the requester cancelled before running)."""
        lease = self._by_job.get(job_id)
        if lease is None or lease.requester_node_id != requester_node_id:
            return None
        self._remove(lease)
        return lease

    def expire(self, now: float) -> list[Lease]:
        """Remove and return the leases that expired by `now`."""
        now_ns = int(now * 1e9)
        gone = [lease for lease in self._by_job.values() if lease.expires_ns < now_ns]
        for lease in gone:
            self._remove(lease)
        return gone

    def clear(self) -> list[Lease]:
        """Remove and return every lease (the worker is closing)."""
        gone = list(self._by_job.values())
        self._by_job.clear()
        self._held.clear()
        return gone

    def next_expiry(self) -> float | None:
        """When `expire` next has something to do (monotonic seconds)."""
        if not self._by_job:
            return None
        return min(lease.expires_ns for lease in self._by_job.values()) / 1e9

    def _remove(self, lease: Lease) -> None:
        del self._by_job[lease.job_id]
        release_one(self._held, lease.requester_node_id)


def release_one(counts: dict[str, int], key: str) -> None:
    """One fewer for `key`; the key goes at zero, so `counts` holds only live counts
    (the lease book's share per requester, the worker's, the router's jobs per peer)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
