"""The overlay endpoint (plasm_grpc.net) over real loopback UDP sockets.

Every node binds 127.0.0.1 port 0. Every wait is bounded by `asyncio.wait_for`
(or `eventually`); nothing asserts a duration, only what happened and in
which order. Handshake deadlines are short (HANDSHAKE_S) so stalled peers are
dropped quickly.

`RawClient` is a plain aioquic client with the overlay's ALPN: it completes
QUIC, then writes whatever a test wants on stream 0, optionally driving Noise
by hand with noiseprotocol, as an attacker or a broken implementation would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding
from noise.connection import Keypair, NoiseConnection

from plasm_grpc.core.handshake_wire import HandshakePayload
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.noise import (
    NOISE_PROTOCOL_NAME,
    OVERLAY_VERSION,
    handshake_prologue,
    noise_static_public_key,
    sign_noise_identity,
)
from plasm_grpc.logs import EventLog
from plasm_grpc.net import (
    ALPN,
    ConnectionClosedError,
    HandshakeFailedError,
    OverlayEndpoint,
    OverlaySettings,
    RemoteCallError,
    RequestTimeoutError,
)
from plasm_grpc.net.certs import new_certificate

HANDSHAKE_S = 1.0
WAIT_S = 20.0  # the bound on any single wait: generous, never a measurement
TEST_S = 90.0
ECHO = "test.v1.Echo/Call"
SETTINGS = OverlaySettings(handshake_timeout=HANDSHAKE_S)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


def key(n: int) -> NodeKey:
    return NodeKey.from_seed(hashlib.sha256(b"overlay test node %d" % n).digest())


class Node:
    """An endpoint with an in-memory event log and an echo handler."""

    def __init__(self, n: int, settings: OverlaySettings = SETTINGS) -> None:
        self.key = key(n)
        self.log = io.StringIO()
        self.endpoint = OverlayEndpoint(self.key, settings=settings, events=EventLog(self.log))
        self.oneway: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def echo(peer: str, payload: bytes) -> bytes:
            return payload

        async def whoami(peer: str, payload: bytes) -> bytes:
            return f"{self.key.node_id} answers {peer}: ".encode() + payload

        async def notify(peer: str, payload: bytes) -> bytes:
            await self.oneway.put((peer, payload))
            return b""

        self.endpoint.handle(ECHO, echo)
        self.endpoint.handle("test.v1.Who/Am", whoami)
        self.endpoint.handle("test.v1.Notify/Send", notify)

    @property
    def node_id(self) -> str:
        return self.key.node_id

    @property
    def port(self) -> int:
        return self.endpoint.port

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [r for r in records if name is None or r["event"] == name]


@asynccontextmanager
async def nodes(count: int, settings: OverlaySettings = SETTINGS) -> AsyncIterator[list[Node]]:
    started = [Node(i, settings) for i in range(count)]
    try:
        for node in started:
            await node.endpoint.start()
        yield started
    finally:
        for node in started:
            await asyncio.wait_for(node.endpoint.close(), WAIT_S)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def bounded(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, WAIT_S)


# -- a raw QUIC client -----------------------------------------------------------------------


class RawClient(QuicConnectionProtocol):
    """A plain aioquic client speaking the overlay's ALPN and nothing else on its own."""

    def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.received = bytearray()
        self.data_arrived = asyncio.Event()
        self.close_reason: str | None = None

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.StreamDataReceived):
            self.received += event.data
            self.data_arrived.set()
        elif isinstance(event, quic_events.ConnectionTerminated):
            self.close_reason = event.reason_phrase

    def write(self, data: bytes) -> None:
        self._quic.send_stream_data(0, data)
        self.transmit()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.received) < n:
            self.data_arrived.clear()
            await bounded(self.data_arrived.wait())
        out = bytes(self.received[:n])
        del self.received[:n]
        return out

    def server_certificate_der(self) -> bytes:
        certificate = self._quic.tls._peer_certificate
        assert certificate is not None
        return certificate.public_bytes(Encoding.DER)


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, server_name="x"
    )
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: RawClient(QuicConnection(configuration=configuration)),
        local_addr=("127.0.0.1", 0),
    )
    assert isinstance(protocol, RawClient)
    try:
        protocol.connect(("127.0.0.1", port))
        await bounded(protocol.wait_connected())
        yield protocol
    finally:
        protocol.close()
        await bounded(protocol.wait_closed())
        transport.close()
        await asyncio.sleep(0)


