"""Relayed paths (docs/reachability.md): how a connection through a relay is
addressed, and how its packets are carried.

A relayed connection is an ordinary overlay connection, QUIC + Noise end to
end, whose address is `relayed_address(relay node id, circuit id)` instead of
a UDP address, and whose QUIC packets (at most `RELAYED_DATAGRAM_SIZE`) ride
in QUIC DATAGRAM frames (RFC 9221) on the connection to the relay, each
behind a 4-byte circuit header (`circuit_frame`, `CircuitFrame.parse`). The
relay sees only those packets' ciphertext. Owns that address form, the frame
format, and what fits in one DATAGRAM frame of a connection
(`max_datagram_payload`, `queue_datagram`). The endpoint routes the frames;
net/relay.py reserves relays and opens circuits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress, QuicConnection

__all__ = [
    "CIRCUIT_ID_BYTES",
    "DELIVERED_BIT",
    "MAX_CIRCUIT_ID",
    "RELAYED_DATAGRAM_SIZE",
    "CircuitFrame",
    "circuit_frame",
    "max_datagram_payload",
    "queue_datagram",
    "relay_of",
    "relayed_address",
]

# Relayed connections have addresses whose host is "relay/<relay node id>" and
# whose port is the circuit id.
_RELAYED_HOST_PREFIX: Final = "relay/"
# Inner (relayed) connections send packets of at most this size, so one fits a
# DATAGRAM frame on a 1350-byte outer path with the 4-byte circuit id.
RELAYED_DATAGRAM_SIZE: Final = SMALLEST_MAX_DATAGRAM_SIZE
CIRCUIT_ID_BYTES: Final = 4
# Set in a frame's 4-byte header on frames a relay delivers to a circuit's end,
# clear on frames an end sends its relay to forward: a node that is both a
# relay and an end on one connection tells them apart. The rest is the id.
DELIVERED_BIT: Final = 0x8000_0000
MAX_CIRCUIT_ID: Final = DELIVERED_BIT - 1
# DATAGRAM frames queued in aioquic beyond which queue_datagram drops.
_MAX_PENDING_DATAGRAMS: Final = 128


def relayed_address(relay_node_id: str, circuit_id: int) -> NetworkAddress:
    """The address of a connection through circuit `circuit_id` of that relay."""
    return (_RELAYED_HOST_PREFIX + relay_node_id, circuit_id)


def relay_of(address: NetworkAddress) -> str | None:
    """The relay's node id for a relayed connection's address; None for a UDP address."""
    host = address[0]
    if isinstance(host, str) and host.startswith(_RELAYED_HOST_PREFIX):
        return host[len(_RELAYED_HOST_PREFIX) :]
    return None


def circuit_frame(circuit_id: int, packet: bytes, *, delivered: bool) -> bytes:
    """A DATAGRAM frame on a circuit: to the relay to forward, or `delivered` by it."""
    header = circuit_id | DELIVERED_BIT if delivered else circuit_id
    return header.to_bytes(CIRCUIT_ID_BYTES, "big") + packet


@dataclass(frozen=True, slots=True)
class CircuitFrame:
    """A DATAGRAM frame that came in on a connection, as `circuit_frame` made it."""

    circuit_id: int
    delivered: bool  # by the relay to this end; else for this node, as relay, to forward
    packet: bytes

    @classmethod
    def parse(cls, data: bytes) -> CircuitFrame | None:
        """None for a frame with no packet behind the header."""
        if len(data) <= CIRCUIT_ID_BYTES:
            return None
        header = int.from_bytes(data[:CIRCUIT_ID_BYTES], "big")
        return cls(header & MAX_CIRCUIT_ID, bool(header & DELIVERED_BIT), data[CIRCUIT_ID_BYTES:])


def max_datagram_payload(quic: QuicConnection) -> int:
    """The largest DATAGRAM frame payload that fits one packet of this connection.

    A larger one would sit at the head of aioquic's queue for ever (it never
    fits, and nothing behind it goes), so queue_datagram refuses it.
    """
    remote = quic._remote_max_datagram_frame_size  # aioquic 1.x has no public accessors
    if remote is None:
        return 0
    # A short-header packet: flags, the peer's connection id, a packet number
    # (aioquic writes 2 bytes; 4 allowed for), the AEAD tag; then the frame's
    # type and its length (a 2-byte varint below 16384).
    header = 1 + len(quic._peer_cid.cid) + 4 + 16
    room = quic._max_datagram_size - header - (1 + 2)
    return max(0, min(room, remote - (1 + 2)))


def queue_datagram(quic: QuicConnection, data: bytes) -> bool:
    """Queue `data` as one DATAGRAM frame; False, queueing nothing, when it cannot fit
    one packet or too many frames already wait (the traffic is over what the path
    takes: dropped, as a router would)."""
    if len(data) > max_datagram_payload(quic):
        return False
    if len(quic._datagrams_pending) >= _MAX_PENDING_DATAGRAMS:  # no public accessor
        return False
    quic.send_datagram_frame(data)
    return True
