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
from typing import Final

from plasm_grpc.logs import EventLog
from plasm_grpc.metrics import CONTENT_TYPE
from plasm_grpc.net.local_http import (
    BadHead,
    LocalHttpServer,
    Response,
    http_response,
    read_request_head,
)

METRICS_PATH: Final = "/metrics"


def respond(head: bytes, render: Callable[[], str]) -> Response:
    """The answer to one request head (up to and including its blank line)."""
    parsed = read_request_head(head)
    if isinstance(parsed, BadHead):
        return http_response(parsed.status, f"{parsed.message}\n".encode(), keep_alive=False)
    method, headers, keep_alive = parsed.method, parsed.headers, parsed.keep_alive
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        # Its body would be read as the next request: refuse and close.
        return http_response(400, b"requests with a body are not accepted\n", keep_alive=False)
    path = parsed.target.split("?", 1)[0]
    if path != METRICS_PATH:
        return http_response(404, b"not found; metrics are at /metrics\n", keep_alive=keep_alive)
    if method not in ("GET", "HEAD"):
        return http_response(
            405,
            b"GET or HEAD only\n",
            keep_alive=keep_alive,
            headers=(("Cache-Control", "no-store"), ("Allow", "GET, HEAD")),
        )
    return http_response(
        200,
        render().encode("utf-8"),
        keep_alive=keep_alive,
        content_type=CONTENT_TYPE,
        head_only=method == "HEAD",
    )


class MetricsServer(LocalHttpServer):
    """Serves `render()` on GET /metrics until `close()`."""

    def __init__(
        self,
        render: Callable[[], str],
        *,
        log: EventLog,
        request_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        super().__init__(
            name="metrics",
            log=log,
            request_timeout_s=request_timeout_s,
            max_connections=max_connections,
        )
        self._render = render

    async def start(self, host: str, port: int) -> None:
        await super().start(host, port)
        self._log.event("metrics_listening", address=self.address, path=METRICS_PATH)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                answer = http_response(431, b"request head too large\n", keep_alive=False)
            except asyncio.IncompleteReadError as err:
                if err.partial:
                    self._log.event("metrics_request_incomplete", level="debug")
                return
            else:
                answer = respond(head, self._render)
            await self._write(writer, answer.data)
            if not answer.keep_alive:
                return