class RawNoise:
    """The initiator's side of Noise XX driven directly, with any payload in message 3."""

    def __init__(self, client: RawClient, node_key: NodeKey) -> None:
        self.client = client
        self.key = node_key
        self.static = hashlib.sha256(b"raw static" + node_key.seed()).digest()
        self.noise: Any = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        self.noise.set_keypair_from_private_bytes(Keypair.STATIC, self.static)
        self.noise.set_prologue(handshake_prologue(client.server_certificate_der()))
        self.noise.set_as_initiator()
        self.noise.start_handshake()

    def send_message(self, payload: bytes = b"") -> None:
        message = bytes(self.noise.write_message(payload))
        self.client.write(len(message).to_bytes(2, "big") + message)

    async def read_message(self) -> bytes:
        length = int.from_bytes(await self.client.read_exactly(2), "big")
        return bytes(self.noise.read_message(await self.client.read_exactly(length)))

    def payload(self, *, corrupt_signature: bool = False) -> bytes:
        proof = sign_noise_identity(
            self.key, noise_static_public_key(self.static), created_at_ns=time.time_ns()
        )
        if corrupt_signature:
            signature = bytes([proof.signature[0] ^ 1]) + proof.signature[1:]
            proof = dataclasses.replace(proof, signature=signature)
        return HandshakePayload(identity=proof, overlay_version=OVERLAY_VERSION).encode()

    async def complete(self) -> None:
        self.send_message()
        await self.read_message()
        self.send_message(self.payload())

    def send_frame(self, plaintext: bytes) -> None:
        ciphertext = bytes(self.noise.encrypt(plaintext))
        self.client.write(len(ciphertext).to_bytes(4, "big") + ciphertext)


async def good_rpcs(client: Node, server: Node, count: int = 3) -> None:
    """`client` completes `count` requests to `server` (a fresh connection or the one it has)."""
    connection = await bounded(client.endpoint.connect("127.0.0.1", server.port, server.node_id))
    for i in range(count):
        payload = b"ping %d" % i
        assert await connection.request(ECHO, payload, timeout=WAIT_S) == payload


# -- connecting and calling ------------------------------------------------------------------


def test_two_nodes_connect_both_ways_and_exchange_messages() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            ab = await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id))
            assert ab.remote_node_id == b.node_id
            assert await ab.request("test.v1.Who/Am", b"hi", timeout=WAIT_S) == (
                f"{b.node_id} answers {a.node_id}: hi".encode()
            )
            await ab.send_oneway("test.v1.Notify/Send", b"note from a")
            assert await bounded(b.oneway.get()) == (a.node_id, b"note from a")

            # b dialling a reuses the connection a opened: one connection per peer.
            ba = await bounded(b.endpoint.connect("127.0.0.1", a.port, a.node_id))
            assert ba.remote_node_id == a.node_id
            assert not ba.initiator
            assert await ba.request("test.v1.Who/Am", b"back", timeout=WAIT_S) == (
                f"{a.node_id} answers {b.node_id}: back".encode()
            )
            await ba.send_oneway("test.v1.Notify/Send", b"note from b")
            assert await bounded(a.oneway.get()) == (b.node_id, b"note from b")
            assert [p.node_id for p in a.endpoint.connections()] == [b.node_id]
            assert [(p.node_id, p.direction) for p in b.endpoint.connections()] == [
                (a.node_id, "inbound")
            ]
            assert await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id)) is ab

            with pytest.raises(RemoteCallError, match="no handler"):
                await ab.request("test.v1.Missing/Method", b"", timeout=WAIT_S)

            for node, peer in ((a, b), (b, a)):
                (connected,) = node.events("overlay_connected")
                assert connected["peer_node_id"] == peer.node_id
                assert connected["node_id"] == node.node_id

    run(main())


