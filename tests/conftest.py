"""Shared fixtures for the end-to-end daemon tests.

* ``wasm`` (session): builds ``examples/build/*.wasm`` and ``tests/wasm/build/*.wasm``
  once with ``scripts/build-examples.sh`` and hands out their bytes and paths.
* ``plasmd`` (function) / ``plasmd_module`` (module): factories that start a real
  ``plasmd`` subprocess on ``127.0.0.1:0`` in a fresh data directory and return a
  `Daemon` handle. Every daemon is killed and every channel closed on teardown.

Plain helpers (``submit``, ``rpc_error``, ``verify_result`` ...) are importable
from the test modules with ``from conftest import ...``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from plasm.v1 import (
    capability_pb2,
    job_pb2,
    limits_pb2,
    manifest_pb2,
    receipt_pb2,
    service_pb2,
    service_pb2_grpc,
)

from plasm_grpc.api.codec import envelope_from_pb
from plasm_grpc.api.verify import ReceiptInput, VerifyResult, verify_receipt

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-examples.sh"
EXAMPLES_BUILD = REPO_ROOT / "examples" / "build"
WASM_BUILD = REPO_ROOT / "tests" / "wasm" / "build"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 30.0
REASON_KEY = "plasm-error-reason"
CLIENT_MAX_MESSAGE = 256 * 1024 * 1024
MIB = 1024 * 1024

# -- building the test modules -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WasmModules:
    """The built example programs and WAT fixtures, by name (``hello``, ``exit_3``...)."""

    paths: dict[str, Path]

    def path(self, name: str) -> Path:
        return self.paths[name]

    def bytes(self, name: str) -> bytes:
        return self.paths[name].read_bytes()

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.bytes(name)).hexdigest()


@pytest.fixture(scope="session")
def wasm() -> WasmModules:
    """Run scripts/build-examples.sh once per session (it is idempotent)."""
    clang = os.environ.get("CLANG", "clang-14")
    wat2wasm = os.environ.get("WAT2WASM", "wat2wasm")
    missing = [tool for tool in (clang, wat2wasm) if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"cannot build the test modules: {', '.join(missing)} not found on PATH; "
            "install the build dependencies with scripts/install-deps.sh "
            "(Debian packages clang-14, lld-14, wasi-libc, libclang-rt-14-dev-wasm32, wabt)",
            pytrace=False,
        )
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build-examples.sh failed with exit code {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    paths = {p.stem: p for p in sorted(EXAMPLES_BUILD.glob("*.wasm"))}
    paths.update({p.stem: p for p in sorted(WASM_BUILD.glob("*.wasm"))})
    for name in ("hello", "args_env", "infinite_loop", "garbage"):
        if name not in paths:
            pytest.fail(f"scripts/build-examples.sh did not produce {name}.wasm", pytrace=False)
    return WasmModules(paths)


# -- the daemon ----------------------------------------------------------------------------


class DaemonError(RuntimeError):
    pass


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Daemon:
    """One ``plasmd`` subprocess (restartable on the same data directory).

    ``start()`` launches it and waits (bounded) for the ``ready`` event, whose
    ``grpc`` list gives the bound address. A background thread reads stderr and
    keeps every line of every run.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        config_path: Path | None = None,
        unix_socket: Path | None = None,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.config_path = config_path
        self.unix_socket = unix_socket
        self.listen = listen
        self.overlay_listen = "127.0.0.1:0"
        self.env = env
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[str] = []
        self.addr = ""
        self.node_id = ""
        self.runs = 0
        self._lines: list[str] = []  # current run
        self._all_lines: list[str] = []  # every run
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._channels: list[grpc.Channel] = []
        self._channel: grpc.Channel | None = None
        self._stub: service_pb2_grpc.PlasmServiceStub | None = None

    # -- process ---------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "plasm_grpc.daemon.main",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.listen,
            "--overlay-listen",
            self.overlay_listen,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if self.unix_socket is not None:
            cmd += ["--unix-socket", str(self.unix_socket)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = READY_TIMEOUT_S) -> Daemon:
        if self.running:
            raise DaemonError("plasmd is already running")
        self._close_channels()
        env = dict(os.environ)
        env.pop("PLASM_CONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"
        if self.env:
            env.update(self.env)
        with self._cond:
            self._lines = []
            self._eof = False
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.data_dir.parent,
        )
        self.runs += 1
        self._reader = threading.Thread(
            target=self._read_stderr,
            args=(self.proc,),
            name=f"plasmd-stderr-{self.proc.pid}",
            daemon=True,
        )
        self._reader.start()
        ready = self.wait_for_event("ready", timeout=timeout)
        if ready is None:
            code = self.proc.poll()
            if code is None and self._eof:  # stderr closed: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.proc.wait(timeout=10)
            text = "\n".join(self.lines())
            state = f"exited with {code}" if code is not None else f"not ready in {timeout} s"
            self.kill9()
            raise DaemonError(f"plasmd {state}; its stderr:\n{text}")
        self.addresses = list(ready["grpc"])
        tcp = [a for a in self.addresses if not a.startswith("unix:")]
        self.addr = tcp[0] if tcp else self.addresses[0]
        self.node_id = ready["node_id"]
        return self

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        stream = proc.stderr
        assert stream is not None
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self._lines.append(line)
                    self._all_lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _finish(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise DaemonError(f"plasmd did not exit within {timeout} s; killed it") from None
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)
            self._close_channels()
        return code

    def signal_handlers_installed(self) -> bool:
        """True once plasmd catches SIGTERM (its asyncio handlers are in place).

        Read from /proc/PID/status (SigCgt). plasmd logs ``ready`` before it
        installs its SIGTERM/SIGINT handlers, so a signal sent right after
        ``ready`` can kill it without a drain (see test_daemon_lifecycle.py,
        test_signal_right_after_ready_drains).
        """
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return True  # no procfs: nothing to wait for
        for line in status.splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return True

    def wait_for_signal_handlers(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running and not self.signal_handlers_installed():
            if time.monotonic() > deadline:
                raise DaemonError(f"plasmd did not install its signal handlers in {timeout} s")
            time.sleep(0.01)
        time.sleep(0.02)  # SIGINT's handler is installed just after SIGTERM's

    def send_signal(self, sig: int, *, wait_for_handlers: bool = True) -> None:
        """Send `sig` without waiting for the exit.

        By default first waits (bounded) until plasmd handles SIGTERM/SIGINT.
        """
        if self.running:
            assert self.proc is not None
            if wait_for_handlers and sig in (signal.SIGTERM, signal.SIGINT):
                self.wait_for_signal_handlers()
            self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait (bounded) for the process to exit; return its exit code."""
        return self._finish(timeout)

    def stop(
        self,
        sig: int = signal.SIGTERM,
        timeout: float = STOP_TIMEOUT_S,
        *,
        wait_for_handlers: bool = True,
    ) -> int:
        """Send `sig` (SIGTERM: graceful drain) and return the exit code."""
        if self.proc is None:
            raise DaemonError("plasmd was never started")
        self.send_signal(sig, wait_for_handlers=wait_for_handlers)
        return self._finish(timeout)

    def kill9(self) -> int:
        if self.proc is None:
            raise DaemonError("plasmd was never started")
        if self.proc.poll() is None:
            self.proc.kill()
        return self._finish(10)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> Daemon:
        """Stop gracefully if running, then start again on the same data dir."""
        if self.running:
            code = self.stop()
            if code != 0:
                raise DaemonError(f"plasmd exited with {code} on SIGTERM")
        return self.start(timeout=timeout)

    def close(self) -> None:
        """Teardown: kill whatever is still running and release every resource."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self._reader is not None:
                self._reader.join(timeout=10)
            if self.proc.stderr is not None:
                with contextlib.suppress(OSError):
                    self.proc.stderr.close()
        self._close_channels()

    # -- logs ------------------------------------------------------------------------

    def lines(self, all_runs: bool = False) -> list[str]:
        with self._cond:
            return list(self._all_lines if all_runs else self._lines)

    def logs(self, all_runs: bool = False) -> list[dict[str, Any]]:
        """The JSON log events (non-JSON lines are skipped) of this run or every run."""
        return [r for r in map(_parse_line, self.lines(all_runs)) if r is not None]

    def events(self, name: str, all_runs: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.logs(all_runs) if r.get("event") == name]

    def wait_for_event(
        self,
        name: str,
        timeout: float = 10.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any] | None:
        """The first event `name` of this run (waiting, bounded); None on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    record = _parse_line(line)
                    if (
                        record is not None
                        and record.get("event") == name
                        and (predicate is None or predicate(record))
                    ):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return None
                self._cond.wait(timeout=min(remaining, 0.5))

    # -- gRPC ------------------------------------------------------------------------

    def channel(self, target: str | None = None) -> grpc.Channel:
        """A new channel to the daemon (closed on stop/teardown)."""
        channel = grpc.insecure_channel(
            target or self.addr,
            options=[
                ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
                ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
                ("grpc.enable_retries", 0),
            ],
        )
        self._channels.append(channel)
        return channel

    @property
    def stub(self) -> service_pb2_grpc.PlasmServiceStub:
        if self._stub is None:
            if not self.addr:
                raise DaemonError("plasmd is not running")
            self._channel = self.channel()
            self._stub = service_pb2_grpc.PlasmServiceStub(self._channel)
        return self._stub

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        self.stub  # noqa: B018 - make sure the shared channel exists
        assert self._channel is not None
        return health_pb2_grpc.HealthStub(self._channel)

    def health_status(self, service: str = "", timeout: float = 5.0) -> str:
        response = self.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def node_info(self) -> service_pb2.GetNodeInfoResponse:
        return self.stub.GetNodeInfo(service_pb2.GetNodeInfoRequest(), timeout=RPC_TIMEOUT_S)

    def _close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._channel = None
        self._stub = None


@dataclass(slots=True)
class DaemonFactory:
    """Starts daemons in fresh directories under `base`; `close()` tears them all down."""

    base: Path
    daemons: list[Daemon] = field(default_factory=list)

    def __call__(
        self,
        config: str | None = None,
        *,
        unix_socket: bool | Path = False,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        start: bool = True,
    ) -> Daemon:
        index = len(self.daemons)
        root = self.base / f"node{index}"
        root.mkdir(parents=True, exist_ok=True)
        config_path = None
        if config is not None:
            config_path = root / "plasmd.toml"
            config_path.write_text(config, encoding="utf-8")
        if unix_socket is True:
            socket_path: Path | None = root / "plasmd.sock"
        elif unix_socket:
            socket_path = Path(unix_socket)
        else:
            socket_path = None
        daemon = Daemon(
            data_dir=data_dir or root / "data",
            config_path=config_path,
            unix_socket=socket_path,
            listen=listen,
            env=env,
            extra_args=extra_args,
        )
        self.daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()


@pytest.fixture
def plasmd(tmp_path: Path, wasm: WasmModules) -> Iterator[DaemonFactory]:
    """Factory: ``plasmd(config_toml=None, *, unix_socket=False, listen=..., env=None)``."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def plasmd_module(
    tmp_path_factory: pytest.TempPathFactory, wasm: WasmModules
) -> Iterator[DaemonFactory]:
    """Like `plasmd`, for daemons shared by every test of a module."""
    factory = DaemonFactory(tmp_path_factory.mktemp("plasmd"))
    try:
        yield factory
    finally:
        factory.close()


