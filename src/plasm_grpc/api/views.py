"""Typed, read-only views of what a node answers, for clients such as `plasm`.

A view holds the plain values a client shows (enum values as their names
without the proto prefix, timestamps as proto3 JSON text) and keeps the
message it came from, so `json()` renders the exact proto3 JSON (camelCase)
without the client touching generated code (with or without the fields left
at their default, as each command always wrote it). Views are NamedTuples, not
dataclasses: building a dataclass costs about 1 ms at import, and `plasm`
imports these on every run. json_format is imported only when JSON is asked
for: it is not needed to run a job.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf.message import Message
from plasm.v1 import (
    errors_pb2,
    job_pb2,
    reachability_pb2,
    receipt_pb2,
    service_pb2,
)

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.wire import envelope_from_pb, envelope_to_pb

__all__ = [
    "Attempt",
    "Connection",
    "Event",
    "NodeInfo",
    "Peer",
    "PeerLookup",
    "ReceiptBody",
    "ReceiptPage",
    "StoredReceipt",
    "SubmitResult",
    "Verification",
    "VerifyCheck",
    "Workers",
    "envelope_json",
    "envelope_json_text",
    "message_json",
]


def message_json(message: Message, *, all_fields: bool = False) -> dict[str, Any]:
    """`message` as proto3 JSON; `all_fields` also writes fields left at their default."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, always_print_fields_with_no_presence=all_fields)


def envelope_json(envelope: SignedEnvelope) -> dict[str, Any]:
    return message_json(envelope_to_pb(envelope))


