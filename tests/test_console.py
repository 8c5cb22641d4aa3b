"""The web console's listener: configuration, routes, JSON, SSE, actions and limits.

Against real plasmd processes (one with actions on and a token, one read-only)
for what the console serves, and an in-process `ConsoleServer` with small
limits for how it bounds clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from conftest import Daemon, DaemonFactory, WasmModules, submit
from google.protobuf import json_format
from plasm.v1 import service_pb2

from plasm_grpc.api.service import PlasmServicer
from plasm_grpc.console import ConsoleApp, ConsoleServer, ConsoleSettings
from plasm_grpc.console.http import Request, parse_head
from plasm_grpc.console.static import StaticFiles
from plasm_grpc.core.jobs.events import EventKind, JobEvent
from plasm_grpc.daemon.config import ConfigError, ConsoleConfig, load_config
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.logs import EventLog

TOKEN = "a-console-token-for-tests-0123456789"
JOB_ID = "0123456789abcdef0123456789abcdef"


# -- configuration -----------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "plasmd.toml"
    path.write_text(text)
    return load_config(path)


def test_the_console_is_off_by_default() -> None:
    assert ConsoleConfig().listen == ""
    assert ConsoleConfig().allow_actions is False
    assert load_config(None).console.listen == ""


def test_a_non_loopback_console_needs_the_explicit_switch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"console.listen must be a loopback address"):
        _config(tmp_path, '[console]\nlisten = "0.0.0.0:9465"\n')
    config = _config(tmp_path, '[console]\nlisten = "0.0.0.0:9465"\nallow_non_loopback = true\n')
    assert config.console.listen == "0.0.0.0:9465"
    for loopback in ("127.0.0.1:9465", "[::1]:9465", "localhost:9465"):
        assert _config(tmp_path, f'[console]\nlisten = "{loopback}"\n').console.listen


def test_actions_need_a_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"console\.allow_actions needs console\.token_file"):
        _config(tmp_path, "[console]\nallow_actions = true\n")


def test_a_missing_or_short_token_stops_plasmd(plasmd: DaemonFactory, tmp_path: Path) -> None:
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    for token_file, message in ((tmp_path / "absent", "cannot read"), (short, "at least 16")):
        daemon = plasmd(
            f'[console]\nlisten = "127.0.0.1:0"\nallow_actions = true\n'
            f'token_file = "{token_file}"\n',
            start=False,
        )
        with pytest.raises(Exception, match="exited with 1"):
            daemon.start()
        assert any(message in line for line in daemon.lines())


# -- the sans-I/O request parser ------------------------------------------------------


def test_request_heads_are_parsed_and_bad_ones_refused() -> None:
    parsed = parse_head(
        b"GET /api/receipts?page_size=5 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
        max_body_bytes=10,
    )
    assert isinstance(parsed, Request)
    assert (parsed.path, parsed.param("page_size"), parsed.host) == (
        "/api/receipts",
        "5",
        "127.0.0.1",
    )
    assert parsed.keep_alive
    v6 = parse_head(b"GET / HTTP/1.1\r\nHost: [::1]:9465\r\n\r\n", max_body_bytes=10)
    assert isinstance(v6, Request)
    assert v6.host == "::1"
    for head, status in (
        (b"GET / HTTP/2\r\n\r\n", 505),
        (b"GET\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n bad: header\r\n\r\n", 400),
        ("GET /é HTTP/1.1\r\n\r\n".encode(), 400),
    ):
        answer = parse_head(head, max_body_bytes=10)
        assert not isinstance(answer, Request), head
        assert answer.status == status, head
        assert not answer.keep_alive


# -- against real daemons -----------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(plasmd_module: DaemonFactory, tmp_path_factory: pytest.TempPathFactory) -> Any:
    token_file = tmp_path_factory.mktemp("token") / "console.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    actions = plasmd_module(
        f'[console]\nlisten = "127.0.0.1:0"\nallow_actions = true\ntoken_file = "{token_file}"\n'
    )
    readonly = plasmd_module('[console]\nlisten = "127.0.0.1:0"\n')
    return SimpleNamespace(actions=actions, readonly=readonly)


def _address(daemon: Daemon) -> tuple[str, int]:
    ready = daemon.events("ready")[-1]
    host, _, port = ready["console"].removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def _request(
    daemon: Daemon,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = _address(daemon)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def _json(daemon: Daemon, path: str, status: int = 200) -> Any:
    code, headers, body = _request(daemon, "GET", path)
    assert code == status, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def _grpc_json(message: Any) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def test_json_endpoints_answer_what_the_grpc_api_answers(nodes: Any, wasm: WasmModules) -> None:
    node = nodes.actions
    info = _json(node, "/api/node")
    grpc_info = _grpc_json(node.node_info())
    for key in ("nodeId", "publicKey", "version", "grpcAddresses", "startedAt", "capabilities"):
        assert info[key] == grpc_info[key], key
    assert _json(node, "/api/health") == {
        "node": {"status": "SERVING"},
        "service": {"status": "SERVING"},
    }
    assert _json(node, "/api/peers") == _grpc_json(
        node.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10)
    )
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"json")
    stored = _json(node, f"/api/receipts/{result.job_id}")
    grpc_stored = node.stub.GetReceipt(
        service_pb2.GetReceiptRequest(job_id=result.job_id), timeout=10
    )
    assert stored == _grpc_json(grpc_stored)
    page = _json(node, "/api/receipts?page_size=1")
    assert [r["body"]["jobId"] for r in page["receipts"]] == [result.job_id]
    jobs = _json(node, "/api/jobs")["jobs"]
    mine = next(j for j in jobs if j["jobId"] == result.job_id)
    assert mine["ended"] is True
    assert mine["events"][-1]["kind"] == "JOB_EVENT_KIND_FINISHED"
    # Failures carry the servicer's status and plasm-error-reason.
    bad = _json(node, "/api/receipts/not-a-job-id", status=400)["error"]
    assert bad["reason"] == "ERROR_REASON_INVALID_REQUEST"
    missing = _json(node, f"/api/receipts/{JOB_ID}", status=404)["error"]
    assert missing["reason"] == "ERROR_REASON_RECEIPT_NOT_FOUND"
    assert _json(node, "/api/receipts?page_size=x", status=400)["error"]["status"] == 400
    assert _json(node, "/api/console") == {"allowActions": True}
    assert _json(nodes.readonly, "/api/console") == {"allowActions": False}


def test_unknown_paths_are_404_and_wrong_methods_405(nodes: Any) -> None:
    node = nodes.readonly
    for path in (
        "/nope",
        "/api/nope",
        "/static/nope.js",
        "/static/../app.py",
        "/api/jobs/x/events",
    ):
        code, _, _ = _request(node, "GET", path)
        assert code == 404, path
    for method, path, allow in (
        ("POST", "/api/node", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
        ("PUT", "/api/jobs", "GET, HEAD, POST"),
        ("GET", f"/api/jobs/{JOB_ID}/cancel", "POST"),
    ):
        code, headers, _ = _request(node, method, path)
        assert (code, headers.get("allow")) == (405, allow), (method, path)
    code, headers, body = _request(node, "HEAD", "/api/node")
    assert (code, body) == (200, b"")
    assert int(headers["content-length"]) > 0


def test_every_answer_is_locked_down_and_api_answers_are_not_cached(nodes: Any) -> None:
    node = nodes.readonly
    code, headers, page = _request(node, "GET", "/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"
    assert b'<script type="module" src="/static/console.mjs">' in page
    assert b"http" not in page  # nothing from another origin
    for path in ("/api/node", "/nope"):
        _, headers, _ = _request(node, "GET", path)
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
    _, headers, _ = _request(node, "GET", "/static/console.mjs")
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    # A page of another site whose name resolves to 127.0.0.1 reads nothing.
    code, _, body = _request(node, "GET", "/api/node", headers={"Host": "evil.example:80"})
    assert code == 421, body


def _sse_events(sock: socket.socket, until: Any) -> list[tuple[str, Any]]:
    """Read SSE messages until `until(event, data)` holds (or the stream ends)."""
    buffer = b""
    events: list[tuple[str, Any]] = []
    while True:
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1)
                for line in block.decode().split("\n")
                if ": " in line and not line.startswith(":")
            )
            if "event" in fields:
                events.append((fields["event"], json.loads(fields["data"])))
                if until(*events[-1]):
                    return events
        chunk = sock.recv(65536)
        if not chunk:
            return events
        buffer += chunk


def _open_stream(daemon: Daemon, path: str) -> socket.socket:
    sock = socket.create_connection(_address(daemon), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"Content-Type: text/event-stream" in head
    return sock


def test_live_events_of_every_job_and_of_one_job(nodes: Any, wasm: WasmModules) -> None:
    node = nodes.readonly
    with contextlib.closing(_open_stream(node, "/api/events")) as feed:
        assert _sse_events(feed, lambda kind, _: kind == "hello")[-1][0] == "hello"
        result = submit(node.stub, wasm.bytes("hello"), stdin=b"live")
        got = _sse_events(
            feed,
            lambda kind, data: kind == "job" and data["kind"] == "JOB_EVENT_KIND_FINISHED",
        )
    kinds = [data["kind"] for kind, data in got if kind == "job" and data["jobId"] == result.job_id]
    assert kinds[0] == "JOB_EVENT_KIND_SUBMITTED"
    assert kinds[-1] == "JOB_EVENT_KIND_FINISHED"
    # One job's events go through the servicer's Watch: its history, then "end".
    with contextlib.closing(_open_stream(node, f"/api/jobs/{result.job_id}/events")) as watch:
        history = _sse_events(watch, lambda kind, _: kind == "end")
    assert [d["kind"] for k, d in history if k == "job"] == kinds
    assert history[-1] == ("end", {"jobId": result.job_id})
    with contextlib.closing(_open_stream(node, f"/api/jobs/{JOB_ID}/events")) as unknown:
        failed = _sse_events(unknown, lambda kind, _: kind == "error")
    assert failed[-1][1]["reason"] == "ERROR_REASON_JOB_NOT_FOUND"


def _submit_body(wasm: WasmModules, job_id: str = "") -> bytes:
    request = {
        "jobId": job_id,
        "module": base64.b64encode(wasm.bytes("hello")).decode(),
        "manifest": {"stdin": base64.b64encode(b"from the console").decode()},
    }
    return json.dumps(request).encode()


def test_actions_need_the_switch_and_the_token(nodes: Any, wasm: WasmModules) -> None:
    body = _submit_body(wasm)
    json_type = {"Content-Type": "application/json"}
    bearer = {**json_type, "Authorization": f"Bearer {TOKEN}"}
    code, _, answer = _request(nodes.readonly, "POST", "/api/jobs", body=body, headers=bearer)
    assert code == 403
    assert "console.allow_actions" in json.loads(answer)["error"]["message"]
    node = nodes.actions
    for headers, why in (
        (json_type, "Authorization: Bearer"),
        ({**json_type, "Authorization": "Basic abc"}, "Authorization: Bearer"),
        ({**json_type, "Authorization": "Bearer wrong-token"}, "wrong console token"),
    ):
        code, _, answer = _request(node, "POST", "/api/jobs", body=body, headers=headers)
        assert code == 403
        assert why in json.loads(answer)["error"]["message"]
    code, _, answer = _request(node, "POST", "/api/jobs", body=body, headers=bearer)
    assert code == 200, answer
    result = json.loads(answer)["result"]
    assert result["outcome"] == "OUTCOME_SUCCESS"
    assert base64.b64decode(result["stdout"]) == b"from the console"[::-1]  # hello reverses stdin
    assert node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=result["jobId"]), timeout=10)
    code, _, answer = _request(node, "POST", "/api/jobs", body=b"{nope", headers=bearer)
    assert code == 400
    code, _, _ = _request(
        node, "POST", "/api/jobs", body=body, headers={**bearer, "Content-Type": "text/plain"}
    )
    assert code == 415
    code, _, answer = _request(node, "POST", f"/api/jobs/{JOB_ID}/cancel", headers=bearer)
    assert code == 404
    assert json.loads(answer)["error"]["reason"] == "ERROR_REASON_JOB_NOT_FOUND"
    code, _, answer = _request(node, "POST", f"/api/jobs/{result['jobId']}/cancel", headers=bearer)
    assert (code, json.loads(answer)) == (200, {"cancelled": False})


# -- limits, in process ---------------------------------------------------------------


def _app(bus: JobEventBus, *, backlog: int = 256) -> ConsoleApp:
    # Only the routes that read no node (the page, the live feed) are used here.
    servicer = cast(
        PlasmServicer, SimpleNamespace(facts=SimpleNamespace(events=bus, default_job_timeout_s=5))
    )
    health = cast(Any, SimpleNamespace(Check=lambda request, context: None))
    return ConsoleApp(
        servicer, health, ConsoleSettings(events_backlog=backlog), EventLog(), StaticFiles.load()
    )


@contextlib.asynccontextmanager
async def _server(app: ConsoleApp, **limits: Any) -> AsyncIterator[ConsoleServer]:
    server = ConsoleServer(app, log=EventLog(), **limits)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def _exchange(server: ConsoleServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_oversized_requests_are_refused() -> None:
    async def main() -> None:
        async with _server(_app(JobEventBus()), max_body_bytes=1024) as server:
            huge = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n"
            assert (await _exchange(server, huge)).startswith(b"HTTP/1.1 431")
            body = b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n"
            assert (await _exchange(server, body)).startswith(b"HTTP/1.1 413")
            ok = await _exchange(
                server, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            assert ok.startswith(b"HTTP/1.1 200")

    _run(main())


def test_too_many_connections_are_answered_503() -> None:
    async def main() -> None:
        async with _server(_app(JobEventBus()), max_connections=2) as server:
            held = [await asyncio.open_connection(server.host, server.port) for _ in range(2)]
            for _ in range(100):
                if server.connections == 2:
                    break
                await asyncio.sleep(0.01)
            assert (await _exchange(server, b"")).startswith(b"HTTP/1.1 503")
            for _, writer in held:
                writer.close()
            for _ in range(100):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.01)
            ok = await _exchange(
                server, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            assert ok.startswith(b"HTTP/1.1 200")

    _run(main())


def test_a_slow_client_is_cut_off() -> None:
    async def main() -> None:
        async with _server(_app(JobEventBus()), request_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: local")  # and never the rest
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer.startswith(b"HTTP/1.1 408")
            writer.close()
            assert server.connections == 0

    _run(main())


def _event(n: int) -> JobEvent:
    return JobEvent(job_id=f"{n:032x}", kind=EventKind.SUBMITTED, at_ns=n)


def test_a_live_stream_that_falls_behind_is_ended_and_a_gone_client_unsubscribes() -> None:
    async def main() -> None:
        bus = JobEventBus()
        async with _server(_app(bus, backlog=2), keepalive_s=0.2) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            seen = b""
            while b"event: hello" not in seen:
                seen += await reader.read(4096)
            while bus.followers() == 0:
                await asyncio.sleep(0.01)
            for n in range(5):  # published at once: more than the stream's backlog
                bus.publish(_event(n))
            rest = await asyncio.wait_for(reader.read(), 10)  # the server ends the stream
            # The bus drops an overflowing follower's queue: the page reloads the list.
            assert b"event: job" not in rest
            assert b"event: overflow" in rest
            assert bus.followers() == 0
            writer.close()
            # A client that goes away: its subscription ends with it; keep-alives meanwhile.
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            seen = b""
            while b": keep-alive" not in seen:
                seen += await reader.read(4096)
            assert bus.followers() == 1
            writer.close()
            for _ in range(200):
                if bus.followers() == 0 and server.connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert (bus.followers(), server.connections) == (0, 0)

    _run(main())