def test_ten_nodes_full_mesh_of_rpcs() -> None:
    async def main() -> None:
        async with nodes(10) as mesh:

            async def call(src: Node, dst: Node) -> None:
                connection = await src.endpoint.connect("127.0.0.1", dst.port, dst.node_id)
                answer = await connection.request("test.v1.Who/Am", b"mesh", timeout=WAIT_S)
                assert answer == f"{dst.node_id} answers {src.node_id}: mesh".encode()

            await bounded(asyncio.gather(*(call(s, d) for s in mesh for d in mesh if s is not d)))
            for node in mesh:
                peers = {p.node_id for p in node.endpoint.connections()}
                assert peers == {n.node_id for n in mesh if n is not node}

    run(main())


def test_concurrent_dials_to_one_peer_share_one_connection() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            dials = [a.endpoint.connect("127.0.0.1", b.port, b.node_id) for _ in range(5)]
            connections = await bounded(asyncio.gather(*dials))
            assert all(c is connections[0] for c in connections)
            assert len(a.events("overlay_connected")) == 1

    run(main())


# -- identity ----------------------------------------------------------------------------------


def test_wrong_expected_identity_is_rejected_and_the_listener_keeps_serving() -> None:
    async def main() -> None:
        async with nodes(3) as (a, b, c):
            with pytest.raises(HandshakeFailedError) as failure:
                await bounded(a.endpoint.connect("127.0.0.1", b.port, c.node_id))
            message = str(failure.value)
            assert f"dialled {c.node_id} but the peer proved {b.node_id}" in message
            (failed,) = a.events("overlay_handshake_failed")
            assert c.node_id in failed["reason"]
            assert b.node_id in failed["reason"]
            assert failed["expected_node_id"] == c.node_id
            assert a.endpoint.connections() == []
            # The listener saw the dialler give up, with the dialler's reason.
            await eventually(lambda: bool(b.events("overlay_handshake_failed")), "b logs it")
            assert c.node_id in b.events("overlay_handshake_failed")[0]["reason"]
            # ... and keeps serving: the same dialler with the right id, and another node.
            await good_rpcs(a, b)
            await good_rpcs(c, b)

    run(main())


def test_bad_identity_signature_is_rejected() -> None:
    async def main() -> None:
        async with nodes(2) as (server, good):
            async with raw_client(server.port) as client:
                raw = RawNoise(client, key(99))
                raw.send_message()
                await raw.read_message()  # the server's proof
                raw.send_message(raw.payload(corrupt_signature=True))
                await bounded(client.wait_closed())
                assert client.close_reason is not None
                assert "identity proof does not verify" in client.close_reason
            (failed,) = server.events("overlay_handshake_failed")
            assert "does not verify" in failed["reason"]
            assert server.endpoint.connections() == []
            await good_rpcs(good, server)

    run(main())


# -- hostile or broken peers -------------------------------------------------------------------

NOISE_MESSAGE_1 = (32).to_bytes(2, "big") + b"\x11" * 32  # a well-formed message 1


async def send_garbage(client: RawClient) -> None:
    client.write(os.urandom(200))


async def send_oversized_length(client: RawClient) -> None:
    client.write(b"\xff\xff" + b"\x00" * 16)


async def send_truncated_then_stall(client: RawClient) -> None:
    client.write(NOISE_MESSAGE_1[:10])


async def send_byte_at_a_time_then_stall(client: RawClient) -> None:
    for byte in NOISE_MESSAGE_1:  # a whole message 1, slowly; then never message 3
        client.write(bytes([byte]))
        await asyncio.sleep(0.01)


