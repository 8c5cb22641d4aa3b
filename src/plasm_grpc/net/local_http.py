"""The node's small local HTTP/1.1 listeners (/metrics, the web console): their shared part.

`read_request_head` parses a request head and `http_response` builds one
answer's bytes (neither does I/O). `LocalHttpServer` owns
the listening socket and the bound on connections: at most
`max_connections` at once, more are answered `busy` (or just closed) at
once; a client that goes away or is too slow ends its connection quietly,
and any other failure of one connection is logged, never the server's end.
Each subclass reads and answers requests in `_exchange`, within
`request_timeout_s` per request and per write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from plasm_grpc.logs import EventLog

MAX_HEAD_BYTES: Final = 8192
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
TEXT_TYPE: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    data: bytes
    keep_alive: bool


def http_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = TEXT_TYPE,
    head_only: bool = False,
    headers: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),),
) -> Response:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return Response(status, data if head_only else data + body, keep_alive)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # names lower-cased, values stripped; the last of a repeat wins
    keep_alive: bool  # what the client asked for (HTTP/1.0: opt in; HTTP/1.1: opt out)


@dataclass(frozen=True, slots=True)
class BadHead:
    """Why a request head is refused, and the status to answer with."""

    status: int
    message: str


def read_request_head(
    head: bytes, *, require_path: bool = False, unique: Collection[str] = ()
) -> RequestHead | BadHead:
    """The request line and headers of `head` (up to and including its blank
    line). `require_path`: the target must start with "/" (else it must not be
    empty); `unique`: lower-case header names that may not be repeated."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return BadHead(400, "request head is not ASCII")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not (parts[1].startswith("/") if require_path else parts[1]):
        return BadHead(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return BadHead(505, "HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return BadHead(400, "malformed header")
        key = name.lower()
        if key in headers and key in unique:
            return BadHead(400, f"duplicate {name} header")
        headers[key] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return RequestHead(method, target, version, headers, keep_alive)


class LocalHttpServer:
    """A listener whose `_exchange(reader, writer)` serves one connection."""

    def __init__(
        self,
        *,
        name: str,
        log: EventLog,
        request_timeout_s: float,
        max_connections: int,
        busy: Response | None = None,
    ) -> None:
        self._name = name  # the prefix of its log events
        self._log = log
        # Read for each request: a SIGHUP may change it.
        self.request_timeout_s = request_timeout_s
        self._max_connections = max_connections
        self._busy = busy
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._handlers)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])

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
            if self._busy is not None:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    writer.write(self._busy.data)
                    async with asyncio.timeout(1.0):
                        await writer.drain()
            writer.transport.abort()
            return
        self._handlers.add(task)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to tell it
        except Exception as err:  # noqa: BLE001 - one bad request must not end the server
            self._log.error(f"{self._name}_request_failed", error=repr(err))
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.request_timeout_s):
            await writer.drain()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
