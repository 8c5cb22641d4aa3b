"""plasmd as a process: identity, durability across restarts and kill -9,
graceful drain on SIGTERM, a responsive event loop, the Unix socket, the
`plasm` CLI and startup configuration errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    MIB,
    Daemon,
    DaemonError,
    DaemonFactory,
    WasmModules,
    assert_receipt_matches,
    error_status,
    make_request,
    rpc_error,
    submit,
    verify_result,
    wait_until,
)
from plasm.v1 import receipt_pb2, service_pb2, service_pb2_grpc

from plasm_grpc.api import codec

Outcome = receipt_pb2.Outcome
SC = grpc.StatusCode


def get_receipt(node: Daemon, job_id: str) -> service_pb2.StoredReceipt:
    response = node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=job_id), timeout=10)
    return response.receipt


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- identity ----------------------------------------------------------------------------------


def test_node_key_is_private_and_node_id_stable(plasmd: DaemonFactory) -> None:
    node = plasmd()
    key_file = node.data_dir / "node.key"
    assert key_file.is_file()
    assert mode(key_file) == 0o600
    assert key_file.stat().st_size == 32
    assert mode(node.data_dir / "cache.mac.key") == 0o600
    assert mode(node.data_dir) & 0o077 == 0, "the data directory is private"
    identity = node.events("identity")
    assert len(identity) == 1
    assert identity[0]["created"] is True
    assert identity[0]["node_id"] == node.node_id
    info = node.node_info()
    assert info.node_id == hashlib.sha256(info.public_key).hexdigest() == node.node_id
    first_id, first_key = node.node_id, key_file.read_bytes()

    node.restart()
    assert node.node_id == first_id
    assert node.events("identity")[0]["created"] is False
    assert node.node_info().node_id == first_id
    assert key_file.read_bytes() == first_key
    assert mode(key_file) == 0o600
    # The key never shows up in the logs.
    assert first_key.hex() not in "\n".join(node.lines(all_runs=True))


def test_refuses_a_key_readable_by_others(plasmd: DaemonFactory) -> None:
    node = plasmd()
    assert node.stop() == 0
    key_file = node.data_dir / "node.key"
    key_file.chmod(0o644)
    with pytest.raises(DaemonError, match="exited with 1"):
        node.start()
    text = "\n".join(node.lines())
    assert "readable by other users" in text
    assert "chmod 600" in text


# -- durability -----------------------------------------------------------------------------------


def test_receipts_survive_graceful_restart(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd()
    jobs = [
        submit(node.stub, wasm.bytes("hello"), stdin=b"one"),
        submit(node.stub, wasm.bytes("exit_3")),
        submit(node.stub, wasm.bytes("trap_unreachable")),
        submit(node.stub, wasm.bytes("garbage")),
        submit(node.stub, wasm.bytes("infinite_loop"), timeout_ms=50),
    ]
    assert node.stop(signal.SIGTERM) == 0
    events = [e["event"] for e in node.logs()]
    assert events[-3:] == ["signal", "draining", "stopped"]
    assert node.events("stopped")[0]["jobs_completed"] == len(jobs)

    node.start()
    assert node.addr.startswith("127.0.0.1:")
    for result in jobs:
        stored = get_receipt(node, result.job_id)
        assert stored.receipt == result.receipt, "the stored envelope is byte-identical"
        assert stored.body.outcome == result.outcome
    info = node.node_info()
    assert info.receipts_stored == len(jobs)
    assert info.jobs_completed == 0  # since this start
    listed = node.stub.ListReceipts(service_pb2.ListReceiptsRequest(), timeout=10)
    assert [r.body.job_id for r in listed.receipts] == [r.job_id for r in reversed(jobs)]


def _submit_concurrently(
    node: Daemon, module: bytes, total: int, kill_after: int | None
) -> list[Any]:
    """Submit `total` hello jobs 16 at a time; return the acknowledged results.

    With `kill_after`, kill -9 the daemon as soon as that many have been
    acknowledged; otherwise immediately after the last acknowledgement.
    """
    acked: list[Any] = []

    def one(i: int) -> Any:
        return submit(node.stub, module, stdin=f"durable {i}".encode(), timeout=60)

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        for future in as_completed(futures, timeout=120):
            try:
                acked.append(future.result())
            except (grpc.RpcError, ValueError):  # ValueError: RPC on the closed channel
                assert kill_after is not None, "only RPCs cut off by the kill may fail"
                continue
            if kill_after is not None and len(acked) == kill_after:
                assert node.kill9() == -signal.SIGKILL
        if kill_after is None:
            assert node.kill9() == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("kill_after", [None, 20], ids=["after-last-ack", "mid-stream"])
def test_acknowledged_receipts_survive_kill9(
    plasmd: DaemonFactory, wasm: WasmModules, kill_after: int | None
) -> None:
    node = plasmd("[jobs]\nslots = 2\n")
    total = 50
    acked = _submit_concurrently(node, wasm.bytes("hello"), total, kill_after)
    if kill_after is None:
        assert len(acked) == total
    else:
        assert kill_after <= len(acked) < total
    assert not node.events("stopped"), "kill -9 gives no chance to shut down"

    node.start()
    for result in acked:
        assert result.outcome == Outcome.OUTCOME_SUCCESS
        stored = get_receipt(node, result.job_id)
        assert stored.receipt == result.receipt
        verification = verify_result(result, stdin=result.stdout[::-1], node_id=node.node_id)
        assert_receipt_matches(result, verification)
    assert node.node_info().receipts_stored >= len(acked)
    # The node is fully usable after the crash.
    after = submit(node.stub, wasm.bytes("hello"), stdin=b"recovered")
    assert after.stdout == b"derevocer"


# -- graceful shutdown --------------------------------------------------------------------------


def test_sigterm_lets_running_job_finish(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\nslots = 2\n")
    module = wasm.bytes("infinite_loop")
    hello = wasm.bytes("hello")
    submit(node.stub, hello)  # compile hello before the drain

    with ThreadPoolExecutor(max_workers=1) as pool:
        long_job = pool.submit(submit, node.stub, module, timeout_ms=2000, timeout=30)
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="job running")
        node.send_signal(signal.SIGTERM)
        assert node.wait_for_event("draining", timeout=10) is not None

        # While draining: health says NOT_SERVING and new jobs are refused.
        try:
            health: Any = node.health_status()
        except grpc.RpcError as err:
            health = error_status(err)[0]
        assert health in ("NOT_SERVING", SC.UNAVAILABLE)
        code, reason, _ = rpc_error(lambda: node.stub.Submit(make_request(hello), timeout=10))
        assert code == SC.UNAVAILABLE
        assert reason in ("ERROR_REASON_SHUTTING_DOWN", "")
        if reason:
            assert not long_job.done(), "the refusal came during the drain"

        result = long_job.result(timeout=30)
    assert result.outcome == Outcome.OUTCOME_TIMEOUT, result.detail
    assert_receipt_matches(result, verify_result(result, module=module))
    assert node.wait(timeout=30) == 0
    stopped = node.events("stopped")
    assert stopped
    assert stopped[0]["jobs_completed"] == 2
    refused = node.events("job_refused")
    assert all(e["reason"] == "SHUTTING_DOWN" for e in refused)

    node.start()
    assert get_receipt(node, result.job_id).receipt == result.receipt


def test_sigterm_on_idle_node_exits_zero(plasmd: DaemonFactory) -> None:
    node = plasmd()
    assert node.stop(signal.SIGTERM, timeout=15) == 0
    assert [e["event"] for e in node.logs()][-3:] == ["signal", "draining", "stopped"]
    node.start()
    assert node.stop(signal.SIGINT, timeout=15) == 0
    assert node.events("stopped")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_right_after_ready_drains(plasmd: DaemonFactory, sig: int) -> None:
    """Once plasmd has said ``ready`` (and is serving), SIGTERM/SIGINT must drain.

    A supervisor or script may stop the node as soon as it reports ready. Today
    the handlers are installed only after ``ready`` is logged, so a signal in that
    window kills the node (-15) or raises KeyboardInterrupt (-2), with no drain.
    """
    node = plasmd(start=False)
    codes = []
    for _ in range(6):
        node.start()
        codes.append(node.stop(sig, timeout=15, wait_for_handlers=False))
    assert codes == [0] * len(codes)


# -- the event loop is never blocked ------------------------------------------------------------


def test_serves_while_a_long_job_runs(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\nslots = 2\n")
    hello = wasm.bytes("hello")
    submit(node.stub, hello)  # warm the compile cache
    with ThreadPoolExecutor(max_workers=1) as pool:
        long_job = pool.submit(
            submit, node.stub, wasm.bytes("infinite_loop"), timeout_ms=3000, timeout=30
        )
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="job running")
        # The proof the loop is free: these all answer while the job still runs.
        assert node.health_status(timeout=5.0) == "SERVING"
        assert node.health_status("plasm.v1.PlasmService", timeout=5.0) == "SERVING"
        info = node.node_info()
        assert info.jobs_running == 1
        assert info.capabilities.free_job_slots == 1
        quick = submit(node.stub, hello, stdin=b"quick", timeout=5)
        assert quick.outcome == Outcome.OUTCOME_SUCCESS
        assert quick.stdout == b"kciuq"
        assert not long_job.done(), "hello finished while the long job was still running"
        result = long_job.result(timeout=30)
    assert result.outcome == Outcome.OUTCOME_TIMEOUT


def test_single_slot_still_answers_rpcs(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    """With the only slot taken, health and GetNodeInfo still answer at once."""
    node = plasmd("[jobs]\nslots = 1\n")
    with ThreadPoolExecutor(max_workers=1) as pool:
        long_job = pool.submit(
            submit, node.stub, wasm.bytes("infinite_loop"), timeout_ms=1500, timeout=30
        )
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="job running")
        for _ in range(5):
            assert node.health_status(timeout=5.0) == "SERVING"
            node.stub.ListReceipts(service_pb2.ListReceiptsRequest(), timeout=5.0)
        assert not long_job.done(), "the RPCs were answered while the only slot was busy"
        assert long_job.result(timeout=30).outcome == Outcome.OUTCOME_TIMEOUT


# -- Unix socket ---------------------------------------------------------------------------------


def test_unix_socket_serves_submit(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd(unix_socket=True)
    sock = node.unix_socket
    assert sock is not None
    target = f"unix:{sock}"
    assert target in node.addresses
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert mode(sock) == 0o660
    stub = service_pb2_grpc.PlasmServiceStub(node.channel(target))
    result = submit(stub, wasm.bytes("hello"), stdin=b"over a socket")
    assert result.outcome == Outcome.OUTCOME_SUCCESS
    assert result.stdout == b"tekcos a revo"
    verification = verify_result(result, stdin=b"over a socket", node_id=node.node_id)
    assert_receipt_matches(result, verification)
    info = stub.GetNodeInfo(service_pb2.GetNodeInfoRequest(), timeout=10)
    assert set(info.grpc_addresses) == {node.addr, target}
    assert node.stop() == 0
    assert not sock.exists(), "the socket is removed on shutdown"


def test_unix_socket_only(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd(unix_socket=True, listen="")
    assert node.addresses == [f"unix:{node.unix_socket}"]
    assert node.addr == node.addresses[0]
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"ab")
    assert result.stdout == b"ba"


def test_second_daemon_does_not_steal_a_live_socket(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    first = plasmd(unix_socket=True)
    sock = first.unix_socket
    assert sock is not None
    second = plasmd(unix_socket=sock, start=False)
    with pytest.raises(DaemonError, match="another process is serving on"):
        second.start()
    result = submit(first.stub, wasm.bytes("hello"), stdin=b"still mine")
    assert result.stdout == b"enim llits"
    assert sock.exists()


def test_stale_socket_is_replaced(plasmd: DaemonFactory, tmp_path: Path) -> None:
    import socket as socketlib

    sock = tmp_path / "stale.sock"
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.bind(str(sock))
    s.close()  # a socket file nobody listens on: what a crash leaves
    node = plasmd(unix_socket=sock)
    assert f"unix:{sock}" in node.addresses


def test_data_dir_writable_by_others_is_refused(plasmd: DaemonFactory, tmp_path: Path) -> None:
    data = tmp_path / "shared-data"
    data.mkdir()
    data.chmod(0o777)
    node = plasmd(data_dir=data, start=False)
    with pytest.raises(DaemonError, match="writable by other users"):
        node.start()
    assert not (data / "node.key").exists()


def test_garbage_uploads_are_not_kept(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd()
    garbage = wasm.bytes("garbage")
    result = submit(node.stub, garbage)
    assert result.outcome == Outcome.OUTCOME_INVALID_MODULE
    assert not (node.data_dir / "modules" / f"{wasm.sha256('garbage')}.wasm").exists()
    submit(node.stub, wasm.bytes("hello"))
    assert (node.data_dir / "modules" / f"{wasm.sha256('hello')}.wasm").exists()


# -- the plasm CLI ---------------------------------------------------------------------------------


def plasm_command() -> list[str]:
    script = Path(sys.executable).with_name("plasm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "plasm_grpc.cli.main"]


def run_cli(
    *args: str, cwd: Path | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PLASM_ADDR", "FORCE_TERMINAL")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": str(columns)})
    return subprocess.run(
        [*plasm_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_node(plasmd_module: DaemonFactory) -> Daemon:
    return plasmd_module()


def test_cli_submit_prints_stdout(cli_node: Daemon, wasm: WasmModules) -> None:
    proc = run_cli(
        "--addr", cli_node.addr, "submit", str(wasm.path("hello")), "--stdin", "Hello, World"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "dlroW ,olleH"
    assert "receipt verified" in proc.stderr


def test_cli_submit_json(cli_node: Daemon, wasm: WasmModules) -> None:
    proc = run_cli(
        "--addr",
        cli_node.addr,
        "submit",
        str(wasm.path("hello")),
        "--stdin",
        "Hello, World",
        "--json",
        "--expect-node",
        cli_node.node_id,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verification"]["valid"] is True
    assert out["verification"]["signerNodeId"] == cli_node.node_id
    assert {c["name"] for c in out["verification"]["checks"]} >= {
        "signature",
        "signer",
        "expected_executor",
        "stdout",
        "module",
        "input",
    }
    assert out["outcome"] == "success"
    assert out["stdout"] == "dlroW ,olleH"
    assert len(out["jobId"]) == 32
    assert out["receiptBody"]["jobId"] == out["jobId"]
    assert out["receiptBody"]["moduleSha256"] == wasm.sha256("hello")
    stored = get_receipt(cli_node, out["jobId"])
    assert base64.b64decode(out["receipt"]["payload"]) == stored.receipt.payload


def test_cli_exit_codes_follow_the_job(cli_node: Daemon, wasm: WasmModules) -> None:
    nonzero = run_cli(
        "--addr", cli_node.addr, "submit", str(wasm.path("args_env")), "--env", "PLASM_EXIT=7"
    )
    assert nonzero.returncode == 7, nonzero.stderr
    assert "env PLASM_EXIT=7" in nonzero.stdout
    trap = run_cli("--addr", cli_node.addr, "submit", str(wasm.path("trap_unreachable")))
    assert trap.returncode == 3, trap.stderr
    assert "trap" in trap.stderr


def test_cli_cannot_reach_daemon() -> None:
    proc = run_cli("--addr", "127.0.0.1:1", "--timeout", "10", "info")
    assert proc.returncode == 1
    assert "cannot reach plasmd" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_info(cli_node: Daemon) -> None:
    proc = run_cli("--addr", cli_node.addr, "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["nodeId"] == cli_node.node_id
    assert info["capabilities"]["runtimeName"] == "wasmtime"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"limits": {"timeoutMs": -5}}, "timeoutMs"),
        ({"args": "not-a-list"}, "args"),
        ({"env": [{"name": "A", "valu": "typo"}]}, "valu"),
        ({"bogusField": 1}, "bogusField"),
    ],
    ids=["negative-limit", "args-type", "env-typo", "unknown-field"],
)
def test_cli_manifest_schema_violation(
    cli_node: Daemon, tmp_path: Path, document: dict[str, Any], field: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document), "utf-8")
    proc = run_cli("--addr", cli_node.addr, "submit", "--manifest", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "does not match the JobManifest schema" in proc.stderr
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_verify_receipt_file(cli_node: Daemon, wasm: WasmModules, tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    proc = run_cli(
        "--addr",
        cli_node.addr,
        "submit",
        str(wasm.path("hello")),
        "--stdin",
        "abc",
        "--receipt-out",
        str(receipt),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "cba"
    stdout_file = tmp_path / "stdout"
    stdout_file.write_bytes(b"cba")

    ok = run_cli("verify", str(receipt))
    assert ok.returncode == 0, ok.stderr
    assert "receipt verified" in ok.stderr
    ok = run_cli(
        "verify",
        str(receipt),
        "--stdout-file",
        str(stdout_file),
        "--module",
        str(wasm.path("hello")),
        "--expect-node",
        cli_node.node_id,
    )
    assert ok.returncode == 0, ok.stderr

    document = json.loads(receipt.read_text("utf-8"))
    payload = bytearray(base64.b64decode(document["payload"]))
    payload[len(payload) // 2] ^= 0x01
    document["payload"] = base64.b64encode(bytes(payload)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document), "utf-8")
    bad = run_cli("verify", str(tampered))
    assert bad.returncode == 4, bad.stderr
    assert "NOT verified" in bad.stderr

    stdout_file.write_bytes(b"abc")
    wrong_stdout = run_cli("verify", str(receipt), "--stdout-file", str(stdout_file))
    assert wrong_stdout.returncode == 4, wrong_stdout.stderr


def test_cli_verify_via_daemon(cli_node: Daemon, wasm: WasmModules, tmp_path: Path) -> None:
    result = submit(cli_node.stub, wasm.bytes("hello"), stdin=b"xyz")
    receipt = tmp_path / "receipt.bin"
    receipt.write_bytes(result.receipt.SerializeToString())
    proc = run_cli("--addr", cli_node.addr, "verify", str(receipt), "--daemon", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
    proc = run_cli("--addr", cli_node.addr, "verify", "--job-id", result.job_id)
    assert proc.returncode == 0, proc.stderr


# -- plasmd startup configuration -----------------------------------------------------------------


def run_plasmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLASM_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "plasm_grpc.daemon.main", "--data-dir", str(cwd / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_plasmd_missing_config_file(tmp_path: Path) -> None:
    proc = run_plasmd("--config", str(tmp_path / "nonexistent.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nonexistent.toml" in proc.stderr
    assert "does not exist" in proc.stderr
    assert not (tmp_path / "data").exists(), "nothing is created on a config error"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("[jobs]\nbogus_key = 1\n", "jobs.bogus_key"),
        ("no_such_section_key = true\n", "no_such_section_key"),
        ('[jobs]\nslots = "two"\n', "jobs.slots"),
        ("[jobs\nslots = 1\n", "not valid TOML"),
        ("[limits.default]\ntimeout_ms = 999999\n", "limits.default.timeout_ms"),
    ],
    ids=["unknown-key", "unknown-top-level", "wrong-type", "bad-toml", "default-above-max"],
)
def test_plasmd_bad_config(tmp_path: Path, config: str, needle: str) -> None:
    path = tmp_path / "plasmd.toml"
    path.write_text(config, "utf-8")
    proc = run_plasmd("--config", str(path), "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_partial_limits_max_table_keeps_other_maxima(tmp_path: Path) -> None:
    """docs/configuration.md: every key is optional. Setting one [limits.max] key
    must leave the other maxima at their defaults (it currently zeroes them, so
    the default limits are "above" the maximum and plasmd refuses to start)."""
    path = tmp_path / "plasmd.toml"
    path.write_text(f"[limits.max]\nmax_memory_bytes = {128 * MIB}\n", "utf-8")
    proc = run_plasmd("--config", str(path), "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"max_memory_bytes = {128 * MIB}" in proc.stdout
    assert "max_fuel = 1000000000000" in proc.stdout
    assert "timeout_ms = 300000" in proc.stdout


def test_partial_limits_default_table_keeps_other_defaults(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    """Setting only [limits.default] timeout_ms must keep the default memory, fuel
    and output limits (it currently zeroes them, so every job runs with 0 bytes of
    memory, 0 fuel and no output)."""
    node = plasmd("[limits.default]\ntimeout_ms = 2000\n")
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"defaults")
    body = codec.decode_receipt_body(result.receipt.payload)
    assert body.limits.timeout_ms == 2000
    assert body.limits.max_memory_bytes == 64 * MIB
    assert body.limits.max_fuel == 10_000_000_000
    assert body.limits.max_stdout_bytes == 4 * MIB
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert result.stdout == b"stluafed"


def _large_module(functions: int = 30_000) -> bytes:
    """A valid WASI command whose compile takes a noticeable while (~2 s here)."""
    import wasmtime

    body = " ".join(
        f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {j})) (i32.const {j})))"
        for j in range(40)
    )
    funcs = " ".join(
        f"(func $f{i} (param i32) (result i32) (local i32) {body} (local.get 0))"
        for i in range(functions)
    )
    wat = f'(module (memory (export "memory") 1) {funcs} (func (export "_start")))'
    return bytes(wasmtime.wat2wasm(wat))


def test_serves_while_a_large_module_compiles(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    big = _large_module()
    node = plasmd("[jobs]\nslots = 2\n")
    hello = wasm.bytes("hello")
    submit(node.stub, hello)  # warm, so only the big module is compiling
    with ThreadPoolExecutor(max_workers=1) as pool:
        compiling = pool.submit(submit, node.stub, big, timeout=120)
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="compile running")
        assert node.health_status(timeout=5.0) == "SERVING"
        quick = submit(node.stub, hello, stdin=b"abc", timeout=5)
        assert quick.stdout == b"cba"
        assert not compiling.done(), "answered while the large module was still compiling"
        result = compiling.result(timeout=120)
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert node.node_info().cached_modules == 2


def test_drain_timeout_cancels_running_jobs_and_keeps_receipts(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    node = plasmd("[jobs]\nslots = 1\ndrain_timeout_s = 1.0\n")
    module = wasm.bytes("infinite_loop")
    with ThreadPoolExecutor(max_workers=1) as pool:
        long_job = pool.submit(
            submit, node.stub, module, timeout_ms=120_000, max_fuel=10**12, timeout=60
        )
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="job running")
        node.send_signal(signal.SIGTERM)
        result = long_job.result(timeout=60)
    assert result.outcome == Outcome.OUTCOME_CANCELLED, result.detail
    assert_receipt_matches(result, verify_result(result, module=module))
    assert node.wait(timeout=60) == 0
    assert node.events("drain_timeout")
    node.start()
    assert get_receipt(node, result.job_id).receipt == result.receipt


def test_bootstrap_peers_connect_and_show_in_node_info_and_cli(plasmd: DaemonFactory) -> None:
    a = plasmd()
    a_overlay = a.node_info().overlay_address
    assert a_overlay.startswith("127.0.0.1:")
    b = plasmd(f'[overlay]\nbootstrap = ["{a.node_id}@{a_overlay}"]\nreconnect_interval_s = 0.5\n')
    wait_until(
        lambda: [p.node_id for p in b.node_info().peers] == [a.node_id],
        timeout=20,
        what="B connected to its bootstrap peer A",
    )
    wait_until(
        lambda: [p.node_id for p in a.node_info().peers] == [b.node_id],
        timeout=20,
        what="A sees B",
    )
    (peer,) = b.node_info().peers
    assert peer.direction == "outbound"
    assert peer.address == a_overlay
    assert a.events("overlay_connected")
    assert b.events("overlay_connected")
    proc = run_cli("--addr", b.addr, "peers", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["peers"][0]["nodeId"] == a.node_id


def test_bootstrap_peer_with_a_different_identity_is_refused(plasmd: DaemonFactory) -> None:
    a = plasmd()
    wrong = "ab" * 32
    b = plasmd(
        f'[overlay]\nbootstrap = ["{wrong}@{a.node_info().overlay_address}"]\n'
        "reconnect_interval_s = 0.5\n"
    )
    event = b.wait_for_event("overlay_handshake_failed", timeout=20)
    assert event is not None
    assert wrong in json.dumps(event)
    assert b.node_info().peers == []
