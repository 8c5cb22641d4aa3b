"""What an overlay endpoint and every part of its connections agree on: the
ALPN, the QUIC application error codes of CONNECTION_CLOSE, and
`OverlaySettings` (limits and timers). Nothing here acts; the handshake, the
framed stream, the RPC session, the connection and the endpoint read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALPN",
    "CLOSE_HANDSHAKE_FAILED",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REFUSED",
    "OverlaySettings",
]

ALPN: Final = "plasm/1"

# QUIC application error codes in CONNECTION_CLOSE (the reason phrase says more).
CLOSE_NORMAL: Final = 0x0
CLOSE_PROTOCOL_ERROR: Final = 0x1
CLOSE_HANDSHAKE_FAILED: Final = 0x2
CLOSE_REFUSED: Final = 0x3


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlaySettings:
    """Limits and timers of an endpoint and its connections (seconds, bytes)."""

    handshake_timeout: float = 5.0  # QUIC + Noise, from the first packet to a proven peer
    idle_timeout: float = 120.0  # no OverlayFrame either way, nothing in flight: close
    # A frame begun but not completed within this (plus its size at
    # FRAME_MIN_BYTES_PER_S), from its first byte: close.
    frame_stall_timeout: float = 10.0
    keepalive_interval: float = 15.0  # QUIC PING while open (liveness, RTT samples)
    max_connections: int = 256
    max_connections_per_ip: int = 16  # inbound
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_requests: int = 64  # inbound handlers running per connection
    max_outstanding_requests: int = 256  # our requests in flight per connection
    max_open_chunked_messages: int = 16  # inbound, per connection
    send_buffer_bytes: int = 256 * 1024  # unacknowledged stream bytes before chunks wait
    # UDP payload per QUIC packet. aioquic does no path-MTU discovery; 1350 is
    # what Chrome and quic-go start with and fits tunnels and PPPoE. Per-packet
    # work dominates aioquic's cost, so a larger value (on loopback or a known
    # 1500-byte path: 1452) raises bulk throughput.
    max_datagram_size: int = 1350

    def __post_init__(self) -> None:
        for name in (
            "handshake_timeout",
            "idle_timeout",
            "frame_stall_timeout",
            "keepalive_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "max_message_bytes",
            "max_concurrent_requests",
            "max_outstanding_requests",
            "max_open_chunked_messages",
            "send_buffer_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 1200 <= self.max_datagram_size <= 65527:
            raise ValueError("max_datagram_size must be 1200..65527 (RFC 9000 section 14)")

    @property
    def quic_idle_timeout(self) -> float:
        """QUIC's own idle timeout: a peer that stops answering PINGs is dead."""
        return max(3 * self.keepalive_interval, 2 * self.handshake_timeout)
