"""Protobuf <-> core conversions that both the gRPC API and the overlay use.

`api` and `net` are sibling layers that may not import each other; the
messages they share (limits, signed envelopes, capabilities) convert here,
once. Their own codecs (`api.codec`, `net.dht_codec`) add what is theirs:
error types, size checks on untrusted input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plasm.v1 import capability_pb2, envelope_pb2, limits_pb2

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.limits import ResourceLimits

if TYPE_CHECKING:
    # Only for the annotation: importing the DHT package costs a client (`plasm`)
    # tens of milliseconds it never uses.
    from plasm_grpc.core.dht.records import Capabilities

__all__ = [
    "capabilities_to_pb",
    "envelope_from_pb",
    "envelope_to_pb",
    "limits_from_pb",
    "limits_to_pb",
]


def limits_to_pb(limits: ResourceLimits) -> limits_pb2.ResourceLimits:
    return limits_pb2.ResourceLimits(
        max_memory_bytes=limits.max_memory_bytes,
        max_fuel=limits.max_fuel,
        timeout_ms=limits.timeout_ms,
        max_stdout_bytes=limits.max_stdout_bytes,
        max_stderr_bytes=limits.max_stderr_bytes,
    )


def limits_from_pb(msg: limits_pb2.ResourceLimits) -> ResourceLimits:
    """Raises LimitError for values ResourceLimits refuses."""
    return ResourceLimits(
        max_memory_bytes=msg.max_memory_bytes,
        max_fuel=msg.max_fuel,
        timeout_ms=msg.timeout_ms,
        max_stdout_bytes=msg.max_stdout_bytes,
        max_stderr_bytes=msg.max_stderr_bytes,
    )


def envelope_to_pb(envelope: SignedEnvelope) -> envelope_pb2.SignedEnvelope:
    return envelope_pb2.SignedEnvelope(
        payload=envelope.payload,
        signature=envelope.signature,
        signer_public_key=envelope.signer_public_key,
    )


def envelope_from_pb(msg: envelope_pb2.SignedEnvelope) -> SignedEnvelope:
    """The envelope as received; nothing here checks its signature."""
    return SignedEnvelope(
        payload=msg.payload, signature=msg.signature, signer_public_key=msg.signer_public_key
    )


def capabilities_to_pb(capabilities: Capabilities) -> capability_pb2.Capabilities:
    return capability_pb2.Capabilities(
        arch=capabilities.arch,
        os=capabilities.os,
        cores=capabilities.cores,
        memory_bytes=capabilities.memory_bytes,
        runtime_name=capabilities.runtime_name,
        runtime_version=capabilities.runtime_version,
        wasi_version=capabilities.wasi_version,
        max_limits=limits_to_pb(capabilities.max_limits),
        free_job_slots=capabilities.free_job_slots,
        total_job_slots=capabilities.total_job_slots,
    )
