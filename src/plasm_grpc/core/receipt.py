"""Execution receipts as core values, and the checks a verifier makes.

The wire form is `plasm.v1.ReceiptBody` inside a SignedEnvelope under
RECEIPT_DOMAIN; conversion lives in `plasm_grpc.api.codec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plasm_grpc.core.ids import check_hex64, sha256_hex
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.core.outcome import Outcome

RECEIPT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeInfo:
    name: str
    version: str
    wasi_version: str
    config: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    job_id: str
    module_sha256: str
    input_sha256: str
    stdout_sha256: str
    stderr_sha256: str
    stdout_bytes: int
    stderr_bytes: int
    outcome: Outcome
    exit_code: int
    trap_code: str
    fuel_consumed: int
    wall_time_us: int
    limits: ResourceLimits
    runtime: RuntimeInfo
    executor_node_id: str
    requester_node_id: str
    started_at_ns: int
    finished_at_ns: int
    detail: str = ""
    version: int = RECEIPT_VERSION

    def __post_init__(self) -> None:
        for name in (
            "module_sha256",
            "input_sha256",
            "stdout_sha256",
            "stderr_sha256",
            "executor_node_id",
        ):
            check_hex64(getattr(self, name), name)
        if self.requester_node_id:
            check_hex64(self.requester_node_id, "requester_node_id")


@dataclass(frozen=True, slots=True)
class Check:
    """One verification step and its result, shown to the user as is."""

    name: str
    passed: bool
    detail: str


@dataclass(slots=True)
class CheckList:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))

    @property
    def valid(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def check_hash(checks: CheckList, name: str, expected_hex: str, data: bytes) -> None:
    actual = sha256_hex(data)
    if actual == expected_hex:
        checks.add(name, True, f"sha256 {actual} matches the receipt")
    else:
        checks.add(name, False, f"sha256 {actual} but the receipt says {expected_hex}")
