"""Offline receipt verification, usable without a daemon.

Order matters (DESIGN.md): the signature is checked over the bytes received,
under the receipt domain, before the payload is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plasm.v1 import receipt_pb2

from plasm_grpc.api.receipt_codec import DecodeError, decode_receipt_body, receipt_from_pb
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.errors import InvalidIdError, VerificationError
from plasm_grpc.core.input_hash import input_sha256
from plasm_grpc.core.receipt import RECEIPT_VERSION, Check, CheckList, check_hash


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptInput:
    """What the client sent, for checking input_sha256."""

    args: Sequence[str]
    env: Sequence[tuple[str, str]]
    stdin: bytes


@dataclass(frozen=True, slots=True)
class VerifyResult:
    valid: bool
    checks: list[Check]
    body: receipt_pb2.ReceiptBody | None
    signer_node_id: str


def verify_receipt(
    envelope: envelopes.SignedEnvelope,
    *,
    expected_executor_node_id: str | None = None,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
    module: bytes | None = None,
    job_input: ReceiptInput | None = None,
) -> VerifyResult:
    checks = CheckList()
    try:
        signer = envelope.signer_node_id
    except InvalidIdError as err:
        checks.add("signature", False, str(err))
        return VerifyResult(False, checks.checks, None, "")
    try:
        envelopes.verify(envelope, envelopes.RECEIPT_DOMAIN)
    except VerificationError as err:
        checks.add("signature", False, str(err))
        return VerifyResult(False, checks.checks, None, signer)
    checks.add("signature", True, f"valid Ed25519 signature under {envelopes.RECEIPT_DOMAIN!r}")
    try:
        body = decode_receipt_body(envelope.payload)
    except DecodeError as err:
        checks.add("decode", False, str(err))
        return VerifyResult(False, checks.checks, None, signer)
    try:
        receipt_from_pb(body)
    except DecodeError as err:
        checks.add("well_formed", False, str(err))
    if body.version != RECEIPT_VERSION:
        checks.add("version", False, f"receipt version {body.version}, expected {RECEIPT_VERSION}")
    if body.executor_node_id == signer:
        checks.add("signer", True, f"signed by the executor {signer}")
    else:
        checks.add(
            "signer",
            False,
            f"signed by {signer} but names executor {body.executor_node_id or '(none)'}",
        )
    if expected_executor_node_id:
        checks.add(
            "expected_executor",
            signer == expected_executor_node_id,
            f"signer {signer}, expected {expected_executor_node_id}",
        )
    if stdout is not None:
        check_hash(checks, "stdout", body.stdout_sha256, stdout)
    if stderr is not None:
        check_hash(checks, "stderr", body.stderr_sha256, stderr)
    if module is not None:
        check_hash(checks, "module", body.module_sha256, module)
    if job_input is not None:
        actual = input_sha256(job_input.args, job_input.env, job_input.stdin)
        checks.add(
            "input",
            actual == body.input_sha256,
            f"input sha256 {actual}"
            + (
                " matches" if actual == body.input_sha256 else f", receipt says {body.input_sha256}"
            ),
        )
    return VerifyResult(checks.valid, checks.checks, body, signer)
