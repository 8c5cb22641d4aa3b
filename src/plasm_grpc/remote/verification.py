"""Checking what a worker answers against what this node sent.

Nothing a worker says is believed until it checks out here:

- `read_decline`: a decline must be signed (`plasm/decline/v1`) by the worker
  the connection authenticated, name that worker, and be for this job.
- `read_result` (`check_result` once decoded): the result's receipt must be
  signed by that worker as executor, name this node as requester and the
  job's id, and every hash in it must equal what was sent (module, input) and
  what came back (stdout, stderr); its outcome and exit code must be the
  result's, and every limit the client set the one the receipt says applied.

These are checks over values: no connection, no session, no consequence. The
caller decides what a failed check costs the worker (the router distrusts
it), so a result fetched any way is checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError
from plasm.v1 import envelope_pb2, job_pb2

from plasm_grpc import wire
from plasm_grpc.api.verify import verify_receipt
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.errors import InvalidIdError, VerificationError
from plasm_grpc.core.jobs.events import DeclineReason
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.jobs.hashing import off_loop_if_large
from plasm_grpc.remote.messages import clip
from plasm_grpc.remote.outbound import OutboundJob

__all__ = ["CheckedDecline", "CheckedResult", "Rejected", "check_result", "read_decline"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An answer that did not check out, and why."""

    problem: str


@dataclass(frozen=True, slots=True)
class CheckedDecline:
    reason: DeclineReason
    detail: str  # the worker's words, clipped
    envelope: envelopes.SignedEnvelope


@dataclass(frozen=True, slots=True)
class CheckedResult:
    result: job_pb2.JobResult
    outcome: Outcome


def read_decline(
    decline: envelope_pb2.SignedEnvelope, *, job_id: str, worker: str
) -> CheckedDecline | Rejected:
    """A decline of job `job_id` that `worker` (the connection's identity) signed."""
    envelope = wire.envelope_from_pb(decline)
    try:
        envelopes.verify(envelope, envelopes.DECLINE_DOMAIN)
        signer = envelope.signer_node_id
    except (VerificationError, InvalidIdError) as err:
        return Rejected(f"a decline with a bad signature ({err})")
    body = job_pb2.JobDecline()
    try:
        body.ParseFromString(envelope.payload)
        reason = DeclineReason(body.reason)
    except (DecodeError, ValueError):
        return Rejected("a malformed decline")
    if signer != worker or body.job_id != job_id or body.worker_node_id != worker:
        return Rejected("a decline not signed by the worker, or for another job")
    return CheckedDecline(reason, clip(body.detail), envelope)


async def read_result(reply: bytes, *, sent: OutboundJob, worker: str) -> CheckedResult | Rejected:
    """A JobResult for `sent` from `worker`, decoded and checked."""
    result = job_pb2.JobResult()
    try:
        result.ParseFromString(reply)
    except DecodeError:
        return Rejected("the result does not decode")
    problem = await check_result(result, sent=sent, worker=worker)
    if problem is not None:
        return Rejected(problem)
    try:
        outcome = Outcome(result.outcome)
    except ValueError:
        return Rejected("an unknown outcome")
    return CheckedResult(result, outcome)


async def check_result(result: job_pb2.JobResult, *, sent: OutboundJob, worker: str) -> str | None:
    """Why `result` cannot be trusted, or None when every check passes."""
    if result.job_id != sent.job_id:
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
        return f"receipt check {failed[0].name} failed: {clip(failed[0].detail)}"
    body = checked.body
    assert body is not None
    expected = {
        "job_id": sent.job_id,
        "requester_node_id": sent.requester_node_id,
        "module_sha256": sent.module_sha256,
        "input_sha256": sent.input_sha256,
    }
    for name, value in expected.items():
        if getattr(body, name) != value:
            return f"the receipt's {name} is not the job's"
    if body.outcome != result.outcome or body.exit_code != result.exit_code:
        return "the result's outcome or exit code is not the receipt's"
    requested = wire.limits_to_pb(sent.request.limits)
    for f in requested.DESCRIPTOR.fields:
        want = getattr(requested, f.name)
        if want and getattr(body.limits, f.name) != want:
            return f"the receipt's limit {f.name} is not the one requested"
    return None