async def send_nothing(client: RawClient) -> None:
    pass


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (send_garbage, "message 1 would be"),
        (send_oversized_length, "message 1 would be 65535 bytes"),
        (send_truncated_then_stall, "did not complete within"),
        (send_byte_at_a_time_then_stall, "did not complete within"),
        (send_nothing, "did not complete within"),
    ],
)
def test_a_bad_handshake_closes_only_that_connection(
    behaviour: Callable[[RawClient], Awaitable[None]], reason: str
) -> None:
    async def main() -> None:
        async with nodes(2) as (server, good):
            await good_rpcs(good, server)
            async with raw_client(server.port) as client:
                await behaviour(client)
                # While the bad peer is connected, others are served.
                await good_rpcs(good, server)
                await bounded(client.wait_closed())
                assert client.close_reason is not None
                assert reason in client.close_reason
            (failed,) = server.events("overlay_handshake_failed")
            assert reason in failed["reason"]
            await good_rpcs(good, server)
            assert [p.node_id for p in server.endpoint.connections()] == [good.node_id]

    run(main())


async def frame_garbage(raw: RawNoise) -> None:
    raw.client.write((100).to_bytes(4, "big") + os.urandom(100))  # does not authenticate


async def frame_oversized(raw: RawNoise) -> None:
    raw.client.write((1 << 20).to_bytes(4, "big") + b"\x00" * 64)


async def frame_not_protobuf(raw: RawNoise) -> None:
    raw.send_frame(b"\xff\xff\xff\xff")


async def frame_byte_at_a_time_then_stall(raw: RawNoise) -> None:
    ciphertext = bytes(raw.noise.encrypt(b"\x08\x01\x10\x01"))
    framed = len(ciphertext).to_bytes(4, "big") + ciphertext
    for byte in framed[:-1]:  # all but the last byte, then nothing
        raw.client.write(bytes([byte]))
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (frame_garbage, "does not authenticate"),
        (frame_oversized, "above the maximum"),
        (frame_not_protobuf, "not a valid OverlayFrame"),
        (frame_byte_at_a_time_then_stall, "idle for"),
    ],
)
def test_a_bad_frame_after_the_handshake_closes_only_that_connection(
    behaviour: Callable[[RawNoise], Awaitable[None]], reason: str
) -> None:
    settings = dataclasses.replace(SETTINGS, idle_timeout=1.0, keepalive_interval=0.25)

    async def main() -> None:
        async with nodes(2, settings) as (server, good):
            async with raw_client(server.port) as client:
                raw = RawNoise(client, key(98))
                await raw.complete()
                await eventually(
                    lambda: any(
                        e["peer_node_id"] == raw.key.node_id
                        for e in server.events("overlay_connected")
                    ),
                    "the raw client is connected",
                )
                await behaviour(raw)
                await good_rpcs(good, server)
                await bounded(client.wait_closed())
                assert client.close_reason is not None
                assert reason in client.close_reason
            closed = [
                e for e in server.events("overlay_closed") if e["peer_node_id"] == raw.key.node_id
            ]
            assert len(closed) == 1
            assert reason in closed[0]["reason"]
            await good_rpcs(good, server)

    run(main())


# -- large payloads, timeouts, limits, shutdown ------------------------------------------------


def test_a_20_mb_payload_arrives_intact_while_small_rpcs_keep_completing() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            connection = await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id))
            big = os.urandom(20 * 1024 * 1024)
            order: list[str] = []

            async def big_call() -> bytes:
                answer = await connection.request(ECHO, big, timeout=120)
                order.append("big")
                return answer

            transfer = asyncio.get_running_loop().create_task(big_call())
            small = 0
            while not transfer.done() and small < 20:
                assert await connection.request(ECHO, b"small %d" % small, timeout=60) == (
                    b"small %d" % small
                )
                order.append("small")
                small += 1
            answer = await asyncio.wait_for(transfer, 120)
            assert hashlib.sha256(answer).digest() == hashlib.sha256(big).digest()
            assert order[:20] == ["small"] * 20, order

    run(main())


