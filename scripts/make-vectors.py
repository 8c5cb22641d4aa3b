#!/usr/bin/env python3
"""Write the receipt test vectors every client language runs: tests/vectors/receipts.json.

    python scripts/make-vectors.py            # (re)write tests/vectors/receipts.json
    python scripts/make-vectors.py --check    # exit 1 if the committed file is out of date
    python scripts/make-vectors.py --output PATH

Exit status: 0 written/up to date, 1 drift found by --check, 2 not run in the project's venv.

The output is fully deterministic: the keys come from fixed seeds (SHA-256 of
fixed labels), every timestamp and hash is fixed, protobuf bodies are
serialized with ``deterministic=True`` and Ed25519 signatures are
deterministic (RFC 8032), so regenerating gives identical bytes. The file is
generated once and checked in; ``--check`` (run by tests/test_vectors.py)
regenerates it in memory and compares byte for byte.

THE KEYS ARE THROWAWAY TEST KEYS. Their seeds are derived from public labels
and are printed in the file; never use them for anything but tests.

tests/vectors/README.md documents the format and the input-hash encoding.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

try:
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp
    from plasm.v1 import envelope_pb2, limits_pb2, receipt_pb2

    from plasm_grpc.core.envelope import DECLINE_DOMAIN, RECEIPT_DOMAIN, signing_input
    from plasm_grpc.core.input_hash import encode_input
    from plasm_grpc.core.keys import NodeKey
except ImportError as err:  # not the project's virtualenv
    print(
        f"make-vectors: error: {err} (python: {sys.executable}).\n"
        "Run this script with the project's virtualenv (. .venv/bin/activate).",
        file=sys.stderr,
    )
    sys.exit(2)

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT: Final = REPO_ROOT / "tests" / "vectors" / "receipts.json"

FORMAT: Final = "plasm-receipt-test-vectors/1"
WARNING: Final = (
    "THROWAWAY TEST KEYS: no private key is stored here; scripts/make-vectors.py derives "
    "each signing seed as SHA-256 of the key's public label. Never use these keys for "
    "anything but tests."
)
KEY_LABELS: Final = (
    "plasm test vector key 1",  # the executor that signs every valid receipt
    "plasm test vector key 2",  # another node: wrong-key and signer-mismatch cases
    "plasm test vector key 3",  # a remote requester
)

ERRORS: Final = frozenset(
    {"", "bad_signature", "wrong_domain", "wrong_key", "truncated", "signer_mismatch", "malformed"}
)

# Fixed times: 2025-01-01T00:00:00.123456789Z and a little later.
T0_NS: Final = 1_735_689_600_123_456_789

# A minimal module (the 8-byte header of an empty WebAssembly module), so its
# bytes can be carried in the file and its hash checked.
EMPTY_MODULE: Final = b"\x00asm\x01\x00\x00\x00"

RUNTIME_CONFIG: Final = (
    "consume_fuel=true",
    "cranelift_opt_level=speed",
    "epoch_interruption=true",
    "epoch_tick_ms=5",
    "max_wasm_stack=524288",
    "wasi=args,env,stdin;no-fs;no-net",
)

# A payload that no protobuf parser accepts: field 2 (job_id, length-delimited)
# announces 64 bytes but only 17 follow.
NOT_A_RECEIPT: Final = b"\x12\x40" + b"not a ReceiptBody"


@dataclass(frozen=True, slots=True)
class JobInput:
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    stdin: bytes

    def encoding(self) -> bytes:
        return encode_input(self.args, self.env, self.stdin)

    def sha256(self) -> str:
        return hashlib.sha256(self.encoding()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "args": list(self.args),
            "env": [[k, v] for k, v in self.env],
            "stdin_b64": b64(self.stdin),
            "input_sha256": self.sha256(),
            "input_encoding_hex": self.encoding().hex(),
        }


@dataclass(frozen=True, slots=True)
class Envelope:
    payload: bytes
    signature: bytes
    signer_public_key: bytes

    def serialize(self) -> bytes:
        return envelope_pb2.SignedEnvelope(
            payload=self.payload,
            signature=self.signature,
            signer_public_key=self.signer_public_key,
        ).SerializeToString(deterministic=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vector_key(label: str) -> NodeKey:
    return NodeKey.from_seed(hashlib.sha256(label.encode("ascii")).digest())


def sign(key: NodeKey, domain: str, payload: bytes) -> Envelope:
    return Envelope(payload, key.sign(signing_input(domain, payload)), key.public_key)


def timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def receipt_body(
    *,
    job_label: str,
    job_input: JobInput,
    stdout: bytes,
    stderr: bytes,
    outcome: receipt_pb2.Outcome.ValueType,
    exit_code: int,
    trap_code: str,
    detail: str,
    fuel_consumed: int,
    wall_time_us: int,
    executor: NodeKey,
    requester_node_id: str,
) -> receipt_pb2.ReceiptBody:
    return receipt_pb2.ReceiptBody(
        version=1,
        job_id=sha256_hex(job_label.encode("ascii"))[:32],
        module_sha256=sha256_hex(EMPTY_MODULE),
        input_sha256=job_input.sha256(),
        stdout_sha256=sha256_hex(stdout),
        stderr_sha256=sha256_hex(stderr),
        stdout_bytes=len(stdout),
        stderr_bytes=len(stderr),
        outcome=outcome,
        exit_code=exit_code,
        trap_code=trap_code,
        fuel_consumed=fuel_consumed,
        wall_time_us=wall_time_us,
        limits=limits_pb2.ResourceLimits(
            max_memory_bytes=64 * 1024 * 1024,
            max_fuel=10_000_000_000,
            timeout_ms=10_000,
            max_stdout_bytes=4 * 1024 * 1024,
            max_stderr_bytes=1024 * 1024,
        ),
        runtime=receipt_pb2.RuntimeInfo(
            name="wasmtime",
            version="50.0.1",
            wasi_version="preview1",
            config=list(RUNTIME_CONFIG),
        ),
        executor_node_id=executor.node_id,
        requester_node_id=requester_node_id,
        started_at=timestamp(T0_NS),
        finished_at=timestamp(T0_NS + wall_time_us * 1000),
        detail=detail,
    )


def serialize(body: receipt_pb2.ReceiptBody) -> bytes:
    return body.SerializeToString(deterministic=True)


def case(
    name: str,
    description: str,
    *,
    domain: str,
    envelope: Envelope,
    expected_error: str,
    expected_signature_valid: bool,
    expected_signer_node_id: str,
    body: receipt_pb2.ReceiptBody | None = None,
    job_input: JobInput | None = None,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
) -> dict[str, Any]:
    if expected_error not in ERRORS:
        raise ValueError(f"unknown expected_error {expected_error!r}")
    valid = expected_error == ""
    if valid != (body is not None and job_input is not None):
        raise ValueError(f"{name}: valid cases (and only those) carry body and input")
    return {
        "name": name,
        "description": description,
        "domain": domain,
        "payload_hex": envelope.payload.hex(),
        "signature_hex": envelope.signature.hex(),
        "signer_public_key_hex": envelope.signer_public_key.hex(),
        "envelope_b64": b64(envelope.serialize()),
        "expected_valid": valid,
        "expected_error": expected_error,
        "expected_signature_valid": expected_signature_valid,
        "expected_signer_node_id": expected_signer_node_id,
        "body": None if body is None else json_format.MessageToDict(body),
        "input": None if job_input is None else job_input.to_json(),
        "module_b64": b64(EMPTY_MODULE) if valid else None,
        "stdout_b64": None if stdout is None else b64(stdout),
        "stderr_b64": None if stderr is None else b64(stderr),
    }


def flip_hex_digit(payload: bytes, start: int, end: int) -> bytes:
    """Flip bit 0 of the first ASCII digit in payload[start:end] ('4' <-> '5', ...)."""
    for i in range(start, end):
        if 0x30 <= payload[i] <= 0x39:
            out = bytearray(payload)
            out[i] ^= 0x01
            return bytes(out)
    raise ValueError("no ASCII digit to flip")


def receipt_cases(keys: Sequence[NodeKey]) -> list[dict[str, Any]]:
    k1, k2, k3 = keys
    cases: list[dict[str, Any]] = []

    # -- valid receipts --------------------------------------------------------
    hello_input = JobInput(
        args=("hello.wasm",),
        env=(("LANG", "C"), ("PLASM_GREETING", "hi")),
        stdin=b"Hello, World",
    )
    hello_stdout = b"dlroW ,olleH"
    hello_body = receipt_body(
        job_label="plasm test vector job 1",
        job_input=hello_input,
        stdout=hello_stdout,
        stderr=b"",
        outcome=receipt_pb2.OUTCOME_SUCCESS,
        exit_code=0,
        trap_code="",
        detail="",
        fuel_consumed=41_234,
        wall_time_us=1_234,
        executor=k1,
        requester_node_id=k1.node_id,
    )
    valid = sign(k1, RECEIPT_DOMAIN, serialize(hello_body))
    cases.append(
        case(
            "valid",
            "A successful job (exit 0) signed by key 1, which the body names as executor "
            "and requester.",
            domain=RECEIPT_DOMAIN,
            envelope=valid,
            expected_error="",
            expected_signature_valid=True,
            expected_signer_node_id=k1.node_id,
            body=hello_body,
            job_input=hello_input,
            stdout=hello_stdout,
            stderr=b"",
        )
    )

    exit_input = JobInput(
        args=("primes", "-5"),
        env=(("LANG", "C.UTF-8"), ("GREETING", "héllo wörld ✓"), ("EMPTY", "")),
        stdin=b"",
    )
    exit_stderr = b"primes: invalid N '-5' (expected a non-negative integer)\n"
    exit_body = receipt_body(
        job_label="plasm test vector job 2",
        job_input=exit_input,
        stdout=b"",
        stderr=exit_stderr,
        outcome=receipt_pb2.OUTCOME_NONZERO_EXIT,
        exit_code=2,
        trap_code="",
        detail="",
        fuel_consumed=9_876,
        wall_time_us=987,
        executor=k1,
        requester_node_id=k3.node_id,
    )
    cases.append(
        case(
            "valid_nonzero_exit",
            "A job that exited with code 2, requested by another node (key 3); "
            "UTF-8 and empty strings in the input.",
            domain=RECEIPT_DOMAIN,
            envelope=sign(k1, RECEIPT_DOMAIN, serialize(exit_body)),
            expected_error="",
            expected_signature_valid=True,
            expected_signer_node_id=k1.node_id,
            body=exit_body,
            job_input=exit_input,
            stdout=b"",
            stderr=exit_stderr,
        )
    )

    trap_input = JobInput(args=(), env=(), stdin=bytes([0, 1, 2, 0xFE, 0xFF, 0]))
    trap_stdout = b"partial output\n"
    trap_body = receipt_body(
        job_label="plasm test vector job 3",
        job_input=trap_input,
        stdout=trap_stdout,
        stderr=b"",
        outcome=receipt_pb2.OUTCOME_TRAP,
        exit_code=0,
        trap_code="unreachable",
        detail="wasm trap: unreachable",
        fuel_consumed=17,
        wall_time_us=55,
        executor=k1,
        requester_node_id=k1.node_id,
    )
    cases.append(
        case(
            "valid_trap",
            "A job that trapped (trap_code 'unreachable'); no args or env, binary stdin "
            "with NUL bytes.",
            domain=RECEIPT_DOMAIN,
            envelope=sign(k1, RECEIPT_DOMAIN, serialize(trap_body)),
            expected_error="",
            expected_signature_valid=True,
            expected_signer_node_id=k1.node_id,
            body=trap_body,
            job_input=trap_input,
            stdout=trap_stdout,
            stderr=b"",
        )
    )

    # -- invalid receipts --------------------------------------------------------
    stdout_field = valid.payload.index(hello_body.stdout_sha256.encode("ascii"))
    cases.append(
        case(
            "tampered_body",
            "The 'valid' envelope with one payload byte changed: a digit of stdout_sha256 "
            "has bit 0 flipped, so the payload still decodes to a plausible receipt.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(
                flip_hex_digit(valid.payload, stdout_field, stdout_field + 64),
                valid.signature,
                k1.public_key,
            ),
            expected_error="bad_signature",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    tampered_sig = bytearray(valid.signature)
    tampered_sig[0] ^= 0x01
    cases.append(
        case(
            "tampered_signature",
            "The 'valid' envelope with bit 0 of the first signature byte flipped.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(valid.payload, bytes(tampered_sig), k1.public_key),
            expected_error="bad_signature",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    by_k2 = sign(k2, RECEIPT_DOMAIN, valid.payload)
    cases.append(
        case(
            "wrong_key",
            "The 'valid' payload signed by key 2 but carrying key 1's public key.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(valid.payload, by_k2.signature, k1.public_key),
            expected_error="wrong_key",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    cases.append(
        case(
            "wrong_domain",
            f"The 'valid' payload signed by key 1 under {DECLINE_DOMAIN!r} instead of "
            f"{RECEIPT_DOMAIN!r}; the signature verifies only under the decline domain.",
            domain=DECLINE_DOMAIN,
            envelope=sign(k1, DECLINE_DOMAIN, valid.payload),
            expected_error="wrong_domain",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    cases.append(
        case(
            "truncated_payload",
            "The 'valid' envelope with the last payload byte removed.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(valid.payload[:-1], valid.signature, k1.public_key),
            expected_error="truncated",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    cases.append(
        case(
            "truncated_signature",
            "The 'valid' envelope with the signature cut to 63 bytes.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(valid.payload, valid.signature[:63], k1.public_key),
            expected_error="truncated",
            expected_signature_valid=False,
            expected_signer_node_id=k1.node_id,
        )
    )
    cases.append(
        case(
            "bad_public_key_length",
            "The 'valid' envelope whose signer public key has a 33rd byte (0x00) appended; "
            "a public key must be exactly 32 bytes, so there is no signer node id.",
            domain=RECEIPT_DOMAIN,
            envelope=Envelope(valid.payload, valid.signature, k1.public_key + b"\x00"),
            expected_error="malformed",
            expected_signature_valid=False,
            expected_signer_node_id="",
        )
    )
    mismatch_body = receipt_pb2.ReceiptBody()
    mismatch_body.CopyFrom(hello_body)
    mismatch_body.executor_node_id = k2.node_id
    cases.append(
        case(
            "signer_mismatch",
            "A validly signed receipt (key 1) whose body names key 2 as the executor: "
            "the signature verifies but the receipt is invalid.",
            domain=RECEIPT_DOMAIN,
            envelope=sign(k1, RECEIPT_DOMAIN, serialize(mismatch_body)),
            expected_error="signer_mismatch",
            expected_signature_valid=True,
            expected_signer_node_id=k1.node_id,
        )
    )
    cases.append(
        case(
            "malformed_payload",
            "A payload that is not a ReceiptBody (field 2 announces 64 bytes, 17 follow), "
            "validly signed by key 1 under the receipt domain: decoding must fail.",
            domain=RECEIPT_DOMAIN,
            envelope=sign(k1, RECEIPT_DOMAIN, NOT_A_RECEIPT),
            expected_error="malformed",
            expected_signature_valid=True,
            expected_signer_node_id=k1.node_id,
        )
    )
    return cases


def input_vectors() -> list[dict[str, Any]]:
    """Known answers for the input encoding, including boundary shifts."""
    inputs = [
        ("empty", JobInput((), (), b"")),
        ("one_arg_ab", JobInput(("ab",), (), b"")),
        ("two_args_a_b", JobInput(("a", "b"), (), b"")),
        ("env_a_b", JobInput((), (("a", "b"),), b"")),
        ("stdin_ab", JobInput((), (), b"ab")),
        ("empty_strings", JobInput(("",), (("", ""),), b"")),
        ("env_order_1", JobInput((), (("X", "1"), ("Y", "2")), b"")),
        ("env_order_2", JobInput((), (("Y", "2"), ("X", "1")), b"")),
        ("utf8", JobInput(("héllo", "✓", "𝄞"), (("NAME", "wörld"),), "ünï".encode())),
        ("binary_stdin", JobInput(("x",), (("K", "V"),), bytes(range(256)))),
    ]
    return [{"name": name, **job.to_json()} for name, job in inputs]


def build() -> str:
    keys = [vector_key(label) for label in KEY_LABELS]
    document = {
        "format": FORMAT,
        "warning": WARNING,
        "generator": "scripts/make-vectors.py",
        "receipt_domain": RECEIPT_DOMAIN,
        "keys": [
            {
                "label": label,
                "public_key_hex": key.public_key.hex(),
                "node_id": key.node_id,
            }
            for label, key in zip(KEY_LABELS, keys, strict=True)
        ],
        "cases": receipt_cases(keys),
        "input_vectors": input_vectors(),
    }
    return json.dumps(document, indent=2, ensure_ascii=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from a fresh build"
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    text = build()
    if args.check:
        try:
            current = output.read_text(encoding="utf-8")
        except FileNotFoundError:
            print(f"make-vectors: {output} does not exist; run scripts/make-vectors.py")
            return 1
        if current != text:
            print(f"make-vectors: {output} is out of date; run scripts/make-vectors.py")
            return 1
        print(f"make-vectors: {output} is up to date")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"make-vectors: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
