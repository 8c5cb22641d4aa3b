"""Framed RPC over one overlay connection (DESIGN.md item 5): our requests and
the answers awaited for them, one-way messages, and the handlers serving the
peer's requests. The frames themselves go through the connection's
`FramedStream` (net/frames.py).

**Backpressure.** Outbound: at most `max_outstanding_requests` requests in
flight per connection (further `request()` calls wait, within their timeout).
Inbound: at most `max_concurrent_requests` handlers run per connection; a
request beyond that is answered at once with an ERROR ("overloaded"), and a
one-way message beyond that is dropped (and logged).

**Cancellation.** A request of ours that times out or is cancelled is
abandoned: the rest of it is not sent and the peer gets a CANCEL, which
stops its handler (and its chunked response, if one is on the way).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from plasm_grpc.core.overlay_errors import RemoteOverlayError
from plasm_grpc.net.errors import (
    ConnectionClosedError,
    RemoteCallError,
    RequestRefusedError,
    RequestTimeoutError,
)
from plasm_grpc.net.frames import (
    ERROR,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_METHOD_BYTES,
    ONEWAY,
    REQUEST,
    RESPONSE,
    CancelReceived,
    FramedStream,
    Inbound,
    MessageHeader,
)
from plasm_grpc.net.settings import OverlaySettings

if TYPE_CHECKING:
    from plasm_grpc.logs import EventLog

__all__ = ["Handler", "RpcSession"]

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""A method handler: `await handler(peer_node_id, payload)`; its result is the response."""


@dataclass(slots=True)
class _Inbound:
    """Handlers running for the peer's requests, by request id."""

    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    response_streams: dict[int, int] = field(default_factory=dict)  # request id -> stream id
    oneway: set[asyncio.Task[None]] = field(default_factory=set)