def test_a_request_times_out_and_the_peer_cancels_its_handler() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            started = asyncio.Event()
            cancelled = asyncio.Event()

            async def stuck(peer: str, payload: bytes) -> bytes:
                started.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
                return b""

            b.endpoint.handle("test.v1.Stuck/Call", stuck)
            connection = await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id))
            with pytest.raises(RequestTimeoutError):
                await connection.request("test.v1.Stuck/Call", b"", timeout=0.2)
            assert started.is_set()
            await bounded(cancelled.wait())
            assert await connection.request(ECHO, b"still fine", timeout=WAIT_S) == b"still fine"

    run(main())


def test_a_request_given_up_stops_its_chunked_response_at_the_peer() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            big = os.urandom(20 * 1024 * 1024)

            async def large(peer: str, payload: bytes) -> bytes:
                return big

            b.endpoint.handle("test.v1.Large/Get", large)
            connection = await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id))
            served = b.endpoint.connection_to(a.node_id)
            assert served is not None
            call = asyncio.get_running_loop().create_task(
                connection.request("test.v1.Large/Get", b"", timeout=120)
            )
            # The answer cannot be complete at the requester while chunks wait at b.
            await eventually(lambda: served._frames.sending, "b sends the response in chunks")
            (stream_id,) = served._rpc._inbound.response_streams.values()
            sent = served._frames.sent(stream_id)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            with pytest.raises(ConnectionClosedError, match="cancelled"):
                await bounded(sent)
            assert not served._frames.sending
            assert not served._rpc._inbound.response_streams
            assert await connection.request(ECHO, b"still fine", timeout=WAIT_S) == b"still fine"

    run(main())


def test_the_per_ip_limit_refuses_with_a_reason() -> None:
    limited = dataclasses.replace(SETTINGS, max_connections_per_ip=1)

    async def main() -> None:
        async with nodes(1, limited) as (server,), nodes(3) as (_, first, second):
            await good_rpcs(first, server)
            with pytest.raises(HandshakeFailedError, match="per-IP connection limit"):
                await bounded(second.endpoint.connect("127.0.0.1", server.port, server.node_id))
            await good_rpcs(first, server)

    run(main())


def test_closing_an_endpoint_closes_its_connections_cleanly() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            entered = asyncio.Event()

            async def slow(peer: str, payload: bytes) -> bytes:
                entered.set()
                await asyncio.Event().wait()
                return b""

            b.endpoint.handle("test.v1.Slow/Call", slow)
            connection = await bounded(a.endpoint.connect("127.0.0.1", b.port, b.node_id))
            call = asyncio.get_running_loop().create_task(
                connection.request("test.v1.Slow/Call", b"", timeout=WAIT_S)
            )
            await bounded(entered.wait())
            await bounded(a.endpoint.close())
            with pytest.raises(ConnectionClosedError, match="shutting down"):
                await bounded(call)
            (closed,) = a.events("overlay_closed")
            assert closed["reason"] == "the node is shutting down"
            await eventually(lambda: bool(b.events("overlay_closed")), "b sees the close")
            assert "shutting down" in b.events("overlay_closed")[0]["reason"]
            assert b.endpoint.connections() == []
            with pytest.raises(ConnectionClosedError):
                await connection.request(ECHO, b"", timeout=WAIT_S)

    run(main())


# -- a relayed or replayed handshake -------------------------------------------------------------


class _Upstream(RawClient):
    """The relay's client side towards the real server: hands what arrives to `forward`."""

    def __init__(self, quic: QuicConnection, forward: Callable[[bytes], None], **kwargs: Any):
        super().__init__(quic, **kwargs)
        self.forward = forward

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, quic_events.StreamDataReceived) and event.data:
            self.forward(event.data)


