"""Operating a node: SIGHUP reloads, JSON logs for journald, /metrics, `plasm status`.

Real plasmd processes for the behaviour an operator sees; the pure parts
(exposition text, the HTTP answer to one request head, the reload plan) are
also checked in-process, byte for byte. Every wait is bounded; nothing
asserts how long anything took.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    RPC_TIMEOUT_S,
    Daemon,
    DaemonError,
    DaemonFactory,
    WasmModules,
    error_status,
    make_request,
    submit,
    wait_until,
)
from plasm.v1 import capability_pb2, service_pb2

from plasm_grpc.daemon.config import (
    Config,
    ConfigError,
    GrpcConfig,
    LogConfig,
    MetricsConfig,
    OverlayConfig,
    RemoteConfig,
    validate,
)
from plasm_grpc.daemon.metrics_http import respond
from plasm_grpc.daemon.reload import plan_reload
from plasm_grpc.logs import EventLog, is_journal_stream
from plasm_grpc.metrics import Counter, Gauge, Histogram, Registry

RELOAD_S = 20.0
PEER_A = "a" * 64
PEER_B = "b" * 64

# -- helpers -------------------------------------------------------------------------------


def _reload(daemon: Daemon, config: str | None = None) -> dict[str, Any]:
    """Rewrite the config file (when given), send SIGHUP, and return the
    reload's outcome event (`reloaded` or `reload_failed`)."""

    def outcomes() -> list[dict[str, Any]]:
        return [r for r in daemon.logs() if r.get("event") in ("reloaded", "reload_failed")]

    before = len(outcomes())
    if config is not None:
        assert daemon.config_path is not None
        daemon.config_path.write_text(config, encoding="utf-8")
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: len(outcomes()) > before, timeout=RELOAD_S, what="the reload's outcome")
    return outcomes()[before]


def _metrics_url(daemon: Daemon) -> tuple[str, int]:
    ready = daemon.wait_for_event("ready", timeout=1)
    assert ready is not None
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/metrics", ready["metrics"])
    assert match, ready["metrics"]
    return "127.0.0.1", int(match.group(1))


def _get(
    address: tuple[str, int], path: str = "/metrics", method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection(*address, timeout=RPC_TIMEOUT_S)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}; every line must parse."""
    samples = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of one histogram series, by le."""
    out = []
    for (sample, pairs), value in samples.items():
        found = dict(pairs)
        le = found.pop("le", None)
        if sample == f"{name}_bucket" and found == labels and le is not None:
            out.append((float(le), value))
    return sorted(out)


def _raw_connection(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=RPC_TIMEOUT_S)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _all_json(daemon: Daemon) -> None:
    bad = [line for line in daemon.lines() if not _is_json_object(line)]
    assert not bad, f"unstructured stderr lines: {bad}"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _plasmd(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PLASM_CONFIG"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "plasm_grpc.daemon.main", "--data-dir", str(cwd / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        cwd=cwd,
        check=False,
    )


def _plasm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PLASM_ADDR", "PLASM_METRICS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "plasm_grpc.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


# -- the exposition format (in-process) ------------------------------------------------------


def test_exposition_text_counters_gauges_histograms() -> None:
    registry = Registry()
    jobs = registry.register(Counter("t_jobs_total", "Jobs.\nBy outcome \\ kind.", ("outcome",)))
    registry.register(Gauge("t_running", "Running.", read=lambda: 3))
    registry.register(
        Gauge("t_info", "Info.", labels=("version",), collect=lambda: [(('1.0 "x"\n',), 1.0)])
    )
    latency = registry.register(Histogram("t_seconds", "Latency.", (0.1, 1.0), ("where",)))
    jobs.touch("trap")
    jobs.inc("success")
    jobs.inc("success", amount=2)
    latency.observe(0.1, "local")  # on a bound: counted in that bucket (le means <=)
    latency.observe(0.5, "local")
    latency.observe(7.0, "local")
    assert registry.expose() == (
        "# HELP t_jobs_total Jobs.\\nBy outcome \\\\ kind.\n"
        "# TYPE t_jobs_total counter\n"
        't_jobs_total{outcome="success"} 3\n'
        't_jobs_total{outcome="trap"} 0\n'
        "# HELP t_running Running.\n"
        "# TYPE t_running gauge\n"
        "t_running 3\n"
        "# HELP t_info Info.\n"
        "# TYPE t_info gauge\n"
        't_info{version="1.0 \\"x\\"\\n"} 1\n'
        "# HELP t_seconds Latency.\n"
        "# TYPE t_seconds histogram\n"
        't_seconds_bucket{where="local",le="0.1"} 1\n'
        't_seconds_bucket{where="local",le="1"} 2\n'
        't_seconds_bucket{where="local",le="+Inf"} 3\n'
        't_seconds_sum{where="local"} 7.6\n'
        't_seconds_count{where="local"} 3\n'
    )
    assert latency.count("local") == 3


