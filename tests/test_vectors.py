"""The checked-in receipt test vectors (tests/vectors/receipts.json).

Every case goes through the offline verifier (`verify_receipt`) and through
the bare envelope check (`core.envelope.verify`) and must get the verdict the
file states; the cases are checked to be what their names say (a tampered
case differs from the valid one by one byte, a wrong-domain case verifies
under the other domain, ...); and ``scripts/make-vectors.py --check`` must
find the file up to date.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from plasm.v1 import envelope_pb2, receipt_pb2

from plasm_grpc.api import codec
from plasm_grpc.api.verify import ReceiptInput, verify_receipt
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.errors import VerificationError
from plasm_grpc.core.ids import node_id_from_public_key
from plasm_grpc.core.input_hash import encode_input, input_sha256
from plasm_grpc.core.keys import NodeKey, verify_signature

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS = REPO_ROOT / "tests" / "vectors" / "receipts.json"
SCRIPT = REPO_ROOT / "scripts" / "make-vectors.py"
SCHEMA = REPO_ROOT / "schemas" / "receipt_body.schema.json"

ERRORS = {
    "",
    "bad_signature",
    "wrong_domain",
    "wrong_key",
    "truncated",
    "signer_mismatch",
    "malformed",
}
REQUIRED_CASES = {
    "valid",
    "valid_nonzero_exit",
    "valid_trap",
    "tampered_body",
    "tampered_signature",
    "wrong_key",
    "wrong_domain",
    "truncated_payload",
    "truncated_signature",
    "bad_public_key_length",
    "signer_mismatch",
    "malformed_payload",
}


@cache
def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def cases() -> list[dict[str, Any]]:
    return list(document()["cases"])


def by_name(name: str) -> dict[str, Any]:
    return next(c for c in cases() if c["name"] == name)


def envelope_of(case: dict[str, Any]) -> SignedEnvelope:
    return SignedEnvelope(
        payload=bytes.fromhex(case["payload_hex"]),
        signature=bytes.fromhex(case["signature_hex"]),
        signer_public_key=bytes.fromhex(case["signer_public_key_hex"]),
    )


def input_of(case: dict[str, Any]) -> ReceiptInput:
    data = case["input"]
    return ReceiptInput(
        args=tuple(data["args"]),
        env=tuple((k, v) for k, v in data["env"]),
        stdin=base64.b64decode(data["stdin_b64"], validate=True),
    )


def key_public(index: int) -> bytes:
    return bytes.fromhex(document()["keys"][index]["public_key_hex"])


CASE_IDS = [c["name"] for c in cases()]
VALID_IDS = [c["name"] for c in cases() if c["expected_valid"]]


# -- the file itself ---------------------------------------------------------------------


def test_make_vectors_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_vectors_check_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "receipts.json"
    stale.write_text(VECTORS.read_text(encoding="utf-8").replace("valid", "vaild", 1))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(tmp_path / "absent.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1


def test_file_has_every_required_case_once() -> None:
    names = [c["name"] for c in cases()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_CASES
    assert document()["receipt_domain"] == envelopes.RECEIPT_DOMAIN
    assert "THROWAWAY" in document()["warning"]


def test_keys_derive_from_their_labels() -> None:
    for entry in document()["keys"]:
        assert "seed_hex" not in entry  # no private key material in the repo
        key = NodeKey.from_seed(hashlib.sha256(entry["label"].encode("ascii")).digest())
        assert key.public_key.hex() == entry["public_key_hex"]
        assert key.node_id == entry["node_id"]
        assert entry["node_id"] == hashlib.sha256(key.public_key).hexdigest()


@pytest.mark.parametrize("case", cases(), ids=CASE_IDS)
def test_case_fields_are_consistent(case: dict[str, Any]) -> None:
    assert case["expected_error"] in ERRORS
    assert case["expected_valid"] == (case["expected_error"] == "")
    if case["expected_valid"]:
        assert case["expected_signature_valid"]
    for key in ("body", "input", "module_b64", "stdout_b64", "stderr_b64"):
        assert (case[key] is not None) == case["expected_valid"], key
    # envelope_b64 is exactly the three hex fields.
    raw = base64.b64decode(case["envelope_b64"], validate=True)
    msg = envelope_pb2.SignedEnvelope()
    msg.ParseFromString(raw)
    assert msg.payload.hex() == case["payload_hex"]
    assert msg.signature.hex() == case["signature_hex"]
    assert msg.signer_public_key.hex() == case["signer_public_key_hex"]
    assert codec.envelope_from_bytes(raw) == envelope_of(case)


# -- verdicts ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases(), ids=CASE_IDS)
def test_verify_receipt_gives_expected_validity(case: dict[str, Any]) -> None:
    result = verify_receipt(envelope_of(case))
    assert result.valid is case["expected_valid"], result.checks
    assert result.signer_node_id == case["expected_signer_node_id"]
    failed = [c.name for c in result.checks if not c.passed]
    expected_failure = {
        "": [],
        "bad_signature": ["signature"],
        "wrong_domain": ["signature"],
        "wrong_key": ["signature"],
        "truncated": ["signature"],
        "signer_mismatch": ["signer"],
        "malformed": ["decode"] if case["expected_signature_valid"] else ["signature"],
    }[case["expected_error"]]
    assert failed == expected_failure, result.checks
    if case["expected_valid"] or case["expected_error"] == "signer_mismatch":
        assert result.body is not None
    else:
        assert result.body is None


@pytest.mark.parametrize("case", cases(), ids=CASE_IDS)
def test_verify_receipt_from_serialized_envelope(case: dict[str, Any]) -> None:
    envelope = codec.envelope_from_bytes(base64.b64decode(case["envelope_b64"]))
    assert verify_receipt(envelope).valid is case["expected_valid"]


@pytest.mark.parametrize("case", cases(), ids=CASE_IDS)
def test_envelope_verify_gives_expected_signature_validity(case: dict[str, Any]) -> None:
    envelope = envelope_of(case)
    if case["expected_signature_valid"]:
        assert envelopes.verify(envelope, envelopes.RECEIPT_DOMAIN) == envelope.payload
        assert envelopes.verify(
            envelope,
            envelopes.RECEIPT_DOMAIN,
            expected_signer_node_id=case["expected_signer_node_id"],
        )
    else:
        with pytest.raises(VerificationError):
            envelopes.verify(envelope, envelopes.RECEIPT_DOMAIN)


@pytest.mark.parametrize("case", cases(), ids=CASE_IDS)
def test_envelope_verify_with_body_executor(case: dict[str, Any]) -> None:
    """Pinning the signer to the executor the body names gives the receipt verdict."""
    envelope = envelope_of(case)
    if not case["expected_signature_valid"] or case["expected_error"] == "malformed":
        return
    body = codec.decode_receipt_body(envelopes.verify(envelope, envelopes.RECEIPT_DOMAIN))
    if case["expected_valid"]:
        envelopes.verify(
            envelope, envelopes.RECEIPT_DOMAIN, expected_signer_node_id=body.executor_node_id
        )
    else:
        with pytest.raises(VerificationError, match="expected"):
            envelopes.verify(
                envelope, envelopes.RECEIPT_DOMAIN, expected_signer_node_id=body.executor_node_id
            )


# -- valid cases in depth ------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in cases() if c["expected_valid"]], ids=VALID_IDS)
def test_valid_case_body_matches_payload(case: dict[str, Any]) -> None:
    payload = bytes.fromhex(case["payload_hex"])
    decoded = codec.decode_receipt_body(payload)
    from_json = json_format.Parse(json.dumps(case["body"]), receipt_pb2.ReceiptBody())
    assert decoded == from_json
    assert json_format.MessageToDict(decoded) == case["body"]
    # Our own encoder reproduces the signed bytes (not required of other languages).
    assert codec.encode_receipt(codec.receipt_from_pb(decoded)) == payload
    assert decoded.executor_node_id == case["expected_signer_node_id"]
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(case["body"])]
    assert errors == []


@pytest.mark.parametrize("case", [c for c in cases() if c["expected_valid"]], ids=VALID_IDS)
def test_valid_case_input_hash(case: dict[str, Any]) -> None:
    job = input_of(case)
    encoding = encode_input(job.args, job.env, job.stdin)
    assert encoding.hex() == case["input"]["input_encoding_hex"]
    assert hashlib.sha256(encoding).hexdigest() == case["input"]["input_sha256"]
    assert input_sha256(job.args, job.env, job.stdin) == case["input"]["input_sha256"]
    assert case["body"]["inputSha256"] == case["input"]["input_sha256"]


@pytest.mark.parametrize("case", [c for c in cases() if c["expected_valid"]], ids=VALID_IDS)
def test_valid_case_verifies_with_every_optional_check(case: dict[str, Any]) -> None:
    stdout = base64.b64decode(case["stdout_b64"])
    stderr = base64.b64decode(case["stderr_b64"])
    module = base64.b64decode(case["module_b64"])
    result = verify_receipt(
        envelope_of(case),
        expected_executor_node_id=case["expected_signer_node_id"],
        stdout=stdout,
        stderr=stderr,
        module=module,
        job_input=input_of(case),
    )
    assert result.valid, result.checks
    names = {c.name for c in result.checks}
    assert {"signature", "signer", "expected_executor", "stdout", "stderr", "module"} <= names
    assert "input" in names
    # ...and each optional check catches a mismatch.
    job = input_of(case)
    wrong: list[dict[str, Any]] = [
        {"stdout": stdout + b"!"},
        {"stderr": stderr + b"!"},
        {"module": module + b"!"},
        {"job_input": ReceiptInput(args=(*job.args, "x"), env=job.env, stdin=job.stdin)},
        {"expected_executor_node_id": "0" * 64},
    ]
    for kwargs in wrong:
        assert not verify_receipt(envelope_of(case), **kwargs).valid, kwargs


# -- the invalid cases are what they claim -------------------------------------------------


def test_tampered_body_differs_from_valid_in_one_byte() -> None:
    valid = bytes.fromhex(by_name("valid")["payload_hex"])
    tampered = by_name("tampered_body")
    payload = bytes.fromhex(tampered["payload_hex"])
    assert len(payload) == len(valid)
    assert sum(a != b for a, b in zip(payload, valid, strict=True)) == 1
    assert tampered["signature_hex"] == by_name("valid")["signature_hex"]
    # Still a plausible receipt: a verifier that skipped the signature would be fooled.
    body = codec.decode_receipt_body(payload)
    assert body.stdout_sha256 != codec.decode_receipt_body(valid).stdout_sha256


def test_tampered_signature_differs_from_valid_in_one_bit() -> None:
    valid = bytes.fromhex(by_name("valid")["signature_hex"])
    tampered = bytes.fromhex(by_name("tampered_signature")["signature_hex"])
    diff = [a ^ b for a, b in zip(valid, tampered, strict=True)]
    assert sorted(bin(d).count("1") for d in diff if d) == [1]
    assert by_name("tampered_signature")["payload_hex"] == by_name("valid")["payload_hex"]


def test_wrong_key_is_signed_by_key_2() -> None:
    case = by_name("wrong_key")
    env = envelope_of(case)
    assert env.signer_public_key == key_public(0)
    message = envelopes.signing_input(envelopes.RECEIPT_DOMAIN, env.payload)
    assert verify_signature(key_public(1), env.signature, message)
    assert not verify_signature(key_public(0), env.signature, message)


def test_wrong_domain_is_signed_under_the_decline_domain() -> None:
    case = by_name("wrong_domain")
    assert case["domain"] == envelopes.DECLINE_DOMAIN
    env = envelope_of(case)
    assert envelopes.verify(env, envelopes.DECLINE_DOMAIN) == env.payload
    assert env.payload.hex() == by_name("valid")["payload_hex"]


def test_truncated_cases_are_prefixes() -> None:
    valid = by_name("valid")
    payload = by_name("truncated_payload")["payload_hex"]
    assert valid["payload_hex"].startswith(payload)
    assert len(bytes.fromhex(payload)) == len(bytes.fromhex(valid["payload_hex"])) - 1
    signature = bytes.fromhex(by_name("truncated_signature")["signature_hex"])
    assert len(signature) == 63
    assert valid["signature_hex"].startswith(signature.hex())


def test_bad_public_key_length_has_no_node_id() -> None:
    env = envelope_of(by_name("bad_public_key_length"))
    assert len(env.signer_public_key) != 32
    with pytest.raises(ValueError, match="32 bytes"):
        node_id_from_public_key(env.signer_public_key)


def test_signer_mismatch_names_key_2_as_executor() -> None:
    env = envelope_of(by_name("signer_mismatch"))
    body = codec.decode_receipt_body(env.payload)
    assert body.executor_node_id == document()["keys"][1]["node_id"]
    assert env.signer_node_id == document()["keys"][0]["node_id"]


def test_malformed_payload_does_not_decode() -> None:
    env = envelope_of(by_name("malformed_payload"))
    with pytest.raises(codec.DecodeError):
        codec.decode_receipt_body(env.payload)


# -- input-hash known answers --------------------------------------------------------------


@pytest.mark.parametrize(
    "vector", document()["input_vectors"], ids=[v["name"] for v in document()["input_vectors"]]
)
def test_input_vectors(vector: dict[str, Any]) -> None:
    args = tuple(vector["args"])
    env = tuple((k, v) for k, v in vector["env"])
    stdin = base64.b64decode(vector["stdin_b64"], validate=True)
    encoding = encode_input(args, env, stdin)
    assert encoding.hex() == vector["input_encoding_hex"]
    assert hashlib.sha256(encoding).hexdigest() == vector["input_sha256"]


def test_input_vectors_are_pairwise_distinct() -> None:
    hashes = [v["input_sha256"] for v in document()["input_vectors"]]
    assert len(hashes) == len(set(hashes))