class Relay:
    """A man in the middle that terminates QUIC on both sides.

    It accepts the victim's QUIC connection under its OWN certificate (a raw
    aioquic server with the overlay's ALPN), dials the real server as a plain
    QUIC client, and copies stream 0 verbatim both ways, recording it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.client_to_server = bytearray()
        self.server_to_client = bytearray()
        self.upstreams: list[tuple[asyncio.DatagramTransport, _Upstream]] = []
        self.tasks: set[asyncio.Task[None]] = set()


class _Downstream(QuicConnectionProtocol):
    """The relay's server side, facing the victim client."""

    def __init__(self, quic: QuicConnection, relay: Relay, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.relay = relay
        self.upstream: _Upstream | None = None
        self.pending = bytearray()
        self.dialling = False

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.StreamDataReceived) and event.data:
            self.relay.client_to_server += event.data
            if self.upstream is not None:
                self.upstream.write(event.data)
                return
            self.pending += event.data
            if not self.dialling:
                self.dialling = True
                task = asyncio.get_running_loop().create_task(self._dial())
                self.relay.tasks.add(task)
                task.add_done_callback(self.relay.tasks.discard)
        elif isinstance(event, quic_events.ConnectionTerminated) and self.upstream is not None:
            self.upstream.close()  # the victim went away: so does the relay

    def _to_client(self, data: bytes) -> None:
        self.relay.server_to_client += data
        self._quic.send_stream_data(0, data)
        self.transmit()

    async def _dial(self) -> None:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, server_name="x"
        )
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Upstream(QuicConnection(configuration=configuration), self._to_client),
            local_addr=("127.0.0.1", 0),
        )
        assert isinstance(protocol, _Upstream)
        self.relay.upstreams.append((transport, protocol))
        protocol.connect(("127.0.0.1", self.relay.target_port))
        await bounded(protocol.wait_connected())
        self.upstream = protocol
        protocol.write(bytes(self.pending))
        self.pending.clear()


@asynccontextmanager
async def relay_to(target_port: int) -> AsyncIterator[Relay]:
    relay = Relay(target_port)
    certificate = new_certificate()  # the relay's own: it has no other server's key
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    server = await serve(
        "127.0.0.1",
        0,
        configuration=configuration,
        create_protocol=lambda quic, **kwargs: _Downstream(quic, relay, **kwargs),
    )
    assert server._transport is not None
    relay.port = int(server._transport.get_extra_info("sockname")[1])
    try:
        yield relay
    finally:
        for task in list(relay.tasks):
            task.cancel()
        for _, upstream in relay.upstreams:
            upstream.close()
        for transport, upstream in relay.upstreams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(upstream.wait_closed(), WAIT_S)
            transport.close()
        server.close()
        await asyncio.sleep(0)


def test_a_relayed_handshake_fails_on_both_ends() -> None:
    async def main() -> None:
        async with nodes(2) as (client, server), relay_to(server.port) as relay:
            with pytest.raises(HandshakeFailedError) as failure:
                await bounded(client.endpoint.connect("127.0.0.1", relay.port, server.node_id))
            # The relay did carry the Noise messages: message 1 to the server, and
            # the server's message 2 back, which fails under the client's prologue
            # (the hash of the relay's certificate, not the server's).
            assert relay.client_to_server
            assert relay.server_to_client
            assert "message 2 does not authenticate" in str(failure.value)
            (failed,) = client.events("overlay_handshake_failed")
            assert failed["expected_node_id"] == server.node_id
            assert "relayed handshake" in failed["reason"]
            # The server never gets message 3: it gives up on the relayed connection.
            await eventually(
                lambda: bool(server.events("overlay_handshake_failed")),
                "the server logs overlay_handshake_failed",
            )
            for node in (client, server):
                assert node.events("overlay_connected") == []
                assert node.endpoint.connections() == []
            assert client.endpoint.connection_to(server.node_id) is None
            assert server.endpoint.connection_to(client.node_id) is None
            # Both keep working directly.
            await good_rpcs(client, server)

    run(main())


class _RecordingClient(RawClient):
    """A RawClient that keeps every byte it writes on stream 0."""

    def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data
        super().write(data)