def test_instruments_refuse_misuse() -> None:
    with pytest.raises(ValueError, match="_total"):
        Counter("t_jobs", "x")
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("1bad_total", "x")
    with pytest.raises(ValueError, match="label"):
        Histogram("t_h", "x", (1.0,), ("le",))
    with pytest.raises(ValueError, match="increasing"):
        Histogram("t_h", "x", (2.0, 1.0))
    counter = Counter("t_c_total", "x", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc()
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc("v", amount=-1)
    registry = Registry()
    registry.register(counter)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Counter("t_c_total", "y"))


# -- the HTTP answer to one request head (in-process) ----------------------------------------


def _render() -> str:
    return "t_up 1\n"


def test_get_metrics_is_200_with_the_exposition_content_type() -> None:
    answer = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", _render)
    assert answer.status == 200
    assert answer.keep_alive
    head, body = answer.data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert b"Content-Length: 7" in head
    assert body == b"t_up 1\n"
    # HEAD: the same headers, no body; a query string is ignored.
    head_only = respond(b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n", _render)
    assert head_only.data == head + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_head", "status", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404, True),
        (b"GET /metrics/x HTTP/1.1\r\n\r\n", 404, True),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405, True),
        (b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", 405, False),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, False),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, False),
        (b"GET /metrics\r\n\r\n", 400, False),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505, False),
        (b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n", 400, False),
        ("GET /métrics HTTP/1.1\r\n\r\n".encode(), 400, False),
    ],
)
def test_other_requests_are_refused(request_head: bytes, status: int, keep_alive: bool) -> None:
    answer = respond(request_head, _render)
    assert (answer.status, answer.keep_alive) == (status, keep_alive)
    assert answer.data.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 405:
        assert b"Allow: GET, HEAD\r\n" in answer.data


