"""Which module a job sends, and when the node reads its own copy.

Automatic placement by hash often runs the job on this node, which needs no
copy of the module: the bytes (up to 16 MiB, hashed again on every read) are
read only when a worker is offered the job.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from plasm_grpc.api.routing import PlacementError
from plasm_grpc.core.jobs.placement import Placement, PlacementMode
from plasm_grpc.core.limits import DEFAULT_LIMITS
from plasm_grpc.jobs.executor import JobRequest
from plasm_grpc.remote.outbound import OutboundJob, module_to_send, with_module

MODULE = b"\x00asm\x01\x00\x00\x00"
SHA = hashlib.sha256(MODULE).hexdigest()
PEER = "ab" * 32


class Disk:
    """This node's module copies, counting the reads."""

    def __init__(self, held: dict[str, bytes]) -> None:
        self.held = held
        self.reads = 0

    def read(self, sha256: str) -> bytes | None:
        self.reads += 1
        return self.held.get(sha256)

    def holds(self, sha256: str) -> bool:
        return sha256 in self.held


def by_hash(sha256: str = SHA) -> JobRequest:
    return JobRequest(
        module_sha256=sha256, module=b"", args=(), env=(), stdin=b"", limits=DEFAULT_LIMITS
    )


def settle(job: JobRequest, placement: Placement, disk: Disk) -> tuple[str, bytes | None]:
    return asyncio.run(
        module_to_send(
            job,
            placement,
            max_module_bytes=1 << 20,
            read_module=disk.read,
            holds_module=disk.holds,
        )
    )


def outbound(module: bytes | None) -> OutboundJob:
    return OutboundJob(
        job_id="0" * 32,
        requester_node_id="cd" * 32,
        request=by_hash(),
        module_sha256=SHA,
        module=module,
        input_sha256="",
        placement=Placement(),
        deadline=1.0,
    )


def test_automatic_placement_by_hash_reads_the_module_only_for_an_offer() -> None:
    disk = Disk({SHA: MODULE})
    assert settle(by_hash(), Placement(), disk) == (SHA, None)
    assert disk.reads == 0
    job = asyncio.run(with_module(outbound(None), disk.read))
    assert (job.module, job.module_size, disk.reads) == (MODULE, len(MODULE), 1)
    assert asyncio.run(with_module(job, disk.read)) is job  # read once per job
    assert disk.reads == 1


def test_a_named_peer_gets_the_bytes_read_at_once_and_a_local_run_none() -> None:
    disk = Disk({SHA: MODULE})
    peer = Placement(mode=PlacementMode.PEER, peer_node_id=PEER)
    assert settle(by_hash(), peer, disk) == (SHA, MODULE)
    assert settle(by_hash(), Placement(mode=PlacementMode.LOCAL), disk) == (SHA, None)
    assert disk.reads == 1


@pytest.mark.parametrize(
    "placement", [Placement(), Placement(mode=PlacementMode.PEER, peer_node_id=PEER)]
)
def test_a_module_this_node_does_not_hold_is_refused_before_the_job_starts(
    placement: Placement,
) -> None:
    with pytest.raises(PlacementError) as refused:
        settle(by_hash("ef" * 32), placement, Disk({}))
    assert refused.value.reason == "MODULE_NOT_FOUND"


def test_a_copy_gone_by_the_first_offer_ends_the_job_with_module_not_found() -> None:
    with pytest.raises(PlacementError) as gone:
        asyncio.run(with_module(outbound(None), Disk({}).read))
    assert gone.value.reason == "MODULE_NOT_FOUND"


def test_bytes_the_client_sent_are_checked_against_the_hash_it_named() -> None:
    sent = JobRequest(
        module_sha256="ef" * 32, module=MODULE, args=(), env=(), stdin=b"", limits=DEFAULT_LIMITS
    )
    with pytest.raises(PlacementError) as mismatch:
        settle(sent, Placement(), Disk({}))
    assert mismatch.value.reason == "MODULE_HASH_MISMATCH"
    unnamed = JobRequest(
        module_sha256="", module=MODULE, args=(), env=(), stdin=b"", limits=DEFAULT_LIMITS
    )
    assert settle(unnamed, Placement(), Disk({})) == (SHA, MODULE)
