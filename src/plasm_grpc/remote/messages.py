"""The `plasm.v1.Jobs/*` overlay messages: method names, conversions, checks.

Everything decoded here comes from a peer: sizes and ids are checked before
anything is trusted, and failures raise `JobWireError` with a reason the
handler sends back.
"""

from __future__ import annotations

from typing import Final, TypeVar

from google.protobuf.message import DecodeError
from plasm.v1 import capability_pb2, job_pb2, receipt_pb2

from plasm_grpc import wire
from plasm_grpc.core.errors import InvalidIdError, LimitError
from plasm_grpc.core.ids import check_hex64, check_job_id
from plasm_grpc.core.jobs.admission import Offer
from plasm_grpc.jobs.executor import JobDone

OFFER_METHOD: Final = "plasm.v1.Jobs/Offer"
RUN_METHOD: Final = "plasm.v1.Jobs/Run"
STATUS_METHOD: Final = "plasm.v1.Jobs/Status"
CANCEL_METHOD: Final = "plasm.v1.Jobs/Cancel"

MAX_OFFER_BYTES: Final = 4096
MAX_SMALL_BYTES: Final = 256  # JobCancel, JobStatusQuery
MAX_TEXT: Final = 64
MAX_DETAIL: Final = 300  # a peer's text in our events and errors


class JobWireError(ValueError):
    """A peer's message that does not decode or check out."""


_M = TypeVar("_M", job_pb2.JobOffer, job_pb2.JobCancel, job_pb2.JobStatusQuery, job_pb2.JobRun)


def _parse(message: _M, payload: bytes, limit: int | None) -> _M:
    if limit is not None and len(payload) > limit:
        raise JobWireError(f"{type(message).__name__} of {len(payload)} bytes; at most {limit}")
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise JobWireError(f"malformed {type(message).__name__}") from err
    return message


def offer_to_pb(offer: Offer) -> job_pb2.JobOffer:
    msg = job_pb2.JobOffer(
        job_id=offer.job_id,
        requirements=capability_pb2.PlacementRequirements(
            arch=offer.arch,
            wasi_version=offer.wasi_version,
            min_memory_bytes=offer.min_memory_bytes,
        ),
        limits=wire.limits_to_pb(offer.limits),
        module_sha256=offer.module_sha256,
        module_size=offer.module_size,
        input_size=offer.input_size,
        requester_node_id=offer.requester_node_id,
        input_sha256=offer.input_sha256,
    )
    msg.deadline.FromNanoseconds(offer.deadline_ns)
    return msg


def result_to_pb(done: JobDone) -> job_pb2.JobResult:
    """A job this node's executor ran, as the JobResult a requester (or client) gets."""
    ex = done.execution
    return job_pb2.JobResult(
        job_id=done.job_id,
        outcome=receipt_pb2.Outcome.ValueType(int(ex.outcome)),
        exit_code=ex.exit_code,
        trap_code=ex.trap_code,
        stdout=ex.stdout,
        stderr=ex.stderr,
        receipt=wire.envelope_to_pb(done.envelope),
        detail=ex.detail,
    )


def offer_from_bytes(payload: bytes) -> Offer:
    msg = _parse(job_pb2.JobOffer(), payload, MAX_OFFER_BYTES)
    req = msg.requirements
    if len(req.arch) > MAX_TEXT or len(req.wasi_version) > MAX_TEXT:
        raise JobWireError("requirements.arch and wasi_version are short strings")
    try:
        return Offer(
            job_id=check_job_id(msg.job_id),
            requester_node_id=check_hex64(msg.requester_node_id, "requester_node_id"),
            module_sha256=check_hex64(msg.module_sha256, "module_sha256"),
            module_size=msg.module_size,
            input_size=msg.input_size,
            input_sha256=check_hex64(msg.input_sha256, "input_sha256"),
            limits=wire.limits_from_pb(msg.limits),
            deadline_ns=msg.deadline.ToNanoseconds(),
            arch=req.arch,
            wasi_version=req.wasi_version,
            min_memory_bytes=req.min_memory_bytes,
        )
    except (InvalidIdError, LimitError, ValueError) as err:
        raise JobWireError(str(err)) from err


def run_from_bytes(payload: bytes) -> job_pb2.JobRun:
    """Size is bounded by the overlay's max_message_bytes; ids are checked here."""
    msg = _parse(job_pb2.JobRun(), payload, None)
    try:
        check_job_id(msg.job_id)
    except InvalidIdError as err:
        raise JobWireError(str(err)) from err
    if len(msg.lease_id) > MAX_TEXT:
        raise JobWireError("lease_id is too long")
    return msg


def cancel_job_id(payload: bytes) -> str:
    return _checked_job_id(_parse(job_pb2.JobCancel(), payload, MAX_SMALL_BYTES).job_id)


def status_job_id(payload: bytes) -> str:
    return _checked_job_id(_parse(job_pb2.JobStatusQuery(), payload, MAX_SMALL_BYTES).job_id)


def clip(text: str) -> str:
    """A peer's text cut to what our events and errors carry."""
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


def _checked_job_id(job_id: str) -> str:
    try:
        return check_job_id(job_id)
    except InvalidIdError as err:
        raise JobWireError(str(err)) from err
