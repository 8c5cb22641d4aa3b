"""The overlay endpoint: one UDP socket, every QUIC connection of a node on it.

Like aioquic's asyncio/server.py `QuicServer`, the endpoint is the socket's
DatagramProtocol and routes each datagram by its destination connection id to
the `OverlayConnection` that owns it; unlike it, the same map holds the
connections this node dials, so a node accepts and dials on one port (what
peers learn as its address is also where its outbound packets come from).

It is also the connection manager: one connection per peer node id, reused
whichever side dialled; concurrent dials to the same node share one attempt;
limits on all connections and on inbound connections per IP (a connection
over a limit is refused with a reason in its CONNECTION_CLOSE once QUIC can
carry one, i.e. when the QUIC handshake completes); idle timeout and
keepalive (in the connection); clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from plasm_grpc.core.ids import check_hex64
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.logs import EventLog
from plasm_grpc.net.certs import QuicCertificate, new_certificate
from plasm_grpc.net.circuits import (
    RELAYED_DATAGRAM_SIZE,
    CircuitFrame,
    circuit_frame,
    relay_of,
    relayed_address,
)
from plasm_grpc.net.connection import ConnectionState, OverlayConnection
from plasm_grpc.net.errors import ConnectionLimitError, OverlayError
from plasm_grpc.net.handshake import LocalIdentity
from plasm_grpc.net.rpc import Handler
from plasm_grpc.net.settings import ALPN, OverlaySettings

__all__ = ["OverlayEndpoint", "PeerInfo"]

_CID_LENGTH: Final = 8
# Connections being refused still cost a QUIC handshake; past this many at once
# new Initial packets are dropped without an answer.
_MAX_REFUSING: Final = 64
_CLOSE_GRACE_S: Final = 2.0  # how long close() waits for QUIC's draining periods

# Called with (connection the frame came on, circuit id, inner packet) for a
# DATAGRAM frame on a circuit this node is not an end of: a relay's forwarder.
CircuitForwarder = Callable[[OverlayConnection, int, bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One established connection, as `OverlayEndpoint.connections()` reports it."""

    node_id: str
    host: str
    port: int
    direction: str  # "inbound" or "outbound"
    rtt: float | None  # seconds, aioquic's smoothed estimate


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, endpoint: OverlayEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._endpoint._datagram_received(data, cast(NetworkAddress, addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) reach every UDP socket; QUIC's
        # own timers deal with the peer that went away.
        pass


class OverlayEndpoint:
    """A node's overlay endpoint. `await start()`, then `connect()` and `handle()`."""

    def __init__(
        self,
        identity: NodeKey,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: OverlaySettings | None = None,
        events: EventLog | None = None,
        static_private: bytes | None = None,
    ) -> None:
        self._identity = identity
        self._host = host
        self._requested_port = port
        self._settings = settings if settings is not None else OverlaySettings()
        self._events = events if events is not None else EventLog()
        # A fresh X25519 static key per endpoint unless one is given.
        self._static_private = static_private if static_private is not None else os.urandom(32)
        self._local: LocalIdentity | None = None
        self._server_config: QuicConfiguration | None = None
        self._client_config: QuicConfiguration | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._handlers: dict[str, Handler] = {}
        self._by_cid: dict[bytes, OverlayConnection] = {}
        self._all: set[OverlayConnection] = set()  # until QUIC has terminated them
        self._live: set[OverlayConnection] = set()  # not yet finished (counted by limits)
        self._peers: dict[str, OverlayConnection] = {}  # established, by node id
        self._dials: dict[str, asyncio.Task[OverlayConnection]] = {}
        # Relayed paths: the addresses of circuits this node dialled through
        # (relayed_address), and relays whose every circuit may bring inbound
        # connections (this node holds a reservation there).
        self._circuits: set[NetworkAddress] = set()
        self._reserved_at: set[str] = set()
        self._relayed_server_config: QuicConfiguration | None = None
        self._relayed_client_config: QuicConfiguration | None = None
        self.circuit_forwarder: CircuitForwarder | None = None
        self._closing = False
        self.port = 0

    # -- properties the connections read -----------------------------------------------

    @property
    def settings(self) -> OverlaySettings:
        return self._settings

    @property
    def events(self) -> EventLog:
        return self._events

    @property
    def local(self) -> LocalIdentity:
        if self._local is None:
            raise OverlayError("the endpoint is not started")
        return self._local

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    @property
    def host(self) -> str:
        return self._host

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Make the certificate and bind the UDP socket (`port` then holds the bound port)."""
        if self._transport is not None:
            raise OverlayError("the endpoint is already started")
        certificate = new_certificate()
        self._local = LocalIdentity.create(
            self._identity, self._static_private, certificate.der, created_at_ns=time.time_ns()
        )
        self._server_config, self._client_config = _quic_configurations(self._settings, certificate)
        relayed = dataclasses.replace(self._settings, max_datagram_size=RELAYED_DATAGRAM_SIZE)
        self._relayed_server_config, self._relayed_client_config = _quic_configurations(
            relayed, certificate
        )
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(self._host, self._requested_port)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        self._events.event(
            "overlay_listening", node_id=self.node_id, address=f"{self._host}:{self.port}"
        )

    async def close(self) -> None:
        """Close every connection with a reason, wait (bounded) for QUIC, release the socket."""
        if self._closing:
            return
        self._closing = True
        for dial in list(self._dials.values()):
            dial.cancel()
        for connection in list(self._all):
            connection.close("the node is shutting down")
        waiting = [c.wait_terminated() for c in list(self._all)]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), _CLOSE_GRACE_S)
        for connection in list(self._all):
            connection.force_terminate()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        await asyncio.sleep(0)  # let the transport's close callback run

    async def __aenter__(self) -> OverlayEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the API -------------------------------------------------------------------------

    def handle(self, method: str, handler: Handler) -> None:
        """Serve `method` ("plasm.v1.<Service>/<Method>") for requests and one-way messages."""
        if not method:
            raise ValueError("the method name is empty")
        self._handlers[method] = handler

    async def connect(self, host: str, port: int, expected_node_id: str) -> OverlayConnection:
        """The connection to `expected_node_id`, dialling `host:port` if there is none.

        Raises HandshakeFailedError (with the reason: for a peer that proves
        another identity, both node ids), ConnectionLimitError or OverlayError.
        """
        check_hex64(expected_node_id, "expected_node_id")
        if expected_node_id == self.node_id:
            raise OverlayError("a node cannot dial its own node id")
        existing = self._peers.get(expected_node_id)
        if existing is not None and existing.is_open:
            return existing
        dial = self._dials.get(expected_node_id)
        if dial is None:
            dial = asyncio.get_running_loop().create_task(self._dial(host, port, expected_node_id))
            self._dials[expected_node_id] = dial
            dial.add_done_callback(lambda _: self._dials.pop(expected_node_id, None))
        return await asyncio.shield(dial)

    def connections(self) -> list[PeerInfo]:
        """The established connections, one per peer."""
        return [
            PeerInfo(
                node_id=node_id,
                host=str(c.address[0]),
                port=int(c.address[1]),
                direction=c.direction,
                rtt=c.rtt,
            )
            for node_id, c in sorted(self._peers.items())
            if c.is_open
        ]

    def connection_to(self, node_id: str) -> OverlayConnection | None:
        connection = self._peers.get(node_id)
        return connection if connection is not None and connection.is_open else None

    async def _dial(self, host: str, port: int, expected_node_id: str) -> OverlayConnection:
        if self._closing or self._transport is None:
            raise OverlayError("the endpoint is not running")
        return await self._dial_address(await self._resolve(host, port), expected_node_id)

    # -- relayed paths and hole punching (net/relay.py drives these) ---------------------

    async def dial_direct(self, host: str, port: int, expected_node_id: str) -> OverlayConnection:
        """A new direct connection to `expected_node_id` even if one (relayed) exists.

        Once established it becomes the connection `connect()` returns, and a
        relayed one to the same node is closed a little later.
        """
        check_hex64(expected_node_id, "expected_node_id")
        return await self._dial(host, port, expected_node_id)

    async def dial_via(
        self, relay_node_id: str, circuit_id: int, expected_node_id: str
    ) -> OverlayConnection:
        """Dial `expected_node_id` through circuit `circuit_id` of the connected relay.

        The connection is an ordinary one (QUIC + Noise, end to end) whose
        packets travel in DATAGRAM frames on the connection to the relay.
        """
        check_hex64(expected_node_id, "expected_node_id")
        if self.connection_to(relay_node_id) is None:
            raise OverlayError(f"not connected to relay {relay_node_id}")
        address = relayed_address(relay_node_id, circuit_id)
        self._circuits.add(address)
        try:
            return await self._dial_address(address, expected_node_id, relayed=True)
        except BaseException:
            self._circuits.discard(address)
            raise

    def accept_circuits(self, relay_node_id: str, accept: bool) -> None:
        """Take (or stop taking) inbound connections on any circuit of this relay."""
        if accept:
            self._reserved_at.add(relay_node_id)
            return
        self._reserved_at.discard(relay_node_id)
        # Inbound connections on its circuits get no more packets: close them.
        for connection in list(self._all):
            address = connection.address
            if relay_of(address) == relay_node_id and address not in self._circuits:
                connection.close("the reservation at its relay ended")

    def circuit_closed(self, relay_node_id: str, circuit_id: int, reason: str) -> None:
        """The relay stopped forwarding the circuit: close what runs over it."""
        address = relayed_address(relay_node_id, circuit_id)
        self._circuits.discard(address)
        for connection in list(self._all):
            if connection.address == address:
                connection.close(f"the relay closed the circuit: {reason}")

    def relayed_connection_to(self, node_id: str) -> OverlayConnection | None:
        """An open connection to `node_id` through a relay, if there is one."""
        for connection in self._all:
            if connection.remote_node_id == node_id and connection.is_open and connection.relayed:
                return connection
        return None

    def punch(self, host: str, port: int, data: bytes) -> None:
        """Send one datagram from the overlay socket (opens this node's NAT toward host:port)."""
        self.sendto(data, (host, port))

    def datagram_frame_received(self, connection: OverlayConnection, data: bytes) -> None:
        frame = CircuitFrame.parse(data)
        if frame is None:
            return
        if not frame.delivered:  # an end asks this node, as a relay, to forward
            if self.circuit_forwarder is not None:
                self.circuit_forwarder(connection, frame.circuit_id, frame.packet)
            return
        relay_node_id = connection.remote_node_id
        assert relay_node_id is not None
        address = relayed_address(relay_node_id, frame.circuit_id)
        if address in self._circuits or relay_node_id in self._reserved_at:
            self._datagram_received(frame.packet, address)

    async def _dial_address(
        self, address: NetworkAddress, expected_node_id: str, *, relayed: bool = False
    ) -> OverlayConnection:
        config = self._relayed_client_config if relayed else self._client_config
        if self._closing or self._transport is None or config is None:
            raise OverlayError("the endpoint is not running")
        if len(self._live) >= self._settings.max_connections:
            raise ConnectionLimitError(
                f"{len(self._live)} connections open, the limit is {self._settings.max_connections}"
            )
        quic = QuicConnection(configuration=config)
        connection = OverlayConnection(
            owner=self,
            quic=quic,
            address=address,
            initiator=True,
            expected_node_id=expected_node_id,
        )
        self._register(connection, quic.host_cid)
        connection.dial()
        try:
            # The connection's own deadline settles this; the bound is a backstop.
            # (asyncio.timeout, not wait_for: no extra task, fewer loop turns.)
            async with asyncio.timeout(self._settings.handshake_timeout + 1.0):
                await connection.wait_established()
        except TimeoutError:
            connection.close("the handshake did not complete")
            raise
        except asyncio.CancelledError:
            connection.close("the dial was cancelled")
            raise
        return connection

    async def _resolve(self, host: str, port: int) -> NetworkAddress:
        assert self._transport is not None
        family = socket.AF_INET6 if len(self._transport.get_extra_info("sockname")) == 4 else 0
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # an IP literal: no trip through the resolver's thread pool
            if (literal.version == 6) == (family == socket.AF_INET6):
                return (str(literal), port)
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family or socket.AF_INET, type=socket.SOCK_DGRAM
        )
        if not infos:
            raise OverlayError(f"cannot resolve {host}")
        return cast(NetworkAddress, infos[0][4])

    # -- datagrams -----------------------------------------------------------------------

    def sendto(self, data: bytes, addr: NetworkAddress) -> None:
        relay_node_id = relay_of(addr)
        if relay_node_id is not None:
            relay = self._peers.get(relay_node_id)
            if relay is not None:  # else lost, as on a path that went down
                relay.send_datagram(circuit_frame(int(addr[1]), data, delivered=False))
        elif self._transport is not None:
            self._transport.sendto(data, addr)

    def _datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
        except ValueError:
            return  # not QUIC
        connection = self._by_cid.get(header.destination_cid)
        if (
            connection is not None
            and connection.address != addr
            and (connection.relayed or relay_of(addr) is not None)
        ):
            return  # a relayed connection never moves to another path, nor a direct one onto it
        if connection is None:
            if (
                self._closing
                or header.packet_type != QuicPacketType.INITIAL
                or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
                or self._server_config is None
                or header.version not in self._server_config.supported_versions
            ):
                return
            connection = self._accept(header.destination_cid, addr)
            if connection is None:
                return
        connection.datagram_received(data, addr)

    def _accept(self, destination_cid: bytes, addr: NetworkAddress) -> OverlayConnection | None:
        assert self._server_config is not None
        settings = self._settings
        refuse: str | None = None
        per_ip = Counter(str(c.address[0]) for c in self._live if not c.initiator)
        if len(self._live) >= settings.max_connections:
            refuse = f"connection limit reached ({settings.max_connections} connections)"
        elif per_ip[str(addr[0])] >= settings.max_connections_per_ip:
            refuse = (
                f"per-IP connection limit reached ({settings.max_connections_per_ip} "
                f"connections from {addr[0]})"
            )
        if refuse is not None and len(self._all) - len(self._live) >= _MAX_REFUSING:
            return None
        relayed = relay_of(addr) is not None
        config = self._relayed_server_config if relayed else self._server_config
        assert config is not None
        quic = QuicConnection(
            configuration=config, original_destination_connection_id=destination_cid
        )
        connection = OverlayConnection(
            owner=self, quic=quic, address=addr, initiator=False, refuse_reason=refuse
        )
        self._register(connection, quic.host_cid)
        self._by_cid[destination_cid] = connection
        if refuse is not None:
            self._live.discard(connection)  # refused: never counts against the limits
        return connection

    def _register(self, connection: OverlayConnection, host_cid: bytes) -> None:
        self._by_cid[host_cid] = connection
        self._all.add(connection)
        self._live.add(connection)

    # -- callbacks from the connections --------------------------------------------------

    def cid_issued(self, cid: bytes, connection: OverlayConnection) -> None:
        self._by_cid[cid] = connection

    def cid_retired(self, cid: bytes, connection: OverlayConnection) -> None:
        if self._by_cid.get(cid) is connection:
            del self._by_cid[cid]

    def connection_established(self, connection: OverlayConnection) -> None:
        node_id = connection.remote_node_id
        assert node_id is not None
        current = self._peers.get(node_id)
        # Both nodes dialled each other at once: keep the first; the other
        # still serves whoever holds it until it idles out. A direct path
        # replaces a relayed one (hole punching); the relayed one closes soon.
        if current is None or not current.is_open:
            self._peers[node_id] = connection
        elif current.relayed and not connection.relayed:
            self._peers[node_id] = connection
            # Closed once nothing is in flight on it (a job may run for minutes).
            current.retire_reason = "replaced by a direct connection"

    def connection_finished(self, connection: OverlayConnection) -> None:
        self._live.discard(connection)
        node_id = connection.remote_node_id
        if node_id is not None and self._peers.get(node_id) is connection:
            del self._peers[node_id]
            # Promote another open connection to the same peer, if any (a direct
            # one before a relayed one).
            others = [c for c in self._all if c.remote_node_id == node_id and c.is_open]
            others.sort(key=lambda c: c.relayed)
            if others:
                self._peers[node_id] = others[0]
                others[0].retire_reason = None  # needed again
            else:
                # Connections relayed through that node have lost their path.
                for other in list(self._all):
                    if relay_of(other.address) == node_id:
                        other.close("the connection to its relay closed")

    def connection_terminated(self, connection: OverlayConnection) -> None:
        self._circuits.discard(connection.address)
        self._all.discard(connection)
        self._live.discard(connection)
        for cid in [cid for cid, c in self._by_cid.items() if c is connection]:
            del self._by_cid[cid]

    def handler(self, method: str) -> Handler | None:
        return self._handlers.get(method)

    def _state_counts(self) -> Counter[ConnectionState]:
        """For tests and diagnostics: connections tracked, by state."""
        return Counter(c.state for c in self._all)


def _quic_configurations(
    settings: OverlaySettings, certificate: QuicCertificate
) -> tuple[QuicConfiguration, QuicConfiguration]:
    """(server, client) configurations; the server presents `certificate`."""
    server = _quic_configuration(settings, is_client=False)
    server.certificate = certificate.certificate
    server.private_key = certificate.private_key
    # Identity comes from Noise, not from a certificate authority. aioquic
    # still checks the server's CertificateVerify, which is what binds the
    # certificate (and so the Noise prologue) to this connection.
    client = _quic_configuration(settings, is_client=True)
    client.verify_mode = ssl.CERT_NONE
    client.server_name = "plasm-overlay"
    return server, client


def _quic_configuration(settings: OverlaySettings, *, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        connection_id_length=_CID_LENGTH,
        idle_timeout=settings.quic_idle_timeout,
        # Flow-control windows that let a bulk transfer fill a fast link.
        max_data=8 * 1024 * 1024,
        max_stream_data=4 * 1024 * 1024,
        max_datagram_size=settings.max_datagram_size,
        # DATAGRAM frames carry relayed connections' packets (net/circuits.py).
        max_datagram_frame_size=settings.max_datagram_size,
    )
