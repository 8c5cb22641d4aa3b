"""What the servicer's Submit needs from whoever places jobs (remote.JobRouter).

`api` and `remote` are separate layers (remote sits above api and net), so
the servicer sees the router through this protocol, as it sees the DHT
through `DhtView`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from plasm.v1 import job_pb2

from plasm_grpc.core.jobs.placement import Placement
from plasm_grpc.core.jobs.session import Attempt
from plasm_grpc.jobs.executor import JobRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutedJob:
    """A job's result, its receipt checked by this node, and how it was placed."""

    result: job_pb2.JobResult
    executor_node_id: str
    attempts: Sequence[Attempt]


class PlacementError(Exception):
    """No result: `reason` is an ErrorReason name (NO_WORKER, CANCELLED, BUSY, ...)."""

    def __init__(self, reason: str, message: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.attempts = attempts


class JobRouter(Protocol):
    async def submit(
        self, job: JobRequest, *, job_id: str, placement: Placement, timeout_s: float
    ) -> RoutedJob:
        """Run `job` where `placement` says; raises PlacementError."""
        ...

    def cancel(self, job_id: str) -> bool | None:
        """True: being cancelled; False: already ended; None: no such job here."""
        ...
