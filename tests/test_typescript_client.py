"""The TypeScript client (clients/typescript) against a real plasmd, and the shared vectors in Node.

* node --test offline suites: the receipt vectors (tests/vectors/receipts.json)
  through verifyReceipt and through the browser bundle, the retry and deadline
  rules over a scripted transport, error mapping, targets, and a node that is
  not there (a closed port, a missing Unix socket). No daemon.
* The live suite (test/live.test.ts) against one plasmd serving TCP and a Unix
  socket: submit + offline verify, the Verify RPC, a tampered receipt, Watch,
  Cancel, a deadline, errors with their plasm-error-reason, the DHT calls.
* clients/typescript/examples/remote_test.ts over TCP and the Unix socket, on
  a two-node network (the job runs on the peer), and failing loudly.

Node's runner must report no skipped or todo test, so nothing vanishes. node
and clients/typescript/node_modules come from scripts/install-deps.sh (npm ci
from the committed lock): missing, these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from client_harness import (
    assert_example_ran_on_the_peer,
    client_env,
    requester_and_worker,
    require_tool,
    run_client,
    unix_target,
)
from conftest import Daemon, DaemonFactory, WasmModules

REPO = Path(__file__).resolve().parent.parent
TS_CLIENT = REPO / "clients" / "typescript"
DIST = TS_CLIENT / "dist"
EXAMPLE = DIST / "examples" / "remote_test.js"
VECTORS = REPO / "tests" / "vectors" / "receipts.json"
TIMEOUT_S = 180
CHECKS = ("signature", "signer", "expected_executor", "stdout", "stderr", "module", "input")


def node_binary() -> str:
    return require_tool("node", "Debian package nodejs")


def run(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_client(args, env, cwd=TS_CLIENT, timeout_s=TIMEOUT_S)


ts_env = client_env


@pytest.fixture(scope="module")
def built() -> None:
    """Compile the package (tsc) and its browser bundle once for these tests."""
    node = node_binary()
    modules = TS_CLIENT / "node_modules"
    if not (modules / "typescript").is_dir() or not (modules / "esbuild").is_dir():
        pytest.fail(
            f"{modules} is missing: run scripts/install-deps.sh "
            "(npm ci --prefix clients/typescript)",
            pytrace=False,
        )
    for step in (
        [node, str(modules / "typescript" / "bin" / "tsc"), "-p", "."],
        ["npm", "run", "--silent", "build:browser", "--", "--log-level=warning"],
    ):
        proc = run(step, ts_env())
        assert proc.returncode == 0, f"{' '.join(step)} failed:\n{proc.stdout}{proc.stderr}"


def node_test(env: dict[str, str], *files: str) -> int:
    """Run node --test on compiled tests; fail unless all pass and none skip. Returns the count."""
    proc = run([node_binary(), "--test", *(str(DIST / "test" / f) for f in files)], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"node --test {files} failed ({proc.returncode}):\n{output}"
    summary = {key: int(value) for key, value in re.findall(r"^# (\w+) (\d+)$", proc.stdout, re.M)}
    for key in ("fail", "cancelled", "skipped", "todo"):
        assert summary.get(key) == 0, f"{key} {summary.get(key)}:\n{output}"
    assert summary.get("pass", 0) > 0, output
    return summary["pass"]


@pytest.fixture(scope="module")
def node(plasmd_module: DaemonFactory) -> Daemon:
    """One plasmd serving gRPC on TCP and on a Unix socket, shared by these tests."""
    return plasmd_module(unix_socket=True)


def test_typescript_offline_suites(built: None) -> None:
    """No daemon: every vector (module and bundle), retries, deadlines, errors, targets, no node."""
    cases = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
    ran = node_test(ts_env(), "vectors.test.js", "bundle.test.js", "client.test.js")
    assert ran >= len(cases), f"only {ran} TypeScript tests for {len(cases)} vector cases"


def test_typescript_live_suite(built: None, node: Daemon, wasm: WasmModules) -> None:
    env = ts_env(
        PLASM_ADDR=node.addr,
        PLASM_UNIX=unix_target(node),
        PLASM_HELLO_WASM=str(wasm.path("hello")),
        PLASM_LOOP_WASM=str(wasm.path("infinite_loop")),
    )
    node_test(env, "live.test.js")
    # The daemon is still healthy after the deadline, tamper and cancel tests.
    assert node.running
    assert node.health_status() == "SERVING"


def example(target: str, wasm: WasmModules, expect: str) -> subprocess.CompletedProcess[str]:
    return run(
        [node_binary(), str(EXAMPLE), str(wasm.path("hello"))],
        ts_env(PLASM_ADDR=target, PLASM_EXPECT_EXECUTOR=expect),
    )


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_remote_test_example(built: None, node: Daemon, wasm: WasmModules, transport: str) -> None:
    target = node.addr if transport == "tcp" else unix_target(node)
    proc = example(target, wasm, node.node_id)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert 'stdout     "dlroW ,olleH"' in out
    for check in CHECKS:
        assert re.search(rf"^  {check} +ok ", out, re.M), f"check {check} not shown as ok:\n{out}"
    assert f"executor   {node.node_id} (the node we asked)" in out
    assert "receipt    VALID" in out
    assert re.search(r"^  signature +FAIL ", out, re.M), out
    assert "tampered   REJECTED" in out
    assert out.rstrip().endswith("remote_test: OK")


def test_remote_test_example_fails_loudly(built: None, node: Daemon, wasm: WasmModules) -> None:
    """An unexpected executor fails the run; so does a node that is not there."""
    wrong = example(node.addr, wasm, "0" * 64)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert re.search(r"^  expected_executor +FAIL ", wrong.stdout, re.M), wrong.stdout
    assert "receipt    INVALID" in wrong.stdout
    assert "remote_test: FAILED" in wrong.stdout

    down = example("127.0.0.1:1", wasm, "")
    assert down.returncode == 1, down.stdout + down.stderr
    assert "UNAVAILABLE" in down.stderr


def test_remote_test_example_on_a_peer(
    built: None, plasmd_module: DaemonFactory, wasm: WasmModules
) -> None:
    """Two nodes: the job submitted to A runs on B; TypeScript checks B's receipt offline."""
    a, b = requester_and_worker(plasmd_module)
    proc = example(a.addr, wasm, b.node_id)
    assert_example_ran_on_the_peer(proc, a, b)
