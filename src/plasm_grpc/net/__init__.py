"""The overlay's asyncio adapters: a QUIC endpoint carrying Noise-authenticated
RPCs between nodes (DESIGN.md item 5). The protocol logic is in the sans-I/O
core (core/noise.py, core/framing.py); this package pumps it over aioquic.
`DhtService` pumps the core's Kademlia `DhtNode` over an endpoint.
"""

from plasm_grpc.net.connection import (
    ALPN,
    ConnectionState,
    Handler,
    OverlayConnection,
    OverlaySettings,
)
from plasm_grpc.net.dht import (
    DhtClosedError,
    DhtRefusedError,
    DhtService,
    DhtServiceSettings,
    KnownPeer,
)
from plasm_grpc.net.dht_codec import DhtCodecError, ProtobufRecordCodec
from plasm_grpc.net.endpoint import OverlayEndpoint, PeerInfo
from plasm_grpc.net.errors import (
    ConnectionClosedError,
    ConnectionLimitError,
    HandshakeFailedError,
    OverlayError,
    RemoteCallError,
    RequestRefusedError,
    RequestTimeoutError,
)
from plasm_grpc.net.reachability import ReachabilityService, ReachabilitySettings

__all__ = [
    "ALPN",
    "ConnectionClosedError",
    "ConnectionLimitError",
    "ConnectionState",
    "DhtClosedError",
    "DhtCodecError",
    "DhtRefusedError",
    "DhtService",
    "DhtServiceSettings",
    "Handler",
    "HandshakeFailedError",
    "KnownPeer",
    "OverlayConnection",
    "OverlayEndpoint",
    "OverlayError",
    "OverlaySettings",
    "PeerInfo",
    "ProtobufRecordCodec",
    "ReachabilityService",
    "ReachabilitySettings",
    "RemoteCallError",
    "RequestRefusedError",
    "RequestTimeoutError",
]