def test_http_1_0_closes_unless_asked_to_keep_alive() -> None:
    assert not respond(b"GET /metrics HTTP/1.0\r\n\r\n", _render).keep_alive
    assert respond(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", _render).keep_alive


# -- the reload plan (in-process) --------------------------------------------------------------


def test_reload_plan_applies_reloadable_keys_and_names_the_rest() -> None:
    running = validate(Config())
    loaded = validate(
        Config(
            grpc=GrpcConfig(listen="127.0.0.1:1"),
            log=LogConfig(level="debug"),
            remote=RemoteConfig(accept_jobs=False, max_attempts=2),
            metrics=MetricsConfig(listen="127.0.0.1:9464"),
        )
    )
    plan = plan_reload(running, loaded)
    assert set(plan.applied) == {"log.level", "remote.accept_jobs", "remote.max_attempts"}
    assert set(plan.ignored) == {"grpc.listen", "metrics.listen"}
    # The new configuration: applied keys take the loaded value, the rest keep theirs.
    assert plan.config.log.level == "debug"
    assert plan.config.remote.accept_jobs is False
    assert plan.config.remote.max_attempts == 2
    assert plan.config.grpc.listen == running.grpc.listen
    assert plan.config.metrics.listen == ""
    # Nothing changed: nothing to do.
    again = plan_reload(plan.config, loaded)
    assert set(again.ignored) == {"grpc.listen", "metrics.listen"}
    assert not again.applied


def test_reload_plan_dials_added_bootstrap_peers_and_keeps_removed_ones() -> None:
    a, b = f"{PEER_A}@127.0.0.1:7000", f"{PEER_B}@127.0.0.1:7001"
    running = validate(Config(overlay=OverlayConfig(bootstrap=(a,))))
    plan = plan_reload(running, validate(Config(overlay=OverlayConfig(bootstrap=(b,)))))
    assert plan.bootstrap_added == (b,)
    assert plan.bootstrap_removed == (a,)
    assert plan.applied == ("overlay.bootstrap",)
    assert plan.ignored == ("overlay.bootstrap",)
    assert plan.config.overlay.bootstrap == (a, b)  # a is known until the next restart


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:0"])
def test_metrics_on_loopback_is_accepted(listen: str) -> None:
    validate(Config(metrics=MetricsConfig(listen=listen)))


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464", "myhost:9464"])
def test_metrics_beyond_loopback_must_be_allowed(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"loopback.*allow_non_loopback"):
        validate(Config(metrics=MetricsConfig(listen=listen)))
    validate(Config(metrics=MetricsConfig(listen=listen, allow_non_loopback=True)))


def test_non_loopback_metrics_stop_plasmd_with_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "plasmd.toml"
    config.write_text('[metrics]\nlisten = "0.0.0.0:9464"\n', "utf-8")
    proc = _plasmd("--config", str(config), "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "startup_failed"
    assert event["exit_code"] == 2
    assert "metrics.listen must be a loopback address" in event["error"]
    assert "allow_non_loopback" in event["error"]
    assert not (tmp_path / "data").exists()


# -- logs ----------------------------------------------------------------------------------------


def test_journal_stream_lines_carry_their_syslog_priority() -> None:
    out = io.StringIO()
    log = EventLog(out, level="debug", syslog_prefix=True)
    log.event("a", level="debug")
    log.event("b")
    log.warning("c")
    log.error("d")
    prefixes = [line[:3] for line in out.getvalue().splitlines()]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>"]
    assert json.loads(out.getvalue().splitlines()[1][3:])["event"] == "b"


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert is_journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not is_journal_stream(stream, {})


def test_plasmd_under_journald_prefixes_priorities(tmp_path: Path) -> None:
    """JOURNAL_STREAM naming plasmd's stderr: each line is "<N>" + one JSON object."""
    config = tmp_path / "plasmd.toml"
    config.write_text("[jobs]\nbogus = 1\n", "utf-8")
    read_end, write_end = os.pipe()
    info = os.fstat(write_end)
    env = {k: v for k, v in os.environ.items() if k != "PLASM_CONFIG"}
    env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    with os.fdopen(read_end, "rb") as reader:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plasm_grpc.daemon.main", "--config", str(config)],
            stderr=write_end,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        os.close(write_end)
        text = reader.read().decode()
    assert proc.wait(timeout=60) == 2
    (line,) = text.splitlines()
    assert line.startswith("<3>{"), line
    assert json.loads(line[3:])["event"] == "startup_failed"


def test_a_startup_failure_is_one_json_event(plasmd: DaemonFactory, tmp_path: Path) -> None:
    data = tmp_path / "shared-data"
    data.mkdir()
    data.chmod(0o777)
    node = plasmd(data_dir=data, start=False)
    with pytest.raises(DaemonError, match="exited with 1"):
        node.start()
    _all_json(node)
    (failed,) = node.events("startup_failed")
    assert "writable by other users" in failed["error"]
    assert failed["exit_code"] == 1


def test_a_busy_grpc_port_is_reported_with_the_reason(plasmd: DaemonFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = plasmd(listen=f"127.0.0.1:{port}", start=False)
        with pytest.raises(DaemonError, match="exited with 1"):
            node.start()
    _all_json(node)  # gRPC's C core says nothing of its own
    (failed,) = node.events("startup_failed")
    assert failed["error"] == f"cannot listen on 127.0.0.1:{port}: Address already in use"


# -- SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_changes_the_log_level(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd('[log]\nlevel = "info"\n')
    submit(node.stub, wasm.bytes("hello"), stdin=b"x")
    assert not [r for r in node.logs() if r["level"] == "debug"]
    outcome = _reload(node, '[log]\nlevel = "debug"\n')
    assert outcome["event"] == "reloaded"
    assert outcome["applied"] == ["log.level"]
    assert not node.events("reload_ignored")
    assert node.stop() == 0
    # Debug events come after the reload (the DHT says it stopped, at debug level).
    logs = node.logs()
    at = logs.index(outcome)
    assert any(r["level"] == "debug" for r in logs[at:]), logs[at:]
    _all_json(node)


def test_sighup_with_nothing_changed_applies_nothing(plasmd: DaemonFactory) -> None:
    node = plasmd("")
    outcome = _reload(node)
    assert (outcome["event"], outcome["applied"]) == ("reloaded", [])
    assert not node.events("reload_ignored")
    assert node.health_status() == "SERVING"


def test_sighup_names_the_keys_that_need_a_restart(plasmd: DaemonFactory) -> None:
    node = plasmd('[metrics]\nlisten = "127.0.0.1:0"\n[jobs]\nslots = 1\n')
    address = _metrics_url(node)
    outcome = _reload(
        node,
        '[metrics]\nlisten = "127.0.0.1:1"\n[jobs]\nslots = 3\n[remote]\nmax_attempts = 2\n',
    )
    assert outcome["event"] == "reloaded"
    assert outcome["applied"] == ["remote.max_attempts"]
    (ignored,) = node.events("reload_ignored")
    assert ignored["level"] == "warning"
    assert sorted(ignored["keys"]) == ["jobs.slots", "metrics.listen"]
    # The running values stay: the same metrics address, the same slots.
    assert _get(address)[0] == 200
    assert node.node_info().capabilities.total_job_slots == 1


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("[log\nlevel = 1\n", "not valid TOML"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ("[remote]\nmax_attempts = 0\n", "remote.max_attempts"),
        ("[nonsense]\nkey = 1\n", "nonsense"),
    ],
    ids=["bad-toml", "bad-level", "out-of-range", "unknown-key"],
)
def test_a_broken_config_leaves_the_node_running_as_it_was(
    plasmd: DaemonFactory, wasm: WasmModules, config: str, needle: str
) -> None:
    node = plasmd('[log]\nlevel = "info"\n')
    outcome = _reload(node, config)
    assert outcome["event"] == "reload_failed"
    assert outcome["level"] == "error"
    assert needle in outcome["error"]
    assert node.health_status() == "SERVING"
    assert submit(node.stub, wasm.bytes("hello"), stdin=b"ok").stdout == b"ko"
    # Fixed, the next reload works; the config file vanishing is a failure too.
    assert _reload(node, '[log]\nlevel = "info"\n')["event"] == "reloaded"
    assert node.config_path is not None
    node.config_path.unlink()
    gone = _reload(node)
    assert gone["event"] == "reload_failed"
    assert "does not exist" in gone["error"]
    assert node.running
    assert node.stop() == 0


def test_sighup_under_systemd_says_reloading_then_ready(
    plasmd: DaemonFactory, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        node = plasmd("", env={"NOTIFY_SOCKET": str(path)})

        def message() -> dict[str, str]:
            data = sock.recv(4096).decode()
            return dict(line.split("=", 1) for line in data.splitlines())

        assert message()["READY"] == "1"
        node.send_signal(signal.SIGHUP)
        reloading = message()
        assert reloading["RELOADING"] == "1"
        assert reloading["MONOTONIC_USEC"].isdigit()
        assert message()["READY"] == "1"
        assert node.wait_for_event("reloaded", timeout=RELOAD_S) is not None


def _submit_to_peer(requester: Daemon, worker: Daemon, module: bytes) -> service_pb2.SubmitResponse:
    request = make_request(
        module,
        stdin=b"abc",
        placement=capability_pb2.PlacementRequirements(
            mode=capability_pb2.PLACEMENT_MODE_PEER, peer_node_id=worker.node_id
        ),
    )
    response: service_pb2.SubmitResponse = requester.stub.Submit(request, timeout=60)
    return response


def test_sighup_adds_bootstrap_peers_and_switches_accept_jobs(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    overlay = "[overlay]\nmax_connections_per_ip = 256\n"
    a = plasmd(overlay + "[remote]\nfallback_local = false\n")
    b = plasmd(overlay)
    hello = wasm.bytes("hello")
    # B learns of A only from the reloaded file, and joins the DHT through it.
    bootstrap = f"{a.node_id}@{a.node_info().overlay_address}"
    outcome = _reload(b, overlay + f'bootstrap = ["{bootstrap}"]\n')
    assert outcome["applied"] == ["overlay.bootstrap"]
    assert outcome["bootstrap_added"] == [bootstrap]

    def knows(x: Daemon, y: Daemon) -> bool:
        listed = x.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=RPC_TIMEOUT_S)
        return y.node_id in {p.node_id for p in listed.peers}

    wait_until(
        lambda: knows(b, a) and knows(a, b), timeout=60, what="A and B in each other's table"
    )
    assert b.wait_for_event("reload_bootstrapped", timeout=RELOAD_S) is not None
    assert _submit_to_peer(a, b, hello).executor_node_id == b.node_id
    # B stops taking jobs from peers: named explicitly, it declines.
    outcome = _reload(b, overlay + f'bootstrap = ["{bootstrap}"]\n[remote]\naccept_jobs = false\n')
    assert outcome["applied"] == ["remote.accept_jobs"]
    with pytest.raises(grpc.RpcError) as info:
        _submit_to_peer(a, b, hello)
    code, reason, details = error_status(info.value)
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_NO_WORKER")
    assert "declined (NOT_ACCEPTING)" in details, details
    # And back.
    _reload(b, overlay + f'bootstrap = ["{bootstrap}"]\n[remote]\naccept_jobs = true\n')
    assert _submit_to_peer(a, b, hello).executor_node_id == b.node_id


# -- /metrics -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metered(plasmd_module: DaemonFactory) -> Daemon:
    """A node serving /metrics on loopback, with a short request timeout."""
    return plasmd_module('[metrics]\nlisten = "127.0.0.1:0"\nrequest_timeout_s = 0.5\n')


def test_metrics_count_jobs_by_outcome_and_time_them(metered: Daemon, wasm: WasmModules) -> None:
    address = _metrics_url(metered)
    before = parse_exposition(_get(address)[2])
    submit(metered.stub, wasm.bytes("hello"), stdin=b"x")
    submit(metered.stub, wasm.bytes("hello"), stdin=b"y")
    submit(metered.stub, wasm.bytes("exit_3"))
    # A job for a peer nobody knows gets no result: counted by its error reason.
    nowhere = capability_pb2.PlacementRequirements(
        mode=capability_pb2.PLACEMENT_MODE_PEER, peer_node_id="c" * 64
    )
    with pytest.raises(grpc.RpcError) as info:
        submit(metered.stub, wasm.bytes("hello"), placement=nowhere)
    reason = error_status(info.value)[1].removeprefix("ERROR_REASON_")
    status, headers, text = _get(address)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse_exposition(text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("plasm_jobs_total", outcome="success") == 2
    assert grew("plasm_jobs_total", outcome="nonzero_exit") == 1
    assert grew("plasm_jobs_total", outcome="trap") == 0
    assert grew("plasm_job_duration_seconds_count", placement="local") == 3
    # The receipt count is read from the store at most once a second.
    wait_until(
        lambda: (
            _value(parse_exposition(_get(address)[2]), "plasm_receipts_stored")
            == _value(before, "plasm_receipts_stored") + 3
        ),
        timeout=10,
        what="plasm_receipts_stored counting the 3 receipts",
    )
    assert _value(after, "plasm_jobs_running") == 0
    assert _value(after, "plasm_jobs_queued") == 0
    assert _value(after, "plasm_build_info", version="0.1.0", runtime="wasmtime 50.0.1") == 1
    assert _value(after, "process_start_time_seconds") > 0
    assert _value(after, "plasm_peers") == 0
    assert _value(after, "plasm_overlay_connections") == 0
    assert _value(after, "plasm_remote_attempts_total", result="completed") == 0
    assert _value(after, "plasm_jobs_failed_total", reason=reason) >= 1
    # Automatic placement looked workers up (an empty answer is cached briefly).
    assert _value(after, "plasm_dht_lookups_total", kind="get_providers") >= 1
    # Histograms: buckets cumulative, +Inf equal to the count, sum consistent.
    for name, labels in (
        ("plasm_job_duration_seconds", {"placement": "local"}),
        ("plasm_dht_lookup_duration_seconds", {"kind": "get_providers"}),
    ):
        buckets = _buckets(after, name, **labels)
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), buckets
        assert buckets[-1][0] == float("inf")
        assert buckets[-1][1] == _value(after, f"{name}_count", **labels)
        assert _value(after, f"{name}_sum", **labels) >= 0
    _all_json(metered)


def test_metrics_http_other_paths_and_methods(metered: Daemon) -> None:
    address = _metrics_url(metered)
    assert _get(address, "/")[0] == 404
    assert _get(address, "/metrics/extra")[0] == 404
    status, headers, _ = _get(address, "/metrics", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, body = _get(address, "/metrics", method="HEAD")
    assert (status, body) == (200, "")
    assert int(headers["Content-Length"]) > 0


def test_metrics_keep_alive_serves_several_requests(metered: Daemon) -> None:
    connection = http.client.HTTPConnection(*_metrics_url(metered), timeout=RPC_TIMEOUT_S)
    try:
        for _ in range(3):
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            assert b"plasm_jobs_total" in response.read()
    finally:
        connection.close()


def test_metrics_many_concurrent_scrapes(metered: Daemon) -> None:
    address = _metrics_url(metered)
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda _: _get(address)[0], range(64)))
    assert statuses == [200] * 64
    assert metered.health_status() == "SERVING"


def test_metrics_oversized_request_head_is_refused_and_closed(metered: Daemon) -> None:
    with _raw_connection(_metrics_url(metered)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000)
        data = _read_until_closed(sock)
    # The server answers 431 and closes; a client still sending may see the
    # reset before the answer, so only "closed" is certain.
    assert data == b"" or data.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("sent", [b"", b"GET /met"], ids=["idle", "slow"])
def test_metrics_idle_or_slow_connections_are_closed(metered: Daemon, sent: bytes) -> None:
    """request_timeout_s = 0.5: a connection that sends no whole request is closed
    (the socket timeout is far longer; the server is the one that ends it)."""
    with _raw_connection(_metrics_url(metered)) as sock:
        sock.sendall(sent)
        assert _read_until_closed(sock) == b""
    # Still serving others.
    assert _get(_metrics_url(metered))[0] == 200


def test_metrics_are_off_by_default(plasmd: DaemonFactory) -> None:
    node = plasmd()
    ready = node.wait_for_event("ready", timeout=1)
    assert ready is not None
    assert ready["metrics"] == ""
    assert not node.events("metrics_listening")


# -- plasm status ----------------------------------------------------------------------------------


def test_status_of_a_healthy_node_over_the_unix_socket(
    metered: Daemon, plasmd: DaemonFactory
) -> None:
    node = plasmd(unix_socket=True)
    target = f"unix:{node.unix_socket}"
    proc = _plasm("--addr", target, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is True
    assert report["health"] == "SERVING"
    assert report["nodeId"] == node.node_id
    assert report["version"] == "0.1.0"
    assert target in report["grpcAddresses"]
    assert report["overlayAddress"]
    assert report["dht"] == "no peers"
    assert report["peers"] == {"connected": 0, "known": 0, "workers": 0}
    assert report["jobs"]["running"] == 0
    assert report["uptimeSeconds"] >= 0
    assert report["metrics"] is None
    assert any(w.startswith("no peers") for w in report["warnings"])
    # Text, with a metrics check against a node that serves them.
    host, port = _metrics_url(metered)
    proc = _plasm("--addr", metered.addr, "status", "--metrics", f"{host}:{port}")
    assert proc.returncode == 0, proc.stderr
    assert f"at {metered.addr}: SERVING" in proc.stdout
    assert metered.node_id in proc.stdout
    assert f"http://{host}:{port}/metrics:" in proc.stdout
    assert "warning: no peers" in proc.stdout


def test_status_warns_when_the_overlay_is_off_and_metrics_do_not_answer(
    plasmd: DaemonFactory,
) -> None:
    node = plasmd(extra_args=["--overlay-listen", ""])
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    proc = _plasm("--addr", node.addr, "status", "--json", "--metrics", f"127.0.0.1:{port}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dht"] == "off"
    assert report["overlayAddress"] == ""
    assert report["metrics"]["reachable"] is False
    warnings = "\n".join(report["warnings"])
    assert "the overlay is off" in warnings
    assert "metrics: nothing answers" in warnings


def test_status_of_a_dead_address_exits_1() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    proc = _plasm("--addr", f"127.0.0.1:{port}", "status", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert (report["healthy"], report["health"]) == (False, "UNREACHABLE")
    assert "cannot reach plasmd" in report["error"]
    proc = _plasm("--addr", f"127.0.0.1:{port}", "status")
    assert proc.returncode == 1
    assert "UNREACHABLE" in proc.stdout


def test_status_of_a_draining_node_is_not_serving(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\ndrain_timeout_s = 60\n")
    job: dict[str, Any] = {}

    def run_long() -> None:
        try:
            job["result"] = submit(node.stub, wasm.bytes("spin_then_exit"), timeout=120)
        except grpc.RpcError as err:
            job["error"] = err

    thread = threading.Thread(target=run_long)
    thread.start()
    wait_until(lambda: node.node_info().jobs_running == 1, timeout=30, what="the job running")
    addr = node.addr
    node.send_signal(signal.SIGTERM)
    assert node.wait_for_event("draining", timeout=RELOAD_S) is not None
    proc = _plasm("--addr", addr, "status", "--json")
    thread.join(timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["health"] in ("NOT_SERVING", "UNREACHABLE")
    assert report["healthy"] is False
    assert node.wait() == 0
