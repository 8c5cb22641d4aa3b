"""The console's routes: its page, and the gRPC API's answers as proto3 JSON.

Every JSON endpoint calls the gRPC servicer's own method (through a local
stand-in for the call context), so the console shows exactly what
`GetNodeInfo`, `ListPeers`, `ListReceipts`... return, with the same
validation and the same `plasm-error-reason` on failure. Live events come
from the job event bus as Server-Sent Events.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from plasm.v1 import service_pb2

from plasm_grpc.api import codec
from plasm_grpc.api.service import REASON_KEY, Ctx, PlasmServicer
from plasm_grpc.console.http import (
    HttpError,
    Request,
    Response,
    json_response,
    response,
    sse_event,
)
from plasm_grpc.console.static import StaticFiles
from plasm_grpc.jobs.events import SlowWatcherError, WatchEndedError
from plasm_grpc.logs import EventLog

# How many jobs /api/jobs lists, newest first.
MAX_LISTED_JOBS: Final = 100
# How long a JSON endpoint's servicer call may take (a DHT lookup is the slowest).
CALL_TIMEOUT_S: Final = 15.0
_JOB_EVENTS: Final = re.compile(r"/api/jobs/([0-9a-f]{32})/events")
_JOB_CANCEL: Final = re.compile(r"/api/jobs/([0-9a-f]{32})/cancel")
_RECEIPT: Final = re.compile(r"/api/receipts/([^/]+)")
SERVICE_NAME: Final = service_pb2.DESCRIPTOR.services_by_name["PlasmService"].full_name
_HTTP_STATUS: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.CANCELLED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class _CallAbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


class _LocalContext:
    """What the servicer's methods use of a grpc.aio call context."""

    def __init__(self, timeout_s: float | None) -> None:
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._reason = ""
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._reason = dict(metadata).get(REASON_KEY, "")

    def set_code(self, code: grpc.StatusCode) -> None:  # the health servicer's NOT_FOUND
        self.code = code

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _CallAbortedError(code, details, self._reason)


def _context(timeout_s: float | None = CALL_TIMEOUT_S) -> Ctx:
    # The servicer is typed against grpc.aio's context; it uses only the four
    # methods _LocalContext has.
    return cast(Ctx, _LocalContext(timeout_s))


def _as_http_error(err: _CallAbortedError) -> HttpError:
    return HttpError(status=_HTTP_STATUS.get(err.code, 500), message=err.message, reason=err.reason)


