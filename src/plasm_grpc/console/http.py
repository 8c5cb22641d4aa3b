"""HTTP/1.1 for the console, without I/O: request heads in, response bytes out.

`parse_head` turns one request head into a `Request` (or the error
`Response` to send before closing); `response` and `event_stream_head`
build what goes back, every answer with the same security headers. The
server (console/server.py) reads the bytes, bounded, and writes these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from plasm_grpc.net.local_http import (
    MAX_HEAD_BYTES,
    TEXT_TYPE,
    BadHead,
    Response,
    http_response,
    read_request_head,
)

__all__ = [
    "MAX_HEAD_BYTES",
    "HttpError",
    "Request",
    "Response",
    "event_stream_head",
    "json_response",
    "parse_head",
    "response",
    "sse_event",
]

# Everything the page needs comes from the node itself: no inline script or
# style, no other origin, no framing.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
JSON_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    keep_alive: bool
    content_length: int
    body: bytes = b""

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def host(self) -> str:
        """The Host header's name, without port or IPv6 brackets."""
        host = self.headers.get("host", "")
        if host.startswith("["):
            return host[1:].partition("]")[0]
        return host.rpartition(":")[0] if ":" in host else host


class HttpError(Exception):
    """An answer other than 200, raised by a handler."""

    def __init__(
        self,
        *,
        status: int,
        message: str,
        reason: str = "",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.extra = status, message, reason, extra

    def to_response(self, *, keep_alive: bool, head_only: bool = False) -> Response:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.reason:
            error["reason"] = self.reason
        return json_response(
            {"error": error},
            status=self.status,
            keep_alive=keep_alive,
            head_only=head_only,
            extra=self.extra,
        )


def response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = TEXT_TYPE,
    cache: str = "no-store",
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    return http_response(
        status,
        body,
        keep_alive=keep_alive,
        content_type=content_type,
        head_only=head_only,
        headers=(("Cache-Control", cache), *SECURITY_HEADERS, *extra),
    )


def json_response(
    obj: object,
    *,
    status: int = 200,
    keep_alive: bool,
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return response(
        status,
        body,
        keep_alive=keep_alive,
        content_type=JSON_TYPE,
        head_only=head_only,
        extra=extra,
    )


def event_stream_head() -> bytes:
    """The head of a Server-Sent Events answer; its body runs until the connection closes."""
    headers = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")


def sse_event(event: str, data: object, *, event_id: int | None = None) -> bytes:
    """One SSE message; `data` as one line of JSON (JSON escapes every newline)."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


SSE_KEEPALIVE: Final = b": keep-alive\n\n"


def _bad(message: str, status: int = 400) -> Response:
    return response(status, f"{message}\n".encode(), keep_alive=False)


def parse_head(head: bytes, *, max_body_bytes: int) -> Request | Response:
    """The request in `head` (up to and including its blank line), or the error to send."""
    parsed = read_request_head(
        head, require_path=True, unique=("content-length", "host", "authorization")
    )
    if isinstance(parsed, BadHead):
        return _bad(parsed.message, parsed.status)
    headers = parsed.headers
    if "transfer-encoding" in headers:
        return _bad("chunked request bodies are not accepted; send Content-Length", 501)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or len(length_text) > 12:
        return _bad("malformed Content-Length")
    length = int(length_text)
    if length > max_body_bytes:
        return _bad(f"request body over {max_body_bytes} bytes", 413)
    raw_path, _, query = parsed.target.partition("?")
    try:
        fields = parse_qs(query, max_num_fields=32)
    except ValueError:
        return _bad("too many query parameters")
    return Request(
        method=parsed.method,
        path=unquote(raw_path),
        query=fields,
        headers=headers,
        keep_alive=parsed.keep_alive,
        content_length=length,
    )
