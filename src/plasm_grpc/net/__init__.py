"""The overlay's asyncio adapters: a QUIC endpoint carrying Noise-authenticated
RPCs between nodes (DESIGN.md item 5). The protocol logic is in the sans-I/O
core (core/noise.py, core/framing.py); this package pumps it over aioquic.

From the bottom up (the layers contract in pyproject.toml keeps it so):
settings.py, errors.py and certs.py are shared; handshake.py (the Noise
handshake over QUIC), frames.py (stream 0's encrypted frames and chunks) and
circuits.py (relayed addresses and DATAGRAM frames) are one connection's
parts, rpc.py its requests and handlers; connection.py pumps one QUIC
connection through them; endpoint.py owns the socket and every connection;
the services run over an endpoint: `DhtService` (dht.py, the core's Kademlia
`DhtNode`), relay.py (relays, hole punching) and reachability.py.
"""

from plasm_grpc.net.connection import ConnectionState, OverlayConnection
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
from plasm_grpc.net.rpc import Handler
from plasm_grpc.net.settings import ALPN, OverlaySettings

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
