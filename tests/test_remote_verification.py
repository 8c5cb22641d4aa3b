"""`remote.verification`: a worker's decline, result and receipt checked against
the job as sent, with no connection and no session.

The result is a real one: hello run by a real `JobExecutor` (the one
test_executor_remote_api builds) for a requester, signed by the worker's key,
then altered one field at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from conftest import WasmModules
from plasm.v1 import job_pb2, receipt_pb2
from test_executor_remote_api import KEY as WORKER
from test_executor_remote_api import make_executor

from plasm_grpc import wire
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.input_hash import input_sha256
from plasm_grpc.core.jobs.events import DeclineReason
from plasm_grpc.core.jobs.placement import Placement
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.jobs.executor import JobRequest
from plasm_grpc.remote.messages import result_to_pb
from plasm_grpc.remote.outbound import OutboundJob
from plasm_grpc.remote.verification import (
    CheckedDecline,
    CheckedResult,
    Rejected,
    check_result,
    read_decline,
    read_result,
)

STRANGER = NodeKey.from_seed(hashlib.sha256(b"verification test stranger").digest())
REQUESTER = hashlib.sha256(b"verification test requester").hexdigest()
JOB_ID = "ab" * 16
LIMITS = ResourceLimits(max_fuel=50_000_000)


def _run_hello(tmp_path: Path, wasm: WasmModules) -> tuple[OutboundJob, job_pb2.JobResult]:
    request = JobRequest(
        module_sha256="",
        module=wasm.bytes("hello"),
        args=("hello",),
        env=(("GREETING", "hi"),),
        stdin=b"Hello, World",
        limits=LIMITS,
    )
    sent = OutboundJob(
        job_id=JOB_ID,
        requester_node_id=REQUESTER,
        request=request,
        module_sha256=wasm.sha256("hello"),
        module=request.module,
        input_sha256=input_sha256(request.args, request.env, request.stdin),
        placement=Placement(),
        deadline=0.0,
    )

    async def run() -> job_pb2.JobResult:
        async with make_executor(tmp_path) as executor:
            done = await executor.submit(request, job_id=JOB_ID, requester_node_id=REQUESTER)
            return result_to_pb(done)

    return sent, asyncio.run(asyncio.wait_for(run(), 60.0))


def _problem(result: job_pb2.JobResult, sent: OutboundJob, worker: str = WORKER.node_id) -> str:
    return asyncio.run(check_result(result, sent=sent, worker=worker)) or ""


def _altered(
    result: job_pb2.JobResult, change: Callable[[job_pb2.JobResult], None]
) -> job_pb2.JobResult:
    copy = job_pb2.JobResult()
    copy.CopyFrom(result)
    change(copy)
    return copy


def test_a_result_checks_out_only_against_the_job_sent_and_the_worker_that_ran_it(
    tmp_path: Path, wasm: WasmModules
) -> None:
    sent, result = _run_hello(tmp_path, wasm)
    assert result.outcome == receipt_pb2.OUTCOME_SUCCESS
    assert _problem(result, sent) == ""
    checked = asyncio.run(read_result(result.SerializeToString(), sent=sent, worker=WORKER.node_id))
    assert isinstance(checked, CheckedResult)
    assert checked.outcome is Outcome.SUCCESS
    assert checked.result == result

    # The same result, claimed by another worker, or for what was not sent.
    assert "executor" in _problem(result, sent, worker=STRANGER.node_id)
    assert _problem(result, dataclasses.replace(sent, job_id="cd" * 16)).startswith(
        "the result is for job"
    )
    for name, value in [
        ("requester_node_id", STRANGER.node_id),
        ("module_sha256", "00" * 32),
        ("input_sha256", "00" * 32),
    ]:
        assert _problem(result, dataclasses.replace(sent, **{name: value})) == (
            f"the receipt's {name} is not the job's"
        )
    asked_more = dataclasses.replace(sent.request, limits=ResourceLimits(max_fuel=60_000_000))
    assert _problem(result, dataclasses.replace(sent, request=asked_more)) == (
        "the receipt's limit max_fuel is not the one requested"
    )

    # The result altered after the worker signed its receipt.
    assert "stdout" in _problem(_altered(result, lambda r: setattr(r, "stdout", b"forged")), sent)
    assert _problem(_altered(result, lambda r: setattr(r, "exit_code", 7)), sent) == (
        "the result's outcome or exit code is not the receipt's"
    )
    assert "signature" in _problem(
        _altered(result, lambda r: setattr(r.receipt, "signature", bytes(64))), sent
    )
    junk = asyncio.run(read_result(b"\xff\xff", sent=sent, worker=WORKER.node_id))
    assert junk == Rejected("the result does not decode")


def _decline(key: NodeKey, *, job_id: str = JOB_ID, worker: str | None = None) -> bytes:
    body = job_pb2.JobDecline(
        job_id=job_id,
        reason=job_pb2.DECLINE_REASON_BUSY,
        detail="all 2 job places (slots and queue) are taken " + "x" * 400,
        worker_node_id=worker if worker is not None else key.node_id,
    )
    return body.SerializeToString()


def _signed(key: NodeKey, payload: bytes) -> job_pb2.JobResponse:
    envelope = envelopes.sign(key, envelopes.DECLINE_DOMAIN, payload)
    return job_pb2.JobResponse(decline=wire.envelope_to_pb(envelope))


def test_a_decline_counts_only_when_the_worker_signed_it_for_this_job() -> None:
    def read(response: job_pb2.JobResponse) -> CheckedDecline | Rejected:
        return read_decline(response.decline, job_id=JOB_ID, worker=WORKER.node_id)

    checked = read(_signed(WORKER, _decline(WORKER)))
    assert isinstance(checked, CheckedDecline)
    assert checked.reason is DeclineReason.BUSY
    assert checked.detail.startswith("all 2 job places")
    assert len(checked.detail) <= 301  # a peer's text is clipped
    assert checked.envelope.signer_node_id == WORKER.node_id

    not_theirs = "a decline not signed by the worker, or for another job"
    assert read(_signed(STRANGER, _decline(STRANGER))) == Rejected(not_theirs)
    assert read(_signed(STRANGER, _decline(STRANGER, worker=WORKER.node_id))) == Rejected(
        not_theirs
    )
    assert read(_signed(WORKER, _decline(WORKER, job_id="cd" * 16))) == Rejected(not_theirs)
    assert read(_signed(WORKER, b"\xff\xff")) == Rejected("a malformed decline")
    forged = _signed(WORKER, _decline(WORKER))
    forged.decline.payload = _decline(WORKER) + b"\x18\x01"  # the bytes changed after signing
    rejected = read(forged)
    assert isinstance(rejected, Rejected)
    assert rejected.problem.startswith("a decline with a bad signature")
