"""Conversion between generated protobuf messages and core values.

With `plasm_grpc.net`, the only place that touches generated code.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.message import DecodeError as ProtoDecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from plasm.v1 import (
    capability_pb2,
    envelope_pb2,
    errors_pb2,
    job_pb2,
    manifest_pb2,
    receipt_pb2,
)

from plasm_grpc.api.receipt_codec import DecodeError, decode_receipt_body, receipt_from_pb
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.jobs.events import DeclineReason, EventKind, JobEvent
from plasm_grpc.core.jobs.placement import Placement, PlacementMode
from plasm_grpc.core.jobs.session import Attempt
from plasm_grpc.core.receipt import Receipt
from plasm_grpc.wire import (
    capabilities_to_pb,
    envelope_from_pb,
    envelope_to_pb,
    limits_from_pb,
    limits_to_pb,
)

# Trailing-metadata key carrying a plasm.v1.ErrorReason value name on a failed RPC.
__all__ = [  # the conversions shared with net come from plasm_grpc.wire
    "REASON_KEY",
    "DecodeError",
    "capabilities_to_pb",
    "decode_receipt_body",
    "encode_envelope",
    "encode_receipt",
    "env_pairs",
    "envelope_from_bytes",
    "envelope_from_pb",
    "envelope_to_pb",
    "job_event_to_pb",
    "limits_from_pb",
    "limits_to_pb",
    "receipt_from_pb",
    "receipt_to_pb",
]

REASON_KEY: Final = "plasm-error-reason"


def _check_enum_mirrors(
    core: type[EventKind] | type[DeclineReason], values: dict[str, int], prefix: str
) -> None:
    """The core enum and the proto enum name the same values, both ways."""
    expected = {f"{prefix}{member.name}": int(member) for member in core}
    actual = {name: value for name, value in values.items() if not name.endswith("_UNSPECIFIED")}
    if expected != actual:
        raise RuntimeError(
            f"{core.__name__} does not mirror the proto enum: "
            f"{sorted(set(expected.items()) ^ set(actual.items()))}"
        )


_check_enum_mirrors(EventKind, dict(job_pb2.JobEventKind.items()), "JOB_EVENT_KIND_")
_check_enum_mirrors(DeclineReason, dict(job_pb2.DeclineReason.items()), "DECLINE_REASON_")


def envelope_from_bytes(data: bytes) -> SignedEnvelope:
    msg = envelope_pb2.SignedEnvelope()
    try:
        msg.ParseFromString(data)
    except ProtoDecodeError as err:
        raise DecodeError(f"not a SignedEnvelope: {err}") from err
    return envelope_from_pb(msg)


def encode_envelope(envelope: SignedEnvelope) -> bytes:
    return envelope_to_pb(envelope).SerializeToString()


def _timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def receipt_to_pb(receipt: Receipt) -> receipt_pb2.ReceiptBody:
    return receipt_pb2.ReceiptBody(
        version=receipt.version,
        job_id=receipt.job_id,
        module_sha256=receipt.module_sha256,
        input_sha256=receipt.input_sha256,
        stdout_sha256=receipt.stdout_sha256,
        stderr_sha256=receipt.stderr_sha256,
        stdout_bytes=receipt.stdout_bytes,
        stderr_bytes=receipt.stderr_bytes,
        outcome=receipt_pb2.Outcome.ValueType(int(receipt.outcome)),
        exit_code=receipt.exit_code,
        trap_code=receipt.trap_code,
        fuel_consumed=receipt.fuel_consumed,
        wall_time_us=receipt.wall_time_us,
        limits=limits_to_pb(receipt.limits),
        runtime=receipt_pb2.RuntimeInfo(
            name=receipt.runtime.name,
            version=receipt.runtime.version,
            wasi_version=receipt.runtime.wasi_version,
            config=list(receipt.runtime.config),
        ),
        executor_node_id=receipt.executor_node_id,
        requester_node_id=receipt.requester_node_id,
        started_at=_timestamp(receipt.started_at_ns),
        finished_at=_timestamp(receipt.finished_at_ns),
        detail=receipt.detail,
    )


def encode_receipt(receipt: Receipt) -> bytes:
    return receipt_to_pb(receipt).SerializeToString(deterministic=True)


def env_pairs(manifest: manifest_pb2.JobManifest) -> tuple[tuple[str, str], ...]:
    return tuple((e.name, e.value) for e in manifest.env)


def job_event_to_pb(event: JobEvent) -> job_pb2.JobEvent:
    """Raises ValueError when `event.error_reason` names no plasm.v1.ErrorReason."""
    msg = job_pb2.JobEvent(
        job_id=event.job_id,
        kind=job_pb2.JobEventKind.ValueType(int(event.kind)),
        at=_timestamp(event.at_ns),
        attempt=event.attempt,
        node_id=event.node_id,
        detail=event.detail,
        exit_code=event.exit_code,
        may_have_run=event.may_have_run,
        module_bytes=event.module_bytes,
    )
    if event.decline_reason is not None:
        msg.decline_reason = job_pb2.DeclineReason.ValueType(int(event.decline_reason))
    if event.outcome is not None:
        msg.outcome = receipt_pb2.Outcome.ValueType(int(event.outcome))
    if event.error_reason:
        msg.error_reason = errors_pb2.ErrorReason.Value(f"ERROR_REASON_{event.error_reason}")
    if event.decline is not None:
        msg.decline.CopyFrom(envelope_to_pb(event.decline))
    return msg


def placement_from_pb(msg: capability_pb2.PlacementRequirements) -> Placement:
    """UNSPECIFIED is AUTO (the default); raises ValueError for a bad combination."""
    mode = PlacementMode.AUTO if msg.mode == 0 else PlacementMode(msg.mode)
    return Placement(
        mode=mode,
        peer_node_id=msg.peer_node_id,
        arch=msg.arch,
        wasi_version=msg.wasi_version,
        min_memory_bytes=msg.min_memory_bytes,
    )


def attempt_to_pb(attempt: Attempt) -> job_pb2.JobAttempt:
    return job_pb2.JobAttempt(
        node_id=attempt.node_id,
        result=job_pb2.AttemptResult.ValueType(int(attempt.result or 0)),
        decline_reason=job_pb2.DeclineReason.ValueType(int(attempt.decline_reason or 0)),
        detail=attempt.detail,
        may_have_run=attempt.may_have_run,
        module_bytes_sent=attempt.module_bytes_sent,
        duration_us=int(attempt.duration_s * 1_000_000),
    )