def test_a_replayed_handshake_does_not_connect() -> None:
    async def main() -> None:
        async with nodes(1) as (server,):
            victim = key(97)

            def connected_as_victim() -> int:
                return sum(
                    e["peer_node_id"] == victim.node_id for e in server.events("overlay_connected")
                )

            # A successful handshake whose stream-0 bytes are recorded.
            configuration = QuicConfiguration(
                is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, server_name="x"
            )
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _RecordingClient(QuicConnection(configuration=configuration)),
                local_addr=("127.0.0.1", 0),
            )
            assert isinstance(protocol, _RecordingClient)
            try:
                protocol.connect(("127.0.0.1", server.port))
                await bounded(protocol.wait_connected())
                await RawNoise(protocol, victim).complete()
                await eventually(lambda: connected_as_victim() == 1, "the original connects")
                recorded = bytes(protocol.written)
            finally:
                protocol.close()
                await bounded(protocol.wait_closed())
                transport.close()

            # The same bytes, verbatim, on a new QUIC connection to the same server.
            failures_before = len(server.events("overlay_handshake_failed"))
            async with raw_client(server.port) as replay:
                replay.write(recorded)
                await bounded(replay.wait_closed())
                assert replay.close_reason is not None
                assert "message 3 does not authenticate" in replay.close_reason
            await eventually(
                lambda: len(server.events("overlay_handshake_failed")) > failures_before,
                "the server logs the replay's failure",
            )
            last_failure = server.events("overlay_handshake_failed")[-1]
            assert "message 3 does not authenticate" in last_failure["reason"]
            assert connected_as_victim() == 1  # only the original
            assert server.endpoint.connection_to(victim.node_id) is None

    run(main())


# -- a frame that stalls after the handshake ---------------------------------------------------


def test_frame_stall_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="frame_stall_timeout"):
        OverlaySettings(frame_stall_timeout=0)


def test_a_frame_trickled_then_stalled_closes_that_connection_before_the_idle_timeout() -> None:
    """The stall deadline counts from the frame's first byte: trickling it does not
    move the deadline, and the long idle timeout is not what closes the connection."""
    settings = dataclasses.replace(SETTINGS, frame_stall_timeout=0.5, idle_timeout=60.0)

    async def main() -> None:
        async with nodes(2, settings) as (server, good):
            await good_rpcs(good, server)
            async with raw_client(server.port) as client:
                raw = RawNoise(client, key(97))
                await raw.complete()
                await eventually(
                    lambda: any(
                        e["peer_node_id"] == raw.key.node_id
                        for e in server.events("overlay_connected")
                    ),
                    "the raw client is connected",
                )
                raw.send_frame(b"\x08\x01\x10\x01")  # a whole frame first: no stall
                ciphertext = bytes(raw.noise.encrypt(b"\x08\x01\x10\x02" + b"\x00" * 64))
                framed = len(ciphertext).to_bytes(4, "big") + ciphertext

                async def trickle_then_stall() -> None:
                    for byte in framed[:-1]:  # never the last byte
                        if client.close_reason is not None:
                            return
                        client.write(bytes([byte]))
                        await asyncio.sleep(0.02)

                trickle = asyncio.get_running_loop().create_task(trickle_then_stall())
                rpcs = 0
                while client.close_reason is None or rpcs < 3:
                    await good_rpcs(good, server, count=1)
                    rpcs += 1
                    await asyncio.sleep(0.01)
                    assert rpcs < 10_000, "the stalled connection was never closed"
                await bounded(trickle)
                await bounded(client.wait_closed())
                assert client.close_reason is not None
                assert client.close_reason.startswith("frame stalled: ")
                assert f"of {len(framed)} bytes after" in client.close_reason
            closed = [
                e for e in server.events("overlay_closed") if e["peer_node_id"] == raw.key.node_id
            ]
            assert len(closed) == 1
            assert closed[0]["reason"] == client.close_reason
            assert [p.node_id for p in server.endpoint.connections()] == [good.node_id]
            await good_rpcs(good, server)

    run(main())
