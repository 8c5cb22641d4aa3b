"""The console's listener: bounded HTTP/1.1 over asyncio streams.

Bounds, so a page left open, a stranger or a slow client cannot hold the
node's loop or memory:

- a request head may be at most `MAX_HEAD_BYTES` (431 and close beyond), a
  body at most `max_body_bytes` (413 and close, before it is read);
- a request must arrive whole (head and body) within `request_timeout_s` of
  the connection opening or of the previous answer, or the connection is
  closed (slow senders and idle keep-alive connections alike);
- every write must drain within `request_timeout_s`: a client that stops
  reading (a live event stream's too) is disconnected;
- at most `max_connections` connections at once, live event streams
  included; more are answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from plasm_grpc.console.app import ConsoleApp, EventStream
from plasm_grpc.console.http import (
    SSE_KEEPALIVE,
    Request,
    Response,
    event_stream_head,
    parse_head,
    response,
)
from plasm_grpc.logs import EventLog
from plasm_grpc.net.local_http import LocalHttpServer

# An idle live stream sends a comment this often, so a gone client is noticed
# (its write fails) and proxies keep the stream open.
KEEPALIVE_S: Final = 15.0


class ConsoleServer(LocalHttpServer):
    """Serves `app` until `close()`."""

    def __init__(
        self,
        app: ConsoleApp,
        *,
        log: EventLog,
        request_timeout_s: float = 5.0,
        max_connections: int = 32,
        max_body_bytes: int = 4 * 1024 * 1024,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        super().__init__(
            name="console",
            log=log,
            request_timeout_s=request_timeout_s,
            max_connections=max_connections,
            busy=response(503, b"too many console connections\n", keep_alive=False),
        )
        self.app = app
        self._max_body_bytes = max_body_bytes
        self._keepalive_s = keepalive_s

    async def start(self, host: str, port: int) -> None:
        await super().start(host, port)
        self._log.event("console_listening", url=f"http://{self.address}/")

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | Response | None:
        """The next request, the error answer to close with, or None at a clean end."""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    return response(431, b"request head too large\n", keep_alive=False)
                except asyncio.IncompleteReadError as err:
                    if err.partial:
                        self._log.event("console_request_incomplete", level="debug")
                    return None
                parsed = parse_head(head, max_body_bytes=self._max_body_bytes)
                if isinstance(parsed, Response) or not parsed.content_length:
                    return parsed
                body = await reader.readexactly(parsed.content_length)
        except TimeoutError:
            return response(408, b"request not received in time\n", keep_alive=False)
        return Request(
            method=parsed.method,
            path=parsed.path,
            query=parsed.query,
            headers=parsed.headers,
            keep_alive=parsed.keep_alive,
            content_length=parsed.content_length,
            body=body,
        )

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await self._read_request(reader)
            if request is None:
                return
            if isinstance(request, Response):
                await self._write(writer, request.data)
                return
            answer = await self.app.handle(request)
            if isinstance(answer, EventStream):
                await self._stream(reader, writer, answer)
                return
            await self._write(writer, answer.data)
            if not answer.keep_alive:
                return

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: EventStream
    ) -> None:
        """Pump `stream` to the client until it ends, the client goes, or the node stops."""
        await self._write(writer, event_stream_head())
        chunks = stream.chunks
        gone = asyncio.ensure_future(reader.read(1))  # EOF (or stray bytes): the client is done
        try:
            while True:
                step = asyncio.ensure_future(anext(chunks))
                try:
                    while not step.done():
                        done, _ = await asyncio.wait(
                            {step, gone}, timeout=self._keepalive_s, return_when="FIRST_COMPLETED"
                        )
                        if gone in done:
                            return
                        if not done:  # idle: a comment keeps the stream (and its check) alive
                            await self._write(writer, SSE_KEEPALIVE)
                    try:
                        chunk = step.result()
                    except StopAsyncIteration:
                        return
                    await self._write(writer, chunk)
                finally:
                    if not step.done():
                        step.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await step
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await gone
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