# -- request helpers -----------------------------------------------------------------------


def make_request(
    module: bytes = b"",
    *,
    stdin: bytes = b"",
    args: Sequence[str] = (),
    env: Sequence[tuple[str, str]] = (),
    module_sha256: str = "",
    placement: capability_pb2.PlacementRequirements | None = None,
    **limits: int,
) -> service_pb2.SubmitRequest:
    manifest = manifest_pb2.JobManifest(
        module_sha256=module_sha256,
        args=list(args),
        env=[manifest_pb2.EnvVar(name=k, value=v) for k, v in env],
        stdin=stdin,
        limits=limits_pb2.ResourceLimits(**limits),
    )
    if placement is not None:
        manifest.placement.CopyFrom(placement)
    return service_pb2.SubmitRequest(manifest=manifest, module=module)


def submit(
    stub: service_pb2_grpc.PlasmServiceStub,
    module: bytes = b"",
    *,
    timeout: float = RPC_TIMEOUT_S,
    **kwargs: Any,
) -> job_pb2.JobResult:
    """Submit one job; returns the JobResult (raises grpc.RpcError on refusal)."""
    response = stub.Submit(make_request(module, **kwargs), timeout=timeout)
    return response.result


def error_status(err: grpc.RpcError) -> tuple[grpc.StatusCode | None, str, str]:
    """(status code, plasm-error-reason or "", details) of a failed call."""
    if not isinstance(err, grpc.Call):
        return None, "", str(err)
    reason = ""
    for key, value in err.trailing_metadata() or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    return err.code(), reason, err.details() or ""


