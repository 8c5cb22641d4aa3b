"""Text inside receipts and server replies is shown as data, never as rich markup."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format

from plasm_grpc.api import codec
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import DEFAULT_LIMITS
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.receipt import Receipt, RuntimeInfo

EMPTY = hashlib.sha256(b"").hexdigest()


def evil_receipt(tmp_path: Path, detail: str, trap_code: str) -> Path:
    key = NodeKey.from_seed(hashlib.sha256(b"plasm cli markup test key").digest())
    receipt = Receipt(
        job_id="0" * 32,
        module_sha256=EMPTY,
        input_sha256=EMPTY,
        stdout_sha256=EMPTY,
        stderr_sha256=EMPTY,
        stdout_bytes=0,
        stderr_bytes=0,
        outcome=Outcome.TRAP,
        exit_code=0,
        trap_code=trap_code,
        fuel_consumed=1,
        wall_time_us=1,
        limits=DEFAULT_LIMITS,
        runtime=RuntimeInfo(name="wasmtime", version="[bold]x[/]", wasi_version="preview1"),
        executor_node_id=key.node_id,
        requester_node_id=key.node_id,
        started_at_ns=1,
        finished_at_ns=2,
        detail=detail,
    )
    env = envelopes.sign(key, envelopes.RECEIPT_DOMAIN, codec.encode_receipt(receipt))
    path = tmp_path / "evil.json"
    path.write_text(json_format.MessageToJson(codec.envelope_to_pb(env)))
    return path


def plasm(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "plasm_grpc.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_markup_in_a_signed_receipt_is_printed_literally(tmp_path: Path) -> None:
    path = evil_receipt(tmp_path, detail="[/]", trap_code="[link=https://x.invalid]click ok[/link]")
    proc = plasm("verify", str(path))
    assert proc.returncode == 0, proc.stderr  # a valid signature over odd text
    assert "Traceback" not in proc.stderr
    assert "[/]" in proc.stderr
    assert "[link=https://x.invalid]click ok[/link]" in proc.stderr
    assert "[bold]x[/]" in proc.stderr


def test_markup_in_arguments_is_printed_literally(tmp_path: Path) -> None:
    proc = plasm("--addr", "[/]127.0.0.1:1", "--timeout", "5", "receipt", "[/]")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cannot reach plasmd at [/]127.0.0.1:1" in proc.stderr
