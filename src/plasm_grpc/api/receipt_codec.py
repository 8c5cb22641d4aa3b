"""ReceiptBody bytes <-> core Receipt, apart from the rest of the codec so that
verifying a receipt (`plasm submit`, `plasm verify`) loads no job machinery."""

from __future__ import annotations

from google.protobuf.message import DecodeError as ProtoDecodeError
from plasm.v1 import receipt_pb2

from plasm_grpc.core.errors import PlasmError
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.receipt import Receipt, RuntimeInfo
from plasm_grpc.wire import limits_from_pb

__all__ = ["DecodeError", "decode_receipt_body", "receipt_from_pb"]


class DecodeError(PlasmError):
    """Bytes that should hold a message do not."""


def decode_receipt_body(payload: bytes) -> receipt_pb2.ReceiptBody:
    """Decode a receipt payload whose signature has already been checked."""
    body = receipt_pb2.ReceiptBody()
    try:
        body.ParseFromString(payload)
    except ProtoDecodeError as err:
        raise DecodeError(f"receipt payload is not a ReceiptBody: {err}") from err
    return body


def receipt_from_pb(body: receipt_pb2.ReceiptBody) -> Receipt:
    try:
        outcome = Outcome(body.outcome)
    except ValueError as err:
        raise DecodeError(f"receipt has unknown outcome {body.outcome}") from err
    try:
        return Receipt(
            version=body.version,
            job_id=body.job_id,
            module_sha256=body.module_sha256,
            input_sha256=body.input_sha256,
            stdout_sha256=body.stdout_sha256,
            stderr_sha256=body.stderr_sha256,
            stdout_bytes=body.stdout_bytes,
            stderr_bytes=body.stderr_bytes,
            outcome=outcome,
            exit_code=body.exit_code,
            trap_code=body.trap_code,
            fuel_consumed=body.fuel_consumed,
            wall_time_us=body.wall_time_us,
            limits=limits_from_pb(body.limits),
            runtime=RuntimeInfo(
                name=body.runtime.name,
                version=body.runtime.version,
                wasi_version=body.runtime.wasi_version,
                config=tuple(body.runtime.config),
            ),
            executor_node_id=body.executor_node_id,
            requester_node_id=body.requester_node_id,
            started_at_ns=body.started_at.ToNanoseconds(),
            finished_at_ns=body.finished_at.ToNanoseconds(),
            detail=body.detail,
        )
    except PlasmError as err:
        raise DecodeError(f"receipt body is malformed: {err}") from err