def rpc_error(call: Callable[[], Any]) -> tuple[grpc.StatusCode | None, str, str]:
    """Run `call`, which must fail; return (status code, plasm-error-reason, details)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return error_status(info.value)


def verify_result(
    result: job_pb2.JobResult,
    *,
    module: bytes | None = None,
    args: Sequence[str] = (),
    env: Sequence[tuple[str, str]] = (),
    stdin: bytes = b"",
    node_id: str | None = None,
) -> VerifyResult:
    """Verify a Submit result's receipt offline against what was sent and received."""
    return verify_receipt(
        envelope_from_pb(result.receipt),
        expected_executor_node_id=node_id,
        stdout=result.stdout,
        stderr=result.stderr,
        module=module,
        job_input=ReceiptInput(args=tuple(args), env=tuple(env), stdin=stdin),
    )


def assert_receipt_matches(result: job_pb2.JobResult, verification: VerifyResult) -> None:
    """The verified receipt body says what the result says."""
    failed = [c for c in verification.checks if not c.passed]
    assert verification.valid, f"receipt did not verify: {failed}"
    body = verification.body
    assert body is not None
    assert body.job_id == result.job_id
    assert body.outcome == result.outcome, (
        receipt_pb2.Outcome.Name(body.outcome),
        receipt_pb2.Outcome.Name(result.outcome),
    )
    assert body.exit_code == result.exit_code
    assert body.trap_code == result.trap_code
    assert body.stdout_sha256 == hashlib.sha256(result.stdout).hexdigest()
    assert body.stderr_sha256 == hashlib.sha256(result.stderr).hexdigest()
    assert body.stdout_bytes == len(result.stdout)
    assert body.stderr_bytes == len(result.stderr)


def outcome_name(value: int) -> str:
    return str(receipt_pb2.Outcome.Name(value))


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = ""
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def join_network(plasmd: DaemonFactory, seed: Daemon, count: int) -> list[Daemon]:
    """`count` more nodes that bootstrap from `seed`, returned once the seed's
    routing table holds every one of their signed peer records."""
    bootstrap = f"{seed.node_id}@{seed.node_info().overlay_address}"
    peers = [
        plasmd(f'[overlay]\nbootstrap = ["{bootstrap}"]\nreconnect_interval_s = 0.5\n')
        for _ in range(count)
    ]
    ids = {p.node_id for p in peers}

    def knows_peers() -> bool:
        listed = seed.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10).peers
        return ids <= {p.node_id for p in listed if p.HasField("record_content")}

    wait_until(knows_peers, timeout=60, interval=0.3, what=f"the seed knows {count} peer records")
    return peers
