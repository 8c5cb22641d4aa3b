"""Relays and hole punching (net/relay.py) over real loopback QUIC endpoints.

Three nodes on 127.0.0.1: a relay, a "private" node W that holds a
reservation there, and a node R that reaches W through it. Loopback has no
NAT, so a hole punch here always succeeds: tests that want the relayed path
turn punching off (the netns tests, tests/test_nat_relay.py, show NATs).
Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from plasm.v1 import relay_pb2

from plasm_grpc import metrics
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.records import RelayAddress
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.relay import RelayLimits
from plasm_grpc.logs import EventLog
from plasm_grpc.net import ConnectionClosedError, OverlayEndpoint, OverlayError, OverlaySettings
from plasm_grpc.net.connection import OverlayConnection
from plasm_grpc.net.relay import CONNECT, HOLE_PUNCH, RESERVE, RelayService, RelaySettings

WAIT_S = 20.0
TEST_S = 90.0
ECHO = "test.v1.Echo/Call"
SETTINGS = OverlaySettings(handshake_timeout=2.0)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


class Node:
    def __init__(self, name: str, relay: RelaySettings) -> None:
        self.key = NodeKey.from_seed(hashlib.sha256(b"relay test " + name.encode()).digest())
        self.log = io.StringIO()
        self.endpoint = OverlayEndpoint(self.key, settings=SETTINGS, events=EventLog(self.log))
        self.relay = RelayService(self.endpoint, settings=relay)

        async def echo(peer: str, payload: bytes) -> bytes:
            return payload

        self.endpoint.handle(ECHO, echo)

    @property
    def node_id(self) -> str:
        return self.key.node_id

    @property
    def address(self) -> str:
        return host_port("127.0.0.1", self.endpoint.port)

    async def start(self) -> None:
        await self.endpoint.start()
        self.relay.install()

    async def close(self) -> None:
        await self.relay.close()
        await self.endpoint.close()


async def eventually(check: Any, what: str, timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


@asynccontextmanager
async def network(
    *,
    limits: RelayLimits | None = None,
    hole_punch: bool = False,
    w_punches: bool | None = None,
    reserve: bool = True,
) -> AsyncIterator[tuple[Node, Node, Node]]:
    """(relay, w, r): w holds a reservation at relay unless `reserve` is False."""
    relay = Node("relay", RelaySettings(limits=limits or RelayLimits()))
    w_punch = hole_punch if w_punches is None else w_punches
    w = Node("w", RelaySettings(hole_punch=w_punch, retry_s=0.2))
    r = Node("r", RelaySettings(hole_punch=hole_punch))
    nodes = (relay, w, r)
    keeping: asyncio.Task[None] | None = None
    try:
        for node in nodes:
            await node.start()
        relay.relay.serving = True
        if reserve:
            keeping = asyncio.create_task(
                w.relay.keep_reservations(
                    lambda: [(relay.node_id, "127.0.0.1", relay.endpoint.port)]
                )
            )
            await eventually(lambda: w.relay.relays, "w holds a reservation")
        yield nodes
    finally:
        if keeping is not None:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
        for node in nodes:
            await node.close()


def via(relay: Node) -> list[RelayAddress]:
    return [RelayAddress(relay_node_id=relay.node_id, address=relay.address)]


def capture(relay: Node) -> list[bytes]:
    """Every inner packet the relay forwards, as it sees it."""
    seen: list[bytes] = []
    forwarder = relay.endpoint.circuit_forwarder
    assert forwarder is not None

    def spy(connection: OverlayConnection, circuit_id: int, packet: bytes) -> None:
        seen.append(packet)
        forwarder(connection, circuit_id, packet)

    relay.endpoint.circuit_forwarder = spy
    return seen


def test_a_node_is_reached_through_its_relay_and_the_relay_sees_only_ciphertext() -> None:
    async def main() -> None:
        async with network() as (relay, w, r):
            assert w.relay.relays == via(relay)
            seen = capture(relay)
            forwarded = metrics.RELAY_FORWARDED_BYTES.value()
            marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            assert connection.relayed
            assert connection.remote_node_id == w.node_id  # Noise proved W end to end
            payload = marker * 2000  # ~70 KB: many packets, several Noise messages
            assert await connection.request(ECHO, payload, WAIT_S) == payload
            assert sum(len(p) for p in seen) > len(payload)  # it all went through the relay
            assert metrics.RELAY_FORWARDED_BYTES.value() - forwarded >= len(payload)
            blob = b"".join(seen)
            assert marker not in blob
            assert marker[:12] not in blob
            # The connection is W's view of R too (inbound, relayed).
            back = w.endpoint.connection_to(r.node_id)
            assert back is not None
            assert back.relayed
            assert await back.request(ECHO, b"and back", WAIT_S) == b"and back"

    run(main())


def test_hole_punch_replaces_the_relayed_connection_with_a_direct_one() -> None:
    async def main() -> None:
        async with network(hole_punch=True) as (relay, w, r):
            punched = metrics.HOLE_PUNCHES.value("direct")
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            assert not connection.relayed  # loopback: nothing blocks the punch
            assert metrics.HOLE_PUNCHES.value("direct") == punched + 1
            assert connection.address == ("127.0.0.1", w.endpoint.port)
            assert r.relay.punches_tried == r.relay.punches_succeeded == 1
            assert r.endpoint.connection_to(w.node_id) is connection
            assert await connection.request(ECHO, b"direct", WAIT_S) == b"direct"
            await eventually(
                lambda: (c := w.endpoint.connection_to(r.node_id)) is not None and not c.relayed,
                "w prefers the direct connection too",
            )
            assert '"event":"hole_punch",' in r.log.getvalue()

    run(main())


def test_a_node_without_a_reservation_cannot_be_reached_and_the_error_says_why() -> None:
    async def main() -> None:
        async with network(reserve=False) as (relay, w, r):
            with pytest.raises(OverlayError, match="no reservation"):
                await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)

    run(main())


def test_a_relay_that_is_not_public_refuses_reservations() -> None:
    async def main() -> None:
        async with network(reserve=False) as (relay, w, _):
            relay.relay.serving = False
            connection = await w.endpoint.connect("127.0.0.1", relay.endpoint.port, relay.node_id)
            raw = await connection.request(RESERVE, b"", WAIT_S)
            answer = relay_pb2.RelayReserveResponse.FromString(raw)
            assert not answer.accepted
            assert "publicly reachable" in answer.reason

    run(main())


def test_the_reservation_count_limit_holds() -> None:
    async def main() -> None:
        async with network(limits=RelayLimits(max_reservations=1)) as (relay, _, r):
            connection = await r.endpoint.connect("127.0.0.1", relay.endpoint.port, relay.node_id)
            raw = await connection.request(RESERVE, b"", WAIT_S)
            answer = relay_pb2.RelayReserveResponse.FromString(raw)
            assert not answer.accepted
            assert "maximum of 1 reservations" in answer.reason
            assert relay.relay.book.reservations == 1

    run(main())


def test_a_reservation_ends_with_its_term() -> None:
    async def main() -> None:
        limits = RelayLimits(duration_s=0.5)
        async with network(limits=limits, reserve=False) as (relay, w, r):
            connection = await w.endpoint.connect("127.0.0.1", relay.endpoint.port, relay.node_id)
            raw = await connection.request(RESERVE, b"", WAIT_S)
            assert relay_pb2.RelayReserveResponse.FromString(raw).accepted
            await eventually(lambda: relay.relay.book.reservations == 0, "the term ends")
            to_relay = await r.endpoint.connect("127.0.0.1", relay.endpoint.port, relay.node_id)
            request = relay_pb2.RelayConnectRequest(target_node_id=bytes.fromhex(w.node_id))
            raw = await to_relay.request(CONNECT, request.SerializeToString(), WAIT_S)
            answer = relay_pb2.RelayConnectResponse.FromString(raw)
            assert not answer.accepted
            assert "no reservation" in answer.reason

    run(main())


def test_the_byte_limit_closes_the_circuit_and_both_ends_learn_why() -> None:
    async def main() -> None:
        limits = RelayLimits(max_bytes=200_000, rate_bytes_per_s=10_000_000)
        async with network(limits=limits) as (relay, w, r):
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            assert await connection.request(ECHO, b"x" * 10_000, WAIT_S) == b"x" * 10_000
            with pytest.raises((ConnectionClosedError, OverlayError)):
                await connection.request(ECHO, os.urandom(300_000), WAIT_S)
            await eventually(lambda: not connection.is_open, "r's side closes")
            assert connection.close_reason is not None
            assert "byte limit reached" in connection.close_reason
            assert relay.relay.book.forwarded_bytes <= limits.max_bytes

    run(main())


def test_the_rate_limit_drops_what_exceeds_it() -> None:
    async def main() -> None:
        limits = RelayLimits(rate_bytes_per_s=50_000)
        async with network(limits=limits) as (relay, w, r):
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            before = relay.relay.book.dropped_frames
            started = asyncio.get_running_loop().time()
            payload = os.urandom(200_000)
            assert await connection.request(ECHO, payload, WAIT_S * 2) == payload  # QUIC recovers
            elapsed = asyncio.get_running_loop().time() - started
            assert relay.relay.book.dropped_frames > before  # the relay dropped the excess
            # Never more than the bucket plus the rate over the time it took.
            assert relay.relay.book.forwarded_bytes <= limits.rate_bytes_per_s * (elapsed + 2) + (
                limits.rate_bytes_per_s
            )

    run(main())


def test_losing_the_relay_connection_closes_the_relayed_connection() -> None:
    async def main() -> None:
        async with network() as (relay, w, r):
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            to_relay = r.endpoint.connection_to(relay.node_id)
            assert to_relay is not None
            to_relay.close("test closes it")
            await eventually(lambda: not connection.is_open, "the inner connection closes")
            assert connection.close_reason is not None
            assert "relay" in connection.close_reason

    run(main())


def test_hole_punch_is_refused_over_a_direct_connection_and_rate_limited() -> None:
    """Punch datagrams go where the caller says: only through a relay, and rarely."""

    async def main() -> None:
        async with network(hole_punch=True) as (relay, w, r):
            punch = relay_pb2.HolePunchRequest(observed_addresses=["127.0.0.1:9"])
            direct = await r.endpoint.connect("127.0.0.1", w.endpoint.port, w.node_id)
            assert not direct.relayed
            with pytest.raises(OverlayError, match="through a relay"):
                await direct.request(HOLE_PUNCH, punch.SerializeToString(), WAIT_S)
            # Through the relay the first punch is taken (the direct connection
            # above is reused by connect(), so dial the relayed path by hand).
            to_relay = await r.endpoint.connect("127.0.0.1", relay.endpoint.port, relay.node_id)
            request = relay_pb2.RelayConnectRequest(target_node_id=bytes.fromhex(w.node_id))
            raw = await to_relay.request(CONNECT, request.SerializeToString(), WAIT_S)
            circuit = relay_pb2.RelayConnectResponse.FromString(raw).circuit_id
            inner = await r.endpoint.dial_via(relay.node_id, circuit, w.node_id)
            assert inner.relayed
            answers = [
                relay_pb2.HolePunchResponse.FromString(
                    await inner.request(HOLE_PUNCH, punch.SerializeToString(), WAIT_S)
                )
                for _ in range(2)
            ]
            assert answers[0].accepted
            assert not answers[1].accepted
            assert "at most one hole punch per 10 s" in answers[1].reason

    run(main())


def test_a_relay_that_stops_relaying_ends_its_circuits_with_the_reason() -> None:
    async def main() -> None:
        async with network() as (relay, w, r):
            connection = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            relay.relay.serving = False  # e.g. it found itself private
            await eventually(lambda: not connection.is_open, "the relayed connection closes")
            assert connection.close_reason is not None
            assert "the relay stopped relaying" in connection.close_reason
            assert relay.relay.book.reservations == 0

    run(main())


def test_after_a_failed_punch_the_relayed_path_is_used_without_trying_again() -> None:
    async def main() -> None:
        async with network(hole_punch=True, w_punches=False) as (relay, w, r):
            first = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            assert first.relayed  # W will not punch: "hole punching is off"
            assert r.relay.punches_tried == 1
            assert r.relay.punches_succeeded == 0
            assert "hole punching is off" in r.log.getvalue()
            first.close("test")
            await eventually(lambda: r.endpoint.connection_to(w.node_id) is None, "closed")
            second = await asyncio.wait_for(r.relay.connect(w.node_id, via(relay)), WAIT_S)
            assert second.relayed
            assert r.relay.punches_tried == 1  # not again for a while

    run(main())
