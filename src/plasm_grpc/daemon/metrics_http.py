"""A tiny HTTP/1.1 server for Prometheus: GET /metrics, nothing else.

No framework: `respond()` turns one request head into one response (no
I/O, tested byte for byte), and `MetricsServer` pumps it over asyncio
streams. Bounds, so a scraper or a stranger cannot hold the node's loop or
memory:

- a request head may be at most `MAX_HEAD_BYTES` (431 and close beyond);
- a request must arrive whole within `request_timeout_s` of the connection
  opening or of the previous answer, or the connection is closed (slow
  senders and idle keep-alive connections alike);
- requests with a body are refused (400 and close): GET and HEAD take none;
- at most `max_connections` connections at once; more are closed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from plasm_grpc.logs import EventLog
from plasm_grpc.metrics import CONTENT_TYPE

MAX_HEAD_BYTES: Final = 8192
METRICS_PATH: Final = "/metrics"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    data: bytes
    keep_alive: bool


def _response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in extra),
    ]
    data = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
    return Response(status, data if head_only else data + body, keep_alive)


def respond(head: bytes, render: Callable[[], str]) -> Response:
    """The answer to one request head (up to and including its blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return _response(400, b"request head is not ASCII\n", keep_alive=False)
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1]:
        return _response(400, b"malformed request line\n", keep_alive=False)
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return _response(505, b"HTTP/1.1 only\n", keep_alive=False)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return _response(400, b"malformed header\n", keep_alive=False)
        headers[name.lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        # Its body would be read as the next request: refuse and close.
        return _response(400, b"requests with a body are not accepted\n", keep_alive=False)
    path = target.split("?", 1)[0]
    if path != METRICS_PATH:
        return _response(404, b"not found; metrics are at /metrics\n", keep_alive=keep_alive)
    if method not in ("GET", "HEAD"):
        return _response(
            405,
            b"GET or HEAD only\n",
            keep_alive=keep_alive,
            extra=(("Allow", "GET, HEAD"),),
        )
    return _response(
        200,
        render().encode("utf-8"),
        keep_alive=keep_alive,
        content_type=CONTENT_TYPE,
        head_only=method == "HEAD",
    )


class MetricsServer:
    """Serves `render()` on GET /metrics until `close()`."""

    def __init__(
        self,
        render: Callable[[], str],
        *,
        log: EventLog,
        request_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        self._render = render
        self._log = log
        # Read for each request: a SIGHUP may change it.
        self.request_timeout_s = request_timeout_s
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        self._log.event("metrics_listening", address=self.address, path=METRICS_PATH)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= self._max_connections:
            writer.transport.abort()
            return
        self._handlers.add(task)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to tell it
        except Exception as err:  # noqa: BLE001 - one bad scrape must not end the server
            self._log.error("metrics_request_failed", error=repr(err))
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                answer = _response(431, b"request head too large\n", keep_alive=False)
            except asyncio.IncompleteReadError as err:
                if err.partial:
                    self._log.event("metrics_request_incomplete", level="debug")
                return
            else:
                answer = respond(head, self._render)
            writer.write(answer.data)
            async with asyncio.timeout(self.request_timeout_s):
                await writer.drain()
            if not answer.keep_alive:
                return