class RpcSession:
    """The RPCs of one connection, both ways; `start` once the peer is proven."""

    def __init__(
        self,
        *,
        frames: FramedStream,
        settings: OverlaySettings,
        handler: Callable[[str], Handler | None],
        events: EventLog,
    ) -> None:
        self._frames = frames
        self._settings = settings
        self._handler = handler  # the endpoint's handler for a method, if any
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._peer: str | None = None
        self._close_reason: str | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._request_ids = itertools.count(1)
        self._request_slots = asyncio.Semaphore(settings.max_outstanding_requests)
        self._inbound = _Inbound()

    def start(self, peer_node_id: str) -> None:
        self._peer = peer_node_id

    @property
    def busy(self) -> bool:
        """A request of ours awaits its answer, or a handler of the peer's runs."""
        return bool(self._pending or self._inbound.tasks)

    def close(self, reason: str) -> None:
        """The connection closed: fail the requests awaiting answers, stop the handlers."""
        self._close_reason = reason
        closed = ConnectionClosedError(reason)
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(closed)
        for task in [*self._inbound.tasks.values(), *self._inbound.oneway]:
            task.cancel()

    # -- ours ----------------------------------------------------------------------------

    async def request(self, method: str, payload: bytes, timeout: float) -> bytes:
        """See `OverlayConnection.request`."""
        _check_method(method)
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        request_id = 0
        stream_id: int | None = None
        try:
            async with asyncio.timeout(timeout):
                async with self._request_slots:
                    self._check_open()
                    request_id = next(self._request_ids)
                    answer: asyncio.Future[bytes] = self._loop.create_future()
                    self._pending[request_id] = answer
                    stream_id = self._frames.send_message(
                        REQUEST, payload, request_id=request_id, method=method
                    )
                    return await answer
        except TimeoutError:
            self._abandon(request_id, stream_id)
            raise RequestTimeoutError(
                f"{method} to {self._peer}: no answer within {timeout} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(request_id, stream_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def send_oneway(self, method: str, payload: bytes) -> None:
        """See `OverlayConnection.send_oneway`."""
        _check_method(method)
        self._check_open()
        stream_id = self._frames.send_message(ONEWAY, payload, method=method)
        if stream_id is not None:
            await asyncio.shield(self._frames.sent(stream_id))

    def _check_open(self) -> None:
        if not self._frames.open:
            raise ConnectionClosedError(self._close_reason or "the connection is not established")

    def _abandon(self, request_id: int, stream_id: int | None) -> None:
        """Our request timed out or was cancelled: stop sending it, tell the peer."""
        if request_id == 0 or not self._frames.open:
            return
        cancel_stream = 0  # also abandon our chunked request if the peer holds part of it
        if stream_id is not None and self._frames.cancel_stream(stream_id, tell_peer=False):
            cancel_stream = stream_id
        self._frames.send_cancel(request_id, cancel_stream)

    # -- the peer's ----------------------------------------------------------------------

    def received(self, inbound: Inbound) -> None:
        """A message or CANCEL from the peer (FramedStream.receive)."""
        if isinstance(inbound, CancelReceived):
            self._peer_cancelled(inbound.request_id)
        else:
            self._message_received(inbound.header, inbound.payload)

    def _message_received(self, header: MessageHeader, payload: bytes) -> None:
        kind, request_id = header.kind, header.request_id
        if kind in (RESPONSE, ERROR):
            answer = self._pending.get(request_id)
            if answer is not None and not answer.done():  # else: we gave up on it
                if kind == RESPONSE:
                    answer.set_result(payload)
                else:
                    answer.set_exception(RemoteCallError(header.error_message or "remote error"))
            return
        handler = self._handler(header.method)
        peer = self._peer
        assert peer is not None
        if kind == ONEWAY:
            overloaded = len(self._inbound.oneway) >= self._settings.max_concurrent_requests
            if handler is None or overloaded:
                self._events.warning(
                    "overlay_oneway_dropped",
                    peer_node_id=peer,
                    method=header.method,
                    reason="no handler" if handler is None else "overloaded",
                )
                return
            task = self._loop.create_task(self._run_oneway(handler, header.method, payload))
            self._inbound.oneway.add(task)
            task.add_done_callback(self._inbound.oneway.discard)
            return
        # A REQUEST.
        if request_id == 0 or request_id in self._inbound.tasks:
            raise RemoteOverlayError(f"request id {request_id} is zero or already in use")
        if handler is None:
            self._send_error(request_id, f"no handler for method {header.method!r}")
        elif len(self._inbound.tasks) >= self._settings.max_concurrent_requests:
            self._send_error(request_id, "overloaded: too many requests in flight")
        else:
            self._inbound.tasks[request_id] = self._loop.create_task(
                self._serve(handler, request_id, header.method, payload)
            )

    def _peer_cancelled(self, request_id: int) -> None:
        task = self._inbound.tasks.get(request_id)
        if task is not None:
            task.cancel()
        stream_id = self._inbound.response_streams.pop(request_id, None)
        if stream_id is not None:
            self._frames.cancel_stream(stream_id, tell_peer=False)

    async def _serve(self, handler: Handler, request_id: int, method: str, payload: bytes) -> None:
        peer = self._peer
        assert peer is not None
        try:
            response = await handler(peer, payload)
        except asyncio.CancelledError:
            return  # the peer cancelled the request, or the connection closed
        except RequestRefusedError as e:
            self._send_error(request_id, str(e))
        except Exception as e:  # noqa: BLE001 - the handler boundary: report, don't crash
            self._events.warning(
                "overlay_handler_failed", peer_node_id=peer, method=method, error=repr(e)
            )
            self._send_error(request_id, f"the handler failed ({type(e).__name__})")
        else:
            if self._frames.open:
                stream_id = self._frames.send_message(RESPONSE, response, request_id=request_id)
                if stream_id is not None:
                    self._response_streaming(request_id, stream_id)
        finally:
            self._inbound.tasks.pop(request_id, None)

    def _response_streaming(self, request_id: int, stream_id: int) -> None:
        """Remember which chunked message answers `request_id` while it is being sent,
        so that the peer's CANCEL for the request stops it."""
        streams = self._inbound.response_streams
        streams[request_id] = stream_id

        def forget(_: asyncio.Future[None]) -> None:
            if streams.get(request_id) == stream_id:
                del streams[request_id]

        self._frames.sent(stream_id).add_done_callback(forget)

    async def _run_oneway(self, handler: Handler, method: str, payload: bytes) -> None:
        peer = self._peer
        assert peer is not None
        try:
            await handler(peer, payload)
        except (asyncio.CancelledError, RequestRefusedError):
            return
        except Exception as e:  # noqa: BLE001 - the handler boundary
            self._events.warning(
                "overlay_handler_failed", peer_node_id=peer, method=method, error=repr(e)
            )

    def _send_error(self, request_id: int, message: str) -> None:
        if self._frames.open:
            encoded = message.encode()[:MAX_ERROR_MESSAGE_BYTES].decode(errors="ignore")
            self._frames.send_message(ERROR, b"", request_id=request_id, error_message=encoded)


def _check_method(method: str) -> None:
    if not method or len(method.encode()) > MAX_METHOD_BYTES:
        raise ValueError(f"a method name is 1..{MAX_METHOD_BYTES} bytes")
