"""The web console in headless Debian Chromium, against a live three-node network.

Node 0 serves the console (actions on, with a token); nodes 1 and 2 bootstrap
from it. Python submits one job and writes its receipt with
`plasm receipt --out` (plus a tampered copy), computes what the Python
verifier says of every receipt vector, then runs tests/browser/console.spec.mjs
(playwright-core driving /usr/bin/chromium) which checks what the page shows.
Screenshots go to artifacts/console/ (or $PLASM_ARTIFACTS/console).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, DaemonFactory, WasmModules, join_network, submit
from google.protobuf import json_format
from plasm.v1 import envelope_pb2
from test_daemon_lifecycle import run_cli

from plasm_grpc.api.codec import envelope_from_bytes
from plasm_grpc.api.verify import ReceiptInput, verify_receipt

CHROMIUM = Path("/usr/bin/chromium")
SPEC = REPO_ROOT / "tests" / "browser" / "console.spec.mjs"
PLAYWRIGHT = REPO_ROOT / "node_modules" / "playwright-core"
VECTORS = REPO_ROOT / "tests" / "vectors" / "receipts.json"
TOKEN = "console-test-token-0123456789abcdef"

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if not PLAYWRIGHT.is_dir():
        missing.append("node_modules/playwright-core (npm install at the repository root)")
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(
            "the browser tests need " + ", ".join(missing) + ": run scripts/install-deps.sh",
            pytrace=False,
        )


def _checks(result: Any) -> list[dict[str, Any]]:
    return [{"name": c.name, "passed": c.passed} for c in result.checks]


def vector_expectations() -> list[dict[str, Any]]:
    """Each vector with what the Python verifier says: bare, and with the job's data."""
    out = []
    for case in json.loads(VECTORS.read_text())["cases"]:
        envelope = envelope_from_bytes(base64.b64decode(case["envelope_b64"]))
        bare = verify_receipt(envelope)
        assert bare.valid == case["expected_valid"], case["name"]
        entry: dict[str, Any] = {
            "name": case["name"],
            "envelope_b64": case["envelope_b64"],
            "bare": {"valid": bare.valid, "checks": _checks(bare)},
        }
        if case["input"] is not None:
            job_input = case["input"]
            stdin = base64.b64decode(job_input["stdin_b64"])
            full = verify_receipt(
                envelope,
                expected_executor_node_id=case["expected_signer_node_id"],
                stdout=base64.b64decode(case["stdout_b64"]),
                stderr=base64.b64decode(case["stderr_b64"]),
                module=base64.b64decode(case["module_b64"]),
                job_input=ReceiptInput(
                    args=tuple(job_input["args"]),
                    env=tuple((k, v) for k, v in job_input["env"]),
                    stdin=stdin,
                ),
            )
            entry["options"] = {
                "expectedExecutorNodeId": case["expected_signer_node_id"],
                "stdout_b64": case["stdout_b64"],
                "stderr_b64": case["stderr_b64"],
                "module_b64": case["module_b64"],
                "args": job_input["args"],
                "env": job_input["env"],
                "stdin_b64": job_input["stdin_b64"],
            }
            entry["full"] = {"valid": full.valid, "checks": _checks(full)}
        out.append(entry)
    return out


def _tamper(receipt: dict[str, Any]) -> dict[str, Any]:
    """The same receipt with one bit of its signed payload flipped."""
    payload = bytearray(base64.b64decode(receipt["payload"]))
    payload[-3] ^= 0x01
    return {**receipt, "payload": base64.b64encode(bytes(payload)).decode()}


def test_console_in_chromium_shows_the_network_live_and_verifies_receipts(
    plasmd: DaemonFactory, wasm: WasmModules, tmp_path: Path
) -> None:
    _require_browser()
    token_file = tmp_path / "console.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    node0 = plasmd(
        f'[console]\nlisten = "127.0.0.1:0"\nallow_actions = true\ntoken_file = "{token_file}"\n'
    )
    url = node0.wait_for_event("ready", timeout=5)["console"]  # type: ignore[index]
    peers = join_network(plasmd, node0, 2)
    peer_ids = {p.node_id for p in peers}

    result = submit(node0.stub, wasm.bytes("hello"), stdin=b"console")
    receipt_path = tmp_path / "receipt.json"
    written = run_cli("--addr", node0.addr, "receipt", result.job_id, "--out", str(receipt_path))
    assert written.returncode == 0, written.stderr
    tampered_path = tmp_path / "tampered-receipt.json"
    tampered_path.write_text(json.dumps(_tamper(json.loads(receipt_path.read_text())), indent=2))
    good = verify_receipt(envelope_from_bytes(_envelope_bytes(receipt_path)))
    assert good.valid

    artifacts = Path(os.environ.get("PLASM_ARTIFACTS", REPO_ROOT / "artifacts")) / "console"
    artifacts.mkdir(parents=True, exist_ok=True)
    fixture = tmp_path / "fixture.json"
    fixture.write_text(
        json.dumps(
            {
                "url": url,
                "nodeId": node0.node_id,
                "peerIds": sorted(peer_ids),
                "token": TOKEN,
                "receiptJobId": result.job_id,
                "goodReceipt": str(receipt_path),
                "goodChecks": _checks(good),
                "tamperedReceipt": str(tampered_path),
                "slowModule": str(wasm.path("spin_then_exit")),
                "vectors": vector_expectations(),
                "artifacts": str(artifacts),
            }
        )
    )
    env = {
        **os.environ,
        "PLASM_BROWSER_FIXTURE": str(fixture),
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        "PLAYWRIGHT_BROWSERS_PATH": "0",
    }
    proc = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(SPEC)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    print(proc.stdout)
    print(proc.stderr)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    shots = sorted(artifacts.glob("*.png"))
    assert {p.name for p in shots} >= {
        "overview.png",
        "job-live.png",
        "job-finished.png",
        "verify-valid.png",
        "verify-tampered.png",
    }
    for shot in shots:
        print(f"screenshot: {shot}")


def _envelope_bytes(path: Path) -> bytes:
    message = json_format.Parse(path.read_text(), envelope_pb2.SignedEnvelope())
    return message.SerializeToString()
