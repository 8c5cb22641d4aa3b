"""The overlay's asyncio adapters: a QUIC endpoint carrying Noise-authenticated
RPCs between nodes (DESIGN.md item 5). The protocol logic is in the sans-I/O
core (core/noise.py, core/framing.py); this package pumps it over aioquic.
"""

from plasm_grpc.net.connection import (
    ALPN,
    ConnectionState,
    Handler,
    OverlayConnection,
    OverlaySettings,
)
from plasm_grpc.net.endpoint import OverlayEndpoint, PeerInfo
from plasm_grpc.net.errors import (
    ConnectionClosedError,
    ConnectionLimitError,
    HandshakeFailedError,
    OverlayError,
    RemoteCallError,
    RequestTimeoutError,
)

__all__ = [
    "ALPN",
    "ConnectionClosedError",
    "ConnectionLimitError",
    "ConnectionState",
    "Handler",
    "HandshakeFailedError",
    "OverlayConnection",
    "OverlayEndpoint",
    "OverlayError",
    "OverlaySettings",
    "PeerInfo",
    "RemoteCallError",
    "RequestTimeoutError",
]
