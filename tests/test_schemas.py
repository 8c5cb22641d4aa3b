"""The generated JSON Schemas agree with the proto3 JSON mapping.

Checks the committed schemas in schemas/ against hand-made documents and
against ``json_format`` output/parsing of the generated Python messages, and
that ``scripts/generate.py --check`` finds nothing out of date.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from jsonschema import Draft202012Validator
from plasm.v1 import envelope_pb2, limits_pb2, manifest_pb2, receipt_pb2, service_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO_ROOT / "schemas"
SCHEMA_FILES = {
    "job_manifest": manifest_pb2.JobManifest,
    "receipt_body": receipt_pb2.ReceiptBody,
    "signed_envelope": envelope_pb2.SignedEnvelope,
    "stored_receipt": service_pb2.StoredReceipt,
}


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, document: Any) -> list[str]:
    return [e.message for e in validator(name).iter_errors(document)]


def parses(message_type: type[Message], document: Any) -> bool:
    try:
        json_format.Parse(json.dumps(document), message_type())
    except json_format.ParseError:
        return False
    return True


VALID_MANIFEST: dict[str, Any] = {
    "moduleSha256": "ab" * 32,
    "args": ["hello.wasm", "--count", "3"],
    "env": [{"name": "LANG", "value": "C"}, {"name": "EMPTY"}],
    "stdin": "aGVsbG8gd29ybGQK",
    "limits": {
        "maxMemoryBytes": "67108864",
        "maxFuel": 1000000,
        "timeoutMs": 5000,
        "maxStdoutBytes": "1048576",
    },
    "placement": {"mode": "PLACEMENT_MODE_LOCAL", "arch": "x86_64"},
}


def full_receipt_body() -> receipt_pb2.ReceiptBody:
    """A ReceiptBody with every field set to a non-default value."""
    started, finished = Timestamp(), Timestamp()
    started.FromJsonString("2026-01-02T03:04:05.123456789Z")
    finished.FromJsonString("2026-01-02T03:04:06Z")
    return receipt_pb2.ReceiptBody(
        version=1,
        job_id="0123456789abcdef0123456789abcdef",
        module_sha256="a" * 64,
        input_sha256="b" * 64,
        stdout_sha256="c" * 64,
        stderr_sha256="d" * 64,
        stdout_bytes=2**40,
        stderr_bytes=7,
        outcome=receipt_pb2.OUTCOME_NONZERO_EXIT,
        exit_code=-3,
        trap_code="unreachable",
        fuel_consumed=2**63 + 5,
        wall_time_us=12345,
        limits=limits_pb2.ResourceLimits(
            max_memory_bytes=2**26,
            max_fuel=10**9,
            timeout_ms=2**32 - 1,
            max_stdout_bytes=2**20,
            max_stderr_bytes=2**20,
        ),
        runtime=receipt_pb2.RuntimeInfo(
            name="wasmtime",
            version="50.0.1",
            wasi_version="preview1",
            config=["consume_fuel=true", "epoch_interruption=true"],
        ),
        executor_node_id="e" * 64,
        requester_node_id="f" * 64,
        started_at=started,
        finished_at=finished,
        detail="exit code 3 \u2014 caf\u00e9",
    )


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://plasm.invalid/schemas/{name}.schema.json"
    assert "do not edit" in schema["$comment"]


def test_valid_manifest_validates_and_parses() -> None:
    assert errors("job_manifest", VALID_MANIFEST) == []
    assert parses(manifest_pb2.JobManifest, VALID_MANIFEST)


def test_manifest_accepts_proto_field_names_and_nulls() -> None:
    document = {
        "module_sha256": "ab" * 32,
        "limits": {"timeout_ms": 10, "max_fuel": None},
        "stdin": None,
    }
    assert errors("job_manifest", document) == []
    assert parses(manifest_pb2.JobManifest, document)


def test_manifest_rejects_a_field_under_both_names() -> None:
    document = {"moduleSha256": "ab" * 32, "module_sha256": "ab" * 32}
    assert errors("job_manifest", document)


def test_empty_manifest_validates() -> None:
    assert errors("job_manifest", {}) == []


def with_change(path: list[str], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID_MANIFEST)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


INVALID_MANIFESTS = {
    "unknown top-level field": with_change(["priority"], 5),
    "unknown nested field": with_change(["limits", "maxCpu"], 1),
    "args as a string": with_change(["args"], "hello.wasm --count 3"),
    "bad enum name": with_change(["placement", "mode"], "PLACEMENT_MODE_ANYWHERE"),
    "bad base64 stdin": with_change(["stdin"], "abcde"),
    "uint32 out of range": with_change(["limits", "timeoutMs"], 2**32),
    "negative uint64": with_change(["limits", "maxFuel"], -1),
    "uint64 non-decimal string": with_change(["limits", "maxFuel"], "12abc"),
    "null array element": with_change(["args"], ["a", None]),
}


@pytest.mark.parametrize("case", sorted(INVALID_MANIFESTS))
def test_invalid_manifest_fails_validation(case: str) -> None:
    document = INVALID_MANIFESTS[case]
    assert errors("job_manifest", document), f"{case} should not validate"
    # The schema is never more permissive than the real parser.
    assert not parses(manifest_pb2.JobManifest, document)


def test_bad_base64_characters_fail_validation() -> None:
    # json_format.Parse silently drops these characters; the schema does not.
    assert errors("job_manifest", with_change(["stdin"], "not base64!!"))


def test_full_receipt_body_json_validates() -> None:
    body = full_receipt_body()
    document = json.loads(json_format.MessageToJson(body))
    # Every field is present, so every property form gets exercised.
    assert set(document) == {f.json_name for f in body.DESCRIPTOR.fields}
    assert isinstance(document["fuelConsumed"], str)  # 64-bit ints are strings
    assert errors("receipt_body", document) == []
    assert json_format.Parse(json.dumps(document), receipt_pb2.ReceiptBody()) == body


def test_receipt_body_with_proto_names_validates() -> None:
    document = json.loads(
        json_format.MessageToJson(full_receipt_body(), preserving_proto_field_name=True)
    )
    assert errors("receipt_body", document) == []


def test_receipt_body_rejects_bad_timestamp_and_outcome() -> None:
    document = json.loads(json_format.MessageToJson(full_receipt_body()))
    assert errors("receipt_body", {**document, "startedAt": "yesterday"})
    assert errors("receipt_body", {**document, "outcome": "OUTCOME_MAYBE"})
    assert errors("receipt_body", {**document, "outcome": 4}) == []


def test_stored_receipt_and_envelope_json_validate() -> None:
    body = full_receipt_body()
    envelope = envelope_pb2.SignedEnvelope(
        payload=body.SerializeToString(),
        signature=bytes(range(64)),
        signer_public_key=bytes(range(200, 232)),
    )
    stored = service_pb2.StoredReceipt(receipt=envelope, body=body)
    assert errors("signed_envelope", json.loads(json_format.MessageToJson(envelope))) == []
    assert errors("stored_receipt", json.loads(json_format.MessageToJson(stored))) == []
    url_safe = {"payload": "-_-_", "signature": "AAE", "signerPublicKey": ""}
    assert errors("signed_envelope", url_safe) == []
    assert parses(envelope_pb2.SignedEnvelope, url_safe)


def test_generate_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "generate.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