def envelope_json_text(envelope: SignedEnvelope) -> str:
    """A receipt file's text: the SignedEnvelope as indented proto3 JSON."""
    from google.protobuf import json_format

    return json_format.MessageToJson(envelope_to_pb(envelope), indent=2) + "\n"


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """A `plasm.v1` enum value's name without its prefix; the number when this
    client does not know it (a newer node)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


class Event(NamedTuple):
    """One job event (plasm.v1.JobEvent)."""

    kind: str  # JobEventKind name without prefix, e.g. "FINISHED"; the number if unknown
    at_ns: int
    at: str  # RFC 3339, as proto3 JSON writes it
    attempt: int
    node_id: str
    detail: str
    decline_reason: str  # DeclineReason name without prefix
    outcome: str  # Outcome name without prefix, e.g. "NONZERO_EXIT"
    exit_code: int
    may_have_run: bool
    module_bytes: int
    error_reason: str  # ErrorReason name without prefix
    message: job_pb2.JobEvent

    def json(self) -> dict[str, Any]:
        return message_json(self.message)

    @classmethod
    def from_pb(cls, msg: job_pb2.JobEvent) -> Event:
        return cls(
            kind=enum_label(job_pb2.JobEventKind, msg.kind, "JOB_EVENT_KIND_"),
            at_ns=msg.at.ToNanoseconds(),
            at=msg.at.ToJsonString(),
            attempt=msg.attempt,
            node_id=msg.node_id,
            detail=msg.detail,
            decline_reason=enum_label(job_pb2.DeclineReason, msg.decline_reason, "DECLINE_REASON_"),
            outcome=enum_label(receipt_pb2.Outcome, msg.outcome, "OUTCOME_"),
            exit_code=msg.exit_code,
            may_have_run=msg.may_have_run,
            module_bytes=msg.module_bytes,
            error_reason=enum_label(errors_pb2.ErrorReason, msg.error_reason, "ERROR_REASON_"),
            message=msg,
        )


class Attempt(NamedTuple):
    """One placement attempt of a job (plasm.v1.JobAttempt)."""

    node_id: str
    result: str  # AttemptResult name without prefix, e.g. "DECLINED"
    decline_reason: str
    detail: str
    duration_us: int
    may_have_run: bool
    message: job_pb2.JobAttempt

    def json(self) -> dict[str, Any]:
        return message_json(self.message, all_fields=True)

    @classmethod
    def from_pb(cls, msg: job_pb2.JobAttempt) -> Attempt:
        return cls(
            node_id=msg.node_id,
            result=enum_label(job_pb2.AttemptResult, msg.result, "ATTEMPT_RESULT_"),
            decline_reason=enum_label(job_pb2.DeclineReason, msg.decline_reason, "DECLINE_REASON_"),
            detail=msg.detail,
            duration_us=msg.duration_us,
            may_have_run=msg.may_have_run,
            message=msg,
        )


class ReceiptBody(NamedTuple):
    """A decoded receipt (plasm.v1.ReceiptBody)."""

    job_id: str
    outcome: str
    detail: str
    exit_code: int
    trap_code: str
    fuel_consumed: int
    max_fuel: int
    wall_time_us: int
    module_sha256: str
    input_sha256: str
    stdout_bytes: int
    stdout_sha256: str
    stderr_bytes: int
    stderr_sha256: str
    executor_node_id: str
    runtime_name: str
    runtime_version: str
    wasi_version: str
    finished_at: str
    message: receipt_pb2.ReceiptBody

    def json(self) -> dict[str, Any]:
        return message_json(self.message, all_fields=True)

    @classmethod
    def from_pb(cls, msg: receipt_pb2.ReceiptBody) -> ReceiptBody:
        return cls(
            job_id=msg.job_id,
            outcome=enum_label(receipt_pb2.Outcome, msg.outcome, "OUTCOME_"),
            detail=msg.detail,
            exit_code=msg.exit_code,
            trap_code=msg.trap_code,
            fuel_consumed=msg.fuel_consumed,
            max_fuel=msg.limits.max_fuel,
            wall_time_us=msg.wall_time_us,
            module_sha256=msg.module_sha256,
            input_sha256=msg.input_sha256,
            stdout_bytes=msg.stdout_bytes,
            stdout_sha256=msg.stdout_sha256,
            stderr_bytes=msg.stderr_bytes,
            stderr_sha256=msg.stderr_sha256,
            executor_node_id=msg.executor_node_id,
            runtime_name=msg.runtime.name,
            runtime_version=msg.runtime.version,
            wasi_version=msg.runtime.wasi_version,
            finished_at=msg.finished_at.ToJsonString(),
            message=msg,
        )


class SubmitResult(NamedTuple):
    """A Submit's answer: the job's result, its attempts and who ran it."""

    job_id: str
    executor_node_id: str
    attempts: tuple[Attempt, ...]
    outcome: str
    exit_code: int
    trap_code: str
    detail: str
    stdout: bytes
    stderr: bytes
    receipt: SignedEnvelope
    message: service_pb2.SubmitResponse

    def json(self) -> dict[str, Any]:
        return message_json(self.message)

    @classmethod
    def from_pb(cls, msg: service_pb2.SubmitResponse) -> SubmitResult:
        result = msg.result
        return cls(
            job_id=result.job_id,
            executor_node_id=msg.executor_node_id,
            attempts=tuple(Attempt.from_pb(a) for a in msg.attempts),
            outcome=enum_label(receipt_pb2.Outcome, result.outcome, "OUTCOME_"),
            exit_code=result.exit_code,
            trap_code=result.trap_code,
            detail=result.detail,
            stdout=result.stdout,
            stderr=result.stderr,
            receipt=envelope_from_pb(result.receipt),
            message=msg,
        )


class VerifyCheck(NamedTuple):
    name: str
    passed: bool
    detail: str


class Verification(NamedTuple):
    """The node's Verify answer."""

    valid: bool
    checks: tuple[VerifyCheck, ...]
    message: service_pb2.VerifyResponse

    def json(self) -> dict[str, Any]:
        return message_json(self.message)

    @classmethod
    def from_pb(cls, msg: service_pb2.VerifyResponse) -> Verification:
        checks = tuple(
            VerifyCheck(name=c.name, passed=c.passed, detail=c.detail) for c in msg.checks
        )
        return cls(valid=msg.valid, checks=checks, message=msg)


class StoredReceipt(NamedTuple):
    envelope: SignedEnvelope
    body: ReceiptBody
    message: service_pb2.StoredReceipt

    def json(self) -> dict[str, Any]:
        return message_json(self.message)

    @classmethod
    def from_pb(cls, msg: service_pb2.StoredReceipt) -> StoredReceipt:
        return cls(
            envelope=envelope_from_pb(msg.receipt),
            body=ReceiptBody.from_pb(msg.body),
            message=msg,
        )


class ReceiptPage(NamedTuple):
    receipts: tuple[ReceiptBody, ...]
    next_page_token: str
    message: service_pb2.ListReceiptsResponse

    def json(self) -> dict[str, Any]:
        return message_json(self.message)

    @classmethod
    def from_pb(cls, msg: service_pb2.ListReceiptsResponse) -> ReceiptPage:
        return cls(
            receipts=tuple(ReceiptBody.from_pb(r.body) for r in msg.receipts),
            next_page_token=msg.next_page_token,
            message=msg,
        )


