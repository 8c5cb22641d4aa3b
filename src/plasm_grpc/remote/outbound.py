"""A job as this node sends it to workers, and the messages built from it.

`OutboundJob` is what was asked: the job id, the client's request (args, env,
stdin, limits), the module's hash (and its bytes, when they may have to
travel), the input's hash, the placement requirements and the deadline.
`attempts` builds each worker's JobOffer and JobRun from it; `verification`
checks whatever a worker answers against it. It is fixed for the job's life:
every attempt, on any worker, sends the same job.

`module_to_send` settles, before the job starts, which module it runs: the
hash of the bytes the client sent (checked against the hash it named), or the
module this node holds for the hash it named. Held bytes are read when a
worker may need them: at once for a named peer, at the first offer for
automatic placement (`with_module`), which often runs the job here and then
never reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace

from plasm.v1 import job_pb2

from plasm_grpc.api.routing import PlacementError
from plasm_grpc.core.jobs.admission import Offer
from plasm_grpc.core.jobs.placement import Placement, PlacementMode
from plasm_grpc.jobs.executor import JobRequest
from plasm_grpc.jobs.hashing import arg_env_bytes, module_sha256
from plasm_grpc.remote.messages import offer_to_pb

__all__ = ["OutboundJob", "module_to_send", "with_module"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundJob:
    job_id: str
    requester_node_id: str  # this node
    request: JobRequest
    module_sha256: str
    module: bytes | None  # None: not read yet (a local run needs no copy; `with_module`)
    input_sha256: str  # "" for a local run (nothing to check it against)
    placement: Placement
    deadline: float  # on the requester's monotonic clock

    @property
    def module_size(self) -> int:
        return len(self.module) if self.module is not None else 0

    def offer_pb(self, deadline_ns: int) -> job_pb2.JobOffer:
        """The JobOffer; `deadline_ns`: the deadline on this node's wall clock."""
        job, placement = self.request, self.placement
        return offer_to_pb(
            Offer(
                job_id=self.job_id,
                requester_node_id=self.requester_node_id,
                module_sha256=self.module_sha256,
                module_size=self.module_size,
                input_size=len(job.stdin) + arg_env_bytes(job.args, job.env),
                input_sha256=self.input_sha256,
                limits=job.limits,
                deadline_ns=deadline_ns,
                arch=placement.arch,
                wasi_version=placement.wasi_version,
                min_memory_bytes=placement.min_memory_bytes,
            )
        )

    def run_pb(self, lease_id: str, *, send_module: bool) -> bytes:
        """The JobRun, serialized; `lease_id` "" means the lease the offer gets."""
        job = self.request
        run = job_pb2.JobRun(
            job_id=self.job_id,
            lease_id=lease_id,
            module=self.module if send_module and self.module else b"",
            args=job.args,
            stdin=job.stdin,
        )
        for name, value in job.env:
            run.env.add(name=name, value=value)
        return run.SerializeToString()


async def module_to_send(
    job: JobRequest,
    placement: Placement,
    *,
    max_module_bytes: int,
    read_module: Callable[[str], bytes | None],
    holds_module: Callable[[str], bool],
) -> tuple[str, bytes | None]:
    """The module's hash, and its bytes when they are already at hand or will
    surely travel (a named peer); None when they are read later, if at all.

    `read_module`: this node's copy of a module (read off the loop);
    `holds_module`: whether it has one, without reading it. Raises
    `PlacementError` for a hash that does not match or is not held.
    """
    if job.module:
        if len(job.module) > max_module_bytes:
            return job.module_sha256, job.module  # the executor refuses it, with sizes
        sha = await module_sha256(job.module)
        if job.module_sha256 and job.module_sha256 != sha:
            raise PlacementError(
                "MODULE_HASH_MISMATCH",
                f"module bytes hash to {sha}, manifest says {job.module_sha256}",
            )
        return sha, job.module
    if not job.module_sha256:
        raise PlacementError("INVALID_REQUEST", "send the module bytes or manifest.module_sha256")
    if placement.mode is PlacementMode.LOCAL:
        return job.module_sha256, None
    if placement.mode is PlacementMode.AUTO:
        if not holds_module(job.module_sha256):
            raise _not_held(job.module_sha256)
        return job.module_sha256, None
    return job.module_sha256, await _read(job.module_sha256, read_module)


async def with_module(job: OutboundJob, read_module: Callable[[str], bytes | None]) -> OutboundJob:
    """`job` with its module's bytes, read now if they were left for later."""
    if job.module is not None:
        return job
    return replace(job, module=await _read(job.module_sha256, read_module))


async def _read(sha256: str, read_module: Callable[[str], bytes | None]) -> bytes:
    module = await asyncio.to_thread(read_module, sha256)
    if module is None:
        raise _not_held(sha256)
    return module


def _not_held(sha256: str) -> PlacementError:
    return PlacementError(
        "MODULE_NOT_FOUND", f"this node does not hold module {sha256}; send its bytes"
    )
