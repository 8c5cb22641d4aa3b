"""What a client sends: a job's manifest drafted from JSON and flags, and
receipt files read back as signed envelopes."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from plasm.v1 import capability_pb2, envelope_pb2, manifest_pb2, service_pb2

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.wire import envelope_from_pb

__all__ = [
    "LIMIT_FIELDS",
    "PLACEMENT_MODES",
    "JobRequest",
    "ManifestDraft",
    "envelope_from_binary",
    "envelope_from_document",
]

PLACEMENT_MODES: Final = {
    "auto": capability_pb2.PLACEMENT_MODE_AUTO,
    "local": capability_pb2.PLACEMENT_MODE_LOCAL,
    "peer": capability_pb2.PLACEMENT_MODE_PEER,
}
_MODE_NAMES: Final = {value: name for name, value in PLACEMENT_MODES.items()}
LIMIT_FIELDS: Final = frozenset(
    {"max_memory_bytes", "max_fuel", "timeout_ms", "max_stdout_bytes", "max_stderr_bytes"}
)


class JobRequest(NamedTuple):
    """A Submit ready to send."""

    job_id: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    stdin: bytes
    timeout_ms: int
    message: service_pb2.SubmitRequest

    @classmethod
    def from_pb(cls, msg: service_pb2.SubmitRequest) -> JobRequest:
        manifest = msg.manifest
        return cls(
            job_id=msg.job_id,
            args=tuple(manifest.args),
            env=tuple((e.name, e.value) for e in manifest.env),
            stdin=manifest.stdin,
            timeout_ms=manifest.limits.timeout_ms,
            message=msg,
        )


class ManifestDraft:
    """A JobManifest being put together from a JSON manifest and command-line flags."""

    def __init__(self, message: manifest_pb2.JobManifest | None = None) -> None:
        self.message = message if message is not None else manifest_pb2.JobManifest()

    @classmethod
    def from_document(cls, document: Any) -> ManifestDraft:
        """A manifest's proto3 JSON, already parsed; raises ValueError saying what is wrong."""
        from google.protobuf import json_format

        manifest = manifest_pb2.JobManifest()
        try:
            json_format.ParseDict(document, manifest)
        except json_format.ParseError as err:
            raise ValueError(str(err)) from None
        return cls(manifest)

    @property
    def module_sha256(self) -> str:
        return self.message.module_sha256

    @property
    def args(self) -> tuple[str, ...]:
        return tuple(self.message.args)

    def add_args(self, args: list[str]) -> None:
        self.message.args.extend(args)

    def add_env(self, name: str, value: str) -> None:
        self.message.env.append(manifest_pb2.EnvVar(name=name, value=value))

    def set_stdin(self, data: bytes) -> None:
        self.message.stdin = data

    def set_limit(self, name: str, value: int) -> None:
        """`name` is a ResourceLimits field, one of LIMIT_FIELDS."""
        if name not in LIMIT_FIELDS:
            raise ValueError(f"no limit {name!r}")
        setattr(self.message.limits, name, value)

    @property
    def placement_mode(self) -> str | None:
        """ "auto", "local" or "peer"; None when the manifest does not say."""
        return _MODE_NAMES.get(self.message.placement.mode)

    @placement_mode.setter
    def placement_mode(self, mode: str) -> None:
        self.message.placement.mode = PLACEMENT_MODES[mode]

    @property
    def peer_node_id(self) -> str:
        return self.message.placement.peer_node_id

    @peer_node_id.setter
    def peer_node_id(self, node_id: str) -> None:
        self.message.placement.peer_node_id = node_id

    def request(self, *, module: bytes, job_id: str) -> JobRequest:
        return JobRequest.from_pb(
            service_pb2.SubmitRequest(manifest=self.message, module=module, job_id=job_id)
        )


def envelope_from_document(document: Any) -> SignedEnvelope:
    """A SignedEnvelope's proto3 JSON, already parsed; raises ValueError."""
    from google.protobuf import json_format

    msg = envelope_pb2.SignedEnvelope()
    try:
        json_format.ParseDict(document, msg, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise ValueError(str(err)) from None
    return envelope_from_pb(msg)


def envelope_from_binary(data: bytes) -> SignedEnvelope:
    """A binary SignedEnvelope; raises ValueError."""
    msg = envelope_pb2.SignedEnvelope()
    try:
        msg.ParseFromString(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types here
        raise ValueError(str(err)) from None
    return envelope_from_pb(msg)