class Peer(NamedTuple):
    """A peer the node knows (plasm.v1.KnownPeer) and what its signed record says."""

    node_id: str
    address: str
    connected: bool
    rtt_us: int
    has_record: bool
    arch: str
    runtime: str  # "name version (wasi version)"
    max_memory_bytes: int
    free_slots: int
    total_slots: int
    record_seq: int
    record_expires_at: str
    record_addresses: tuple[str, ...]
    message: service_pb2.KnownPeer

    def json(self) -> dict[str, Any]:
        return message_json(self.message, all_fields=True)

    @classmethod
    def from_pb(cls, msg: service_pb2.KnownPeer) -> Peer:
        record = msg.record_content
        caps = record.capabilities
        return cls(
            node_id=msg.node_id,
            address=msg.address,
            connected=msg.connected,
            rtt_us=msg.rtt_us,
            has_record=msg.HasField("record_content"),
            arch=caps.arch,
            runtime=f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})",
            max_memory_bytes=caps.max_limits.max_memory_bytes,
            free_slots=caps.free_job_slots,
            total_slots=caps.total_job_slots,
            record_seq=record.seq,
            record_expires_at=record.expires_at.ToJsonString(),
            record_addresses=tuple(record.addresses),
            message=msg,
        )


class PeerLookup(NamedTuple):
    peer: Peer
    hops: int
    rpcs: int
    duration_us: int
    message: service_pb2.FindPeerResponse

    def json(self) -> dict[str, Any]:
        return message_json(self.message, all_fields=True)

    @classmethod
    def from_pb(cls, msg: service_pb2.FindPeerResponse) -> PeerLookup:
        return cls(
            peer=Peer.from_pb(msg.peer),
            hops=msg.hops,
            rpcs=msg.rpcs,
            duration_us=msg.duration_us,
            message=msg,
        )


class Workers(NamedTuple):
    capability_class: str
    workers: tuple[Peer, ...]

    @classmethod
    def from_pb(cls, msg: service_pb2.FindWorkersResponse) -> Workers:
        return cls(
            capability_class=msg.capability_class,
            workers=tuple(Peer.from_pb(p) for p in msg.workers),
        )


class Connection(NamedTuple):
    """An open overlay connection (plasm.v1.PeerConnection)."""

    node_id: str
    address: str
    direction: str
    rtt_us: int
    message: service_pb2.PeerConnection

    def json(self) -> dict[str, Any]:
        return message_json(self.message)


class NodeInfo(NamedTuple):
    node_id: str
    version: str
    grpc_addresses: tuple[str, ...]
    started_at: str
    started_at_ns: int
    arch: str
    os: str
    cores: int
    memory_bytes: int
    runtime: str  # "name version (wasi version)"
    free_job_slots: int
    total_job_slots: int
    max_memory_bytes: int
    max_timeout_ms: int
    jobs_running: int
    jobs_queued: int
    jobs_completed: int
    overlay_address: str
    reachability: str  # "PUBLIC", "PRIVATE" or "UNSPECIFIED"
    relays: tuple[str, ...]
    connections: tuple[Connection, ...]
    receipts_stored: int
    cached_modules: int
    message: service_pb2.GetNodeInfoResponse

    def json(self) -> dict[str, Any]:
        return message_json(self.message, all_fields=True)

    @classmethod
    def from_pb(cls, msg: service_pb2.GetNodeInfoResponse) -> NodeInfo:
        caps = msg.capabilities
        return cls(
            node_id=msg.node_id,
            version=msg.version,
            grpc_addresses=tuple(msg.grpc_addresses),
            started_at=msg.started_at.ToJsonString(),
            started_at_ns=msg.started_at.ToNanoseconds(),
            arch=caps.arch,
            os=caps.os,
            cores=caps.cores,
            memory_bytes=caps.memory_bytes,
            runtime=f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})",
            free_job_slots=caps.free_job_slots,
            total_job_slots=caps.total_job_slots,
            max_memory_bytes=caps.max_limits.max_memory_bytes,
            max_timeout_ms=caps.max_limits.timeout_ms,
            jobs_running=msg.jobs_running,
            jobs_queued=msg.jobs_queued,
            jobs_completed=msg.jobs_completed,
            overlay_address=msg.overlay_address,
            reachability=enum_label(
                reachability_pb2.Reachability, msg.reachability, "REACHABILITY_"
            ),
            relays=tuple(msg.relays),
            connections=tuple(
                Connection(
                    node_id=p.node_id,
                    address=p.address,
                    direction=p.direction,
                    rtt_us=p.rtt_us,
                    message=p,
                )
                for p in msg.peers
            ),
            receipts_stored=msg.receipts_stored,
            cached_modules=msg.cached_modules,
            message=msg,
        )
