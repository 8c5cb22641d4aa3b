"""Errors the overlay's asyncio adapter raises to its callers.

The sans-I/O layers raise `OverlayProtocolError`s (core/overlay_errors.py);
the adapter turns them into a closed connection and, for the caller waiting on
it, one of these.
"""

from __future__ import annotations

from plasm_grpc.core.errors import PlasmError

__all__ = [
    "ConnectionClosedError",
    "ConnectionLimitError",
    "HandshakeFailedError",
    "OverlayError",
    "RemoteCallError",
    "RequestRefusedError",
    "RequestTimeoutError",
]


class OverlayError(PlasmError):
    """Base class of the overlay adapter's errors."""


class HandshakeFailedError(OverlayError):
    """A connection ended before the Noise handshake proved the peer's identity.

    `reason` says why (for example "dialled <id> but the peer proved <id>").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLimitError(OverlayError):
    """This endpoint refuses to open another connection (a configured limit)."""


class ConnectionClosedError(OverlayError):
    """The connection closed before the call finished; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestTimeoutError(OverlayError, TimeoutError):
    """No answer within the request's timeout; the request was cancelled at the peer."""


class RemoteCallError(OverlayError):
    """The peer answered the request with an ERROR frame (no handler, overload, a failure)."""


class RequestRefusedError(OverlayError):
    """Raised by a handler to refuse a request on purpose (rate limited, malformed).

    The requester gets an ERROR carrying this message; unlike a handler that
    fails by accident, it is not logged as a warning (the handler logs what it
    refuses, once, in its own terms).
    """