def proto_json(message: Message) -> dict[str, Any]:
    """proto3 JSON (lowerCamelCase, 64-bit integers as strings), every field shown."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _token_digest(token: str) -> bytes:
    # Compared as digests: constant time, and the length of the token is not leaked either.
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSettings:
    # Submit and Cancel need this switch and the token (None: no token configured).
    allow_actions: bool = False
    token: str | None = None
    # Events a live stream may fall behind before it is ended.
    events_backlog: int = 256
    # Only Host headers naming a loopback address are answered (a page of
    # another site that resolves its name to 127.0.0.1 reads nothing).
    loopback_hosts_only: bool = True


@dataclass(frozen=True, slots=True)
class EventStream:
    """A Server-Sent Events answer: the server writes each chunk as it comes."""

    chunks: AsyncIterator[bytes]


class HealthCheck(Protocol):
    """The grpc_health HealthServicer's Check(request, context)."""

    def Check(  # noqa: N802 - the servicer's method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse: ...


_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class ConsoleApp:
    def __init__(
        self,
        servicer: PlasmServicer,
        health: HealthCheck,
        settings: ConsoleSettings,
        log: EventLog,
        static: StaticFiles | None = None,
    ) -> None:
        self.servicer = servicer
        self.health = health
        self.settings = settings
        self.log = log
        self.static = static if static is not None else StaticFiles.load()
        self._token = _token_digest(settings.token) if settings.token else None

    async def handle(self, request: Request) -> Response | EventStream:
        try:
            return await self._route(request)
        except HttpError as err:
            return err.to_response(
                keep_alive=request.keep_alive, head_only=request.method == "HEAD"
            )
        except _CallAbortedError as err:
            return _as_http_error(err).to_response(keep_alive=request.keep_alive)

    async def _route(self, request: Request) -> Response | EventStream:
        if self.settings.loopback_hosts_only and request.host not in _LOOPBACK_NAMES:
            raise HttpError(
                status=421,
                message="the console answers only requests for a loopback address "
                "(http://127.0.0.1:PORT/ or http://localhost:PORT/)",
            )
        path, method = request.path, request.method
        if path == "/api/jobs" and method == "POST":
            return await self._submit(request)
        if (match := _JOB_CANCEL.fullmatch(path)) is not None:
            _allow(request, "POST")
            return await self._cancel(request, match.group(1))
        if path == "/api/jobs":
            _allow(request, "GET", "HEAD", "POST")
        elif path.startswith(("/api/", "/static/")) or path == "/":
            _allow(request, "GET", "HEAD")
        keep = request.keep_alive
        if path == "/" or path.startswith("/static/"):
            name = "index.html" if path == "/" else path.removeprefix("/static/")
            asset = self.static.get(name)
            if asset is None:
                raise HttpError(status=404, message=f"no asset {name!r}")
            return response(
                200,
                asset.data,
                keep_alive=keep,
                content_type=asset.content_type,
                cache="no-cache",
                head_only=method == "HEAD",
            )
        routes: Mapping[str, Any] = {
            "/api/console": self._console,
            "/api/node": self._node,
            "/api/health": self._health,
            "/api/peers": self._peers,
            "/api/workers": self._workers,
            "/api/receipts": self._receipts,
            "/api/jobs": self._jobs,
        }
        handler = routes.get(path)
        if handler is not None:
            obj = await handler(request)
            return json_response(obj, keep_alive=keep, head_only=method == "HEAD")
        if path == "/api/events":
            return self._follow()
        if (match := _JOB_EVENTS.fullmatch(path)) is not None:
            return self._watch(match.group(1))
        if (match := _RECEIPT.fullmatch(path)) is not None:
            got = await self.servicer.GetReceipt(
                service_pb2.GetReceiptRequest(job_id=match.group(1)), _context()
            )
            return json_response(proto_json(got), keep_alive=keep, head_only=method == "HEAD")
        raise HttpError(status=404, message=f"nothing at {path}; the console is at /")

    # -- reading ---------------------------------------------------------------

    async def _console(self, request: Request) -> dict[str, Any]:
        return {"allowActions": self.settings.allow_actions and self._token is not None}

    async def _node(self, request: Request) -> dict[str, Any]:
        info = await self.servicer.GetNodeInfo(service_pb2.GetNodeInfoRequest(), _context())
        return proto_json(info)

    async def _health(self, request: Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, service in (("node", ""), ("service", SERVICE_NAME)):
            ctx = _LocalContext(None)
            answer = self.health.Check(health_pb2.HealthCheckRequest(service=service), ctx)
            out[label] = proto_json(answer) if ctx.code is None else {"status": "SERVICE_UNKNOWN"}
        return out

    async def _peers(self, request: Request) -> dict[str, Any]:
        peers = await self.servicer.ListPeers(service_pb2.ListPeersRequest(), _context())
        return proto_json(peers)

    async def _workers(self, request: Request) -> dict[str, Any]:
        found = await self.servicer.FindWorkers(
            service_pb2.FindWorkersRequest(limit=_int_param(request, "limit")), _context()
        )
        return proto_json(found)

    async def _receipts(self, request: Request) -> dict[str, Any]:
        page = await self.servicer.ListReceipts(
            service_pb2.ListReceiptsRequest(
                page_size=_int_param(request, "page_size"),
                page_token=request.param("page_token"),
            ),
            _context(),
        )
        return proto_json(page)

    async def _jobs(self, request: Request) -> dict[str, Any]:
        """The jobs the event bus remembers, newest first, each with its events."""
        bus = self.servicer.facts.events
        ids = bus.job_ids()[-MAX_LISTED_JOBS:] if bus is not None else []
        jobs = []
        for job_id in reversed(ids):
            assert bus is not None
            jobs.append(
                {
                    "jobId": job_id,
                    "ended": bus.ended(job_id),
                    "droppedEvents": bus.dropped(job_id),
                    "events": [proto_json(codec.job_event_to_pb(e)) for e in bus.history(job_id)],
                }
            )
        return {"jobs": jobs}

    # -- live events -------------------------------------------------------------

    def _follow(self) -> EventStream:
        bus = self.servicer.facts.events
        if bus is None:
            raise HttpError(status=404, message="this node publishes no job events")

        async def chunks() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            yield sse_event("hello", {"backlog": self.settings.events_backlog})
            number = 0
            try:
                follow = bus.follow(backlog=self.settings.events_backlog)
                async with contextlib.aclosing(follow) as stream:
                    async for event in stream:
                        number += 1
                        yield sse_event(
                            "job", proto_json(codec.job_event_to_pb(event)), event_id=number
                        )
            except SlowWatcherError as err:
                yield sse_event("overflow", {"message": f"{err}; reload the job list"})

        return EventStream(chunks())

    def _watch(self, job_id: str) -> EventStream:
        """One job's events (its history, then live) through the servicer's Watch."""

        async def chunks() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            watch = self.servicer.Watch(service_pb2.WatchRequest(job_id=job_id), _context(None))
            try:
                async with contextlib.aclosing(cast(Any, watch)) as stream:
                    async for answer in stream:
                        yield sse_event("job", proto_json(answer.event))
            except _CallAbortedError as err:
                yield sse_event("error", {"message": err.message, "reason": err.reason})
                return
            except WatchEndedError as err:  # pragma: no cover - the servicer maps these
                yield sse_event("error", {"message": str(err)})
                return
            yield sse_event("end", {"jobId": job_id})

        return EventStream(chunks())

    # -- actions ------------------------------------------------------------------

    def _authorize(self, request: Request, action: str) -> None:
        if not self.settings.allow_actions:
            raise HttpError(
                status=403,
                message=f"{action} through the console is off: set console.allow_actions = true "
                "and console.token_file",
            )
        if self._token is None:
            raise HttpError(status=403, message="no console.token_file is configured")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HttpError(
                status=403,
                message=f"{action} needs the console token: Authorization: Bearer TOKEN",
                extra=(("WWW-Authenticate", "Bearer"),),
            )
        if not hmac.compare_digest(_token_digest(given.strip()), self._token):
            self.log.warning("console_token_refused", action=action)
            raise HttpError(status=403, message="wrong console token")

    def _json_body(self, request: Request, message: Message) -> None:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HttpError(status=415, message="send the request as application/json")
        try:
            json_format.Parse(request.body.decode("utf-8"), message)
        except (UnicodeDecodeError, json_format.ParseError) as err:
            raise HttpError(status=400, message=f"not a valid request: {err}") from None

    async def _submit(self, request: Request) -> Response:
        self._authorize(request, "submitting a job")
        submit = service_pb2.SubmitRequest()
        self._json_body(request, submit)
        self.log.event("console_submit", job_id=submit.job_id)
        remaining = self.servicer.facts.default_job_timeout_s
        answer = await self.servicer.Submit(submit, _context(remaining))
        return json_response(proto_json(answer), keep_alive=request.keep_alive)

    async def _cancel(self, request: Request, job_id: str) -> Response:
        self._authorize(request, "cancelling a job")
        answer = await self.servicer.Cancel(service_pb2.CancelRequest(job_id=job_id), _context())
        return json_response(proto_json(answer), keep_alive=request.keep_alive)


def _allow(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise HttpError(
            status=405,
            message=f"{' or '.join(methods)} only",
            extra=(("Allow", ", ".join(methods)),),
        )


def _int_param(request: Request, name: str) -> int:
    value = request.param(name, "0")
    if not value.isdigit() or len(value) > 9:
        raise HttpError(status=400, message=f"{name} must be a non-negative integer")
    return int(value)
