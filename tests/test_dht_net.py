"""The DHT service (plasm_grpc.net.dht) over real loopback QUIC sockets.

Every node is an in-process `OverlayEndpoint` on 127.0.0.1 port 0 with a
`DhtService` on top and its own in-memory JSON event log. An "attacker" is a
bare endpoint (no DHT) that sends hand-made DHT requests over the real wire.
Every wait is bounded (`bounded`, `eventually`); nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from plasm_grpc.core.dht.keys import Key, distance
from plasm_grpc.core.dht.messages import (
    METHODS,
    FindNode,
    GetProviders,
    GetRecord,
    Ping,
    PutRecord,
    Request,
    StoreReply,
)
from plasm_grpc.core.dht.node import DhtSettings, OperationKind
from plasm_grpc.core.dht.records import (
    MEMORY_TIERS,
    Capabilities,
    RecordContent,
    WorkerRequirements,
    make_record,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.envelope import PEER_RECORD_DOMAIN, SignedEnvelope, sign
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.logs import EventLog
from plasm_grpc.net import OverlayEndpoint, OverlaySettings, RemoteCallError
from plasm_grpc.net.dht import SNAPSHOT_FILE, DhtService, DhtServiceSettings
from plasm_grpc.net.dht_codec import (
    ProtobufRecordCodec,
    decode_response,
    decode_snapshot,
    encode_request,
    method_of,
)

WAIT_S = 15.0  # the bound on any single wait: generous, never a measurement
TEST_S = 60.0
OVERLAY = OverlaySettings(handshake_timeout=1.0)
SETTINGS = DhtServiceSettings(rpc_timeout=2.0, bootstrap_retry_interval=0.3, snapshot_interval=0.3)
CODEC = ProtobufRecordCodec()
MIB = 1024 * 1024


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


def key(n: int) -> NodeKey:
    return NodeKey.from_seed(hashlib.sha256(b"dht net test node %d" % n).digest())


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


class Peer:
    """An overlay endpoint, optionally with a DHT service, and its event log."""

    def __init__(
        self,
        n: int,
        *,
        settings: DhtServiceSettings = SETTINGS,
        data_dir: Path | None = None,
    ) -> None:
        self.n = n
        self.key = key(n)
        self.log = io.StringIO()
        self.events_log = EventLog(self.log)
        self.endpoint = OverlayEndpoint(self.key, settings=OVERLAY, events=self.events_log)
        self.settings = settings
        self.data_dir = data_dir
        self._dht: DhtService | None = None

    @property
    def dht(self) -> DhtService:
        assert self._dht is not None
        return self._dht

    @property
    def node_id(self) -> str:
        return self.key.node_id

    @property
    def contact(self) -> Contact:
        return Contact(node_id=self.node_id, host="127.0.0.1", port=self.endpoint.port)

    async def start(self, bootstrap: list[Contact] | None = None, *, dht: bool = True) -> None:
        await bounded(self.endpoint.start())
        if dht:
            self._dht = DhtService(
                self.endpoint,
                self.key,
                events=self.events_log,
                settings=self.settings,
                data_dir=self.data_dir,
            )
            await bounded(self.dht.start(bootstrap or []))

    async def close(self) -> None:
        if self._dht is not None:
            await bounded(self._dht.close())
        await bounded(self.endpoint.close())

    def table(self) -> set[str]:
        return {c.node_id for c in self.dht.node.table.contacts()}

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [r for r in records if name is None or r["event"] == name]

    async def call(self, target: Peer, request: Request, payload: bytes | None = None) -> Any:
        """Send one DHT request to `target` as this (bare) endpoint; its decoded answer."""
        connection = await bounded(
            self.endpoint.connect("127.0.0.1", target.endpoint.port, target.node_id)
        )
        answer = await connection.request(
            method_of(request),
            encode_request(request) if payload is None else payload,
            timeout=WAIT_S,
        )
        return decode_response(request, answer)


@asynccontextmanager
async def network(
    count: int, *, settings: DhtServiceSettings = SETTINGS, first: int = 0
) -> AsyncIterator[list[Peer]]:
    """`count` DHT nodes, each bootstrapped from the first once it has joined."""
    peers = [Peer(first + i, settings=settings) for i in range(count)]
    try:
        await peers[0].start()
        for peer in peers[1:]:
            await peer.start([peers[0].contact])
            await eventually(lambda p=peer: bool(p.events("dht_bootstrapped")), "bootstrapped")
        yield peers
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))


@asynccontextmanager
async def bare(n: int) -> AsyncIterator[Peer]:
    peer = Peer(n)
    try:
        await peer.start(dht=False)
        yield peer
    finally:
        await peer.close()


def capabilities(memory: int, *, arch: str = "x86_64", free: int = 1) -> Capabilities:
    return Capabilities(
        arch=arch,
        os="linux",
        cores=4,
        memory_bytes=8 * 1024 * MIB,
        runtime_name="wasmtime",
        runtime_version="test",
        max_limits=ResourceLimits(max_memory_bytes=memory, max_fuel=10**9, timeout_ms=1000),
        free_job_slots=free,
        total_job_slots=4,
    )


# -- discovery ---------------------------------------------------------------------------


def test_nodes_bootstrapping_from_one_node_discover_each_other() -> None:
    async def main() -> None:
        async with network(7) as peers:
            ids = {p.node_id for p in peers}
            for peer in peers:
                await eventually(
                    lambda p=peer: p.table() == ids - {p.node_id},
                    f"node {peer.n} knows every other node",
                )
            searcher = peers[3]
            for seed in range(3):
                target = Key.from_bytes(hashlib.sha256(b"target %d" % seed).digest())
                result = await bounded(searcher.dht.find_node(target))
                expected = sorted(
                    ids - {searcher.node_id}, key=lambda i: distance(Key.from_hex(i), target)
                )
                assert [c.node_id for c in result.closest] == expected
                assert result.kind is OperationKind.FIND_NODE
            lookups = searcher.events("dht_lookup_finished")
            assert any(e["kind"] == "find_node" and e["found"] for e in lookups)
            assert {"hops", "rpcs", "failed_rpcs", "duration_ms", "target"} <= set(lookups[-1])
            assert len(peers[0].events("dht_peer_added")) == len(peers) - 1
            known = {p.contact.node_id: p for p in searcher.dht.known_peers()}
            assert set(known) == ids - {searcher.node_id}
            assert any(p.connected for p in known.values())

    run(main())


def test_nodes_joining_at_once_still_discover_each_other() -> None:
    async def main() -> None:
        seed = Peer(200)
        joiners = [Peer(201 + i) for i in range(11)]
        try:
            await seed.start()
            await bounded(asyncio.gather(*(p.start([seed.contact]) for p in joiners)))
            everyone = [seed, *joiners]
            ids = {p.node_id for p in everyone}
            for peer in everyone:
                await eventually(
                    lambda p=peer: p.table() == ids - {p.node_id},
                    f"node {peer.n} knows every other node",
                )
        finally:
            await asyncio.gather(*(peer.close() for peer in [seed, *joiners]))

    run(main())


# -- records and providers ---------------------------------------------------------------


def test_records_and_providers_are_published_and_found() -> None:
    async def main() -> None:
        async with network(6, first=10) as peers:
            ids = {p.node_id for p in peers}
            for peer in peers:
                await eventually(lambda p=peer: p.table() == ids - {p.node_id}, "full tables")
            offers = [
                capabilities(MEMORY_TIERS[0], free=5),  # 64 MiB
                capabilities(MEMORY_TIERS[1], free=2),  # 256 MiB
                capabilities(MEMORY_TIERS[2], free=1),  # 1 GiB
                capabilities(MEMORY_TIERS[2], free=3, arch="aarch64"),
                capabilities(MEMORY_TIERS[3], free=2),  # 4 GiB
                capabilities(MEMORY_TIERS[1], free=0),
            ]
            for peer, offer in zip(peers, offers, strict=True):
                address = f"127.0.0.1:{peer.endpoint.port}"
                stores = await bounded(peer.dht.advertise([address], offer))
                assert stores
                assert all(s.stored > 0 for s in stores), stores
            asker = peers[0]
            # Record lookup by node id.
            result = await bounded(asker.dht.get_record(peers[4].node_id))
            assert result.record is not None
            assert result.record.content.addresses == (f"127.0.0.1:{peers[4].endpoint.port}",)
            assert result.record.capabilities == offers[4]
            # 200 MiB: the 256 MiB class; best first = most free slots.
            workers = await bounded(
                asker.dht.find_workers(
                    WorkerRequirements(min_memory_bytes=200 * MIB), limit=10, timeout=WAIT_S
                )
            )
            order = [w.node_id for w in workers]
            assert order[0] == peers[3].node_id  # 3 free slots
            assert set(order[1:3]) == {peers[1].node_id, peers[4].node_id}  # 2 each: by RTT
            assert order[3:] == [peers[2].node_id, peers[5].node_id]  # 1, then 0
            free = [w.capabilities.free_job_slots for w in workers]
            assert free == sorted(free, reverse=True)
            # Exact filters on top of the class: arch, free slots, memory.
            arm = await bounded(
                asker.dht.find_workers(
                    WorkerRequirements(min_memory_bytes=MEMORY_TIERS[2], arch="aarch64"),
                    limit=10,
                    timeout=WAIT_S,
                )
            )
            assert [w.node_id for w in arm] == [peers[3].node_id]
            busy = await bounded(
                asker.dht.find_workers(
                    WorkerRequirements(min_memory_bytes=MEMORY_TIERS[2], min_free_slots=2),
                    limit=10,
                    timeout=WAIT_S,
                )
            )
            assert [w.node_id for w in busy] == [peers[3].node_id, peers[4].node_id]
            # The asker's own record counts, and limit cuts.
            small = await bounded(
                asker.dht.find_workers(WorkerRequirements(), limit=1, timeout=WAIT_S)
            )
            assert [w.node_id for w in small] == [asker.node_id]  # 5 free slots
            assert any(p.events("dht_record_stored") for p in peers)
            # The routing table view carries the records learnt from pings and lookups.
            records = {p.contact.node_id: p.record for p in asker.dht.known_peers()}
            assert records[peers[4].node_id] is not None

    run(main())


def test_find_workers_times_out() -> None:
    async def main() -> None:
        async with network(2, first=20) as peers:
            gone = Peer(29)
            await bounded(gone.endpoint.start())
            await bounded(gone.endpoint.close())
            # A table entry whose address nobody answers at keeps the lookup waiting.
            peers[0].dht.node.table.observe(gone.contact, time.time())
            with pytest.raises(TimeoutError):
                await bounded(peers[0].dht.find_workers(WorkerRequirements(), limit=5, timeout=0.3))
            # The service goes on working.
            result = await bounded(peers[0].dht.find_node(Key(5)))
            assert peers[1].node_id in {c.node_id for c in result.closest}

    run(main())


# -- bad records over the wire -----------------------------------------------------------


def _content(seq: int, *, now: float, ttl: float = 3600.0) -> RecordContent:
    return RecordContent(
        addresses=("127.0.0.1:1",),
        capabilities=capabilities(MEMORY_TIERS[1]),
        seq=seq,
        created_at=now,
        expires_at=now + ttl,
    )


def test_forged_stale_oversized_spoofed_and_expired_records_are_rejected() -> None:
    async def main() -> None:
        async with network(1, first=30) as (victim,), bare(31) as attacker:
            now = time.time()
            own = attacker.key
            other = key(39)

            async def put(envelope: SignedEnvelope) -> StoreReply:
                reply = await attacker.call(victim, PutRecord(record=envelope))
                assert isinstance(reply, StoreReply)
                return reply

            good = make_record(own, _content(10, now=now), CODEC).envelope
            assert (await put(good)).stored
            cases = {
                "forged": dataclasses.replace(
                    make_record(own, _content(11, now=now), CODEC).envelope,
                    signature=bytes(64),
                ),
                "stale": make_record(own, _content(5, now=now), CODEC).envelope,
                "oversized": sign(own, PEER_RECORD_DOMAIN, b"\x0a" + bytes(3000)),
                "spoofed": make_record(other, _content(12, now=now), CODEC).envelope,
                "expired": make_record(own, _content(13, now=now - 7200), CODEC).envelope,
                "malformed": sign(own, PEER_RECORD_DOMAIN, b"not a peer record"),
            }
            for reason, envelope in cases.items():
                reply = await put(envelope)
                assert not reply.stored
                assert reply.reason.startswith(reason), (reason, reply.reason)
            rejected = victim.events("dht_record_rejected")
            assert [e["reason"] for e in rejected] == list(cases)
            assert all(
                e["sender"] == attacker.node_id and e["level"] == "warning" for e in rejected
            )
            assert all(e["detail"] for e in rejected)
            # The good record is still the one held.
            got = await attacker.call(victim, GetRecord(key=Key.from_hex(attacker.node_id)))
            assert got.record == good

    run(main())


# -- rate limiting -----------------------------------------------------------------------


def test_a_flooding_peer_is_rate_limited_and_others_are_not() -> None:
    settings = dataclasses.replace(
        SETTINGS, node=DhtSettings(rate=2.0, burst=10, learn_peer_records=False)
    )

    async def main() -> None:
        async with (
            network(1, first=40, settings=settings) as (victim,),
            bare(41) as flooder,
            bare(42) as polite,
        ):

            async def ping(peer: Peer) -> bool:
                try:
                    await peer.call(victim, Ping())
                except RemoteCallError:
                    return False
                return True

            flood = await bounded(asyncio.gather(*(ping(flooder) for _ in range(60))))
            assert 10 <= sum(flood) < 30
            for _ in range(8):
                assert await ping(polite)
            limited = victim.events("dht_rate_limited")
            assert limited
            assert limited[0]["peer"] == flooder.node_id
            assert limited[0]["level"] == "warning"
            assert limited[0]["refused"] == 1
            assert all(e["peer"] != polite.node_id for e in limited)

    run(main())


def test_a_flood_of_malformed_requests_is_refused_and_rate_limited() -> None:
    settings = dataclasses.replace(
        SETTINGS, node=DhtSettings(rate=2.0, burst=10, learn_peer_records=False)
    )

    async def main() -> None:
        async with (
            network(1, first=43, settings=settings) as (victim,),
            bare(44) as flooder,
            bare(45) as polite,
        ):
            connection = await bounded(
                flooder.endpoint.connect("127.0.0.1", victim.endpoint.port, victim.node_id)
            )

            async def garbage() -> str:
                with pytest.raises(RemoteCallError) as info:
                    await connection.request(METHODS[FindNode], b"\x0a\x05ab", timeout=WAIT_S)
                return str(info.value)

            errors = await bounded(asyncio.gather(*(garbage() for _ in range(60))))
            malformed = [e for e in errors if e.startswith("malformed request")]
            limited = [e for e in errors if e == "rate limited"]
            assert len(malformed) + len(limited) == len(errors), errors
            assert 10 <= len(malformed) < 30  # the burst, and what refilled meanwhile
            events = victim.events("dht_rate_limited")
            assert events
            assert events[0]["peer"] == flooder.node_id
            assert not victim.events("overlay_handler_failed")
            # Another peer is served.
            nodes = await polite.call(victim, FindNode(target=Key(1)))
            assert nodes.closer == ()

    run(main())


# -- failures ----------------------------------------------------------------------------


def test_a_referrer_cannot_plant_a_fake_address_for_a_connected_node() -> None:
    async def main() -> None:
        a, c = Peer(46), Peer(47)
        try:
            await a.start()
            await c.start()
            await bounded(c.endpoint.connect("127.0.0.1", a.endpoint.port, a.node_id))
            await eventually(lambda: a.endpoint.connection_to(c.node_id) is not None, "connected")
            # A contact for the real node c at an address where nobody is: the
            # RPC goes over the open connection, and c answers from its own.
            fake = Contact(node_id=c.node_id, host="192.0.2.9", port=9)
            result = await bounded(
                a.dht.run_operation(lambda node, now: node.bootstrap([fake], now))
            )
            assert result.failed_rpcs == 0
            assert a.dht.node.table.contacts() == [c.contact]
        finally:
            await asyncio.gather(a.close(), c.close())

    run(main())


def test_an_rpc_cancelled_before_it_ran_still_gets_its_answer() -> None:
    async def main() -> None:
        async with network(2, first=48) as peers:
            dht = peers[0].dht
            await eventually(lambda: peers[0].table() == {peers[1].node_id}, "table")
            lookup = asyncio.create_task(dht.find_node(Key(7)))
            await asyncio.sleep(0)  # the lookup starts its RPC tasks; they have not run
            launched = list(dht._rpc_tasks)
            assert launched
            for task in launched:
                task.cancel()
            result = await bounded(lookup)  # would wait forever for an unanswered RPC
            assert result.failed_rpcs >= len(launched)
            assert not dht._unanswered

    run(main())


def test_a_dead_peer_is_evicted() -> None:
    async def main() -> None:
        async with network(3, first=50) as peers:
            ids = {p.node_id for p in peers}
            for peer in peers:
                await eventually(lambda p=peer: p.table() == ids - {p.node_id}, "full tables")
            dead = peers[2]
            await dead.close()
            target = Key.from_hex(dead.node_id)
            # No replacement waits in its bucket, so it leaves the table after
            # max_failures failed RPCs in a row (each lookup asks it once).
            limit = peers[0].dht.node.settings.max_failures
            for _ in range(limit):
                result = await bounded(peers[0].dht.find_node(target))
                assert result.failed_rpcs >= 1
                if dead.node_id not in peers[0].table():
                    break
            assert dead.node_id not in peers[0].table()
            evicted = peers[0].events("dht_peer_evicted")
            assert [e["peer"] for e in evicted] == [dead.node_id]
            assert evicted[0]["reason"]

    run(main())


def test_malformed_requests_get_an_error_and_the_node_keeps_serving() -> None:
    async def main() -> None:
        async with network(2, first=60) as peers, bare(69) as attacker:
            victim = peers[0]
            await eventually(lambda: victim.table() == {peers[1].node_id}, "victim knows peer 1")
            garbage = b"\x0a\x05ab"  # field 1, length 5, 2 bytes: truncated
            for method in METHODS.values():
                connection = await bounded(
                    attacker.endpoint.connect("127.0.0.1", victim.endpoint.port, victim.node_id)
                )
                with pytest.raises(RemoteCallError):
                    await bounded(connection.request(method, garbage, timeout=WAIT_S))
            wrong_key = await bounded(
                attacker.endpoint.connect("127.0.0.1", victim.endpoint.port, victim.node_id)
            )
            with pytest.raises(RemoteCallError):
                await bounded(wrong_key.request(METHODS[FindNode], b"\x0a\x03abc", timeout=WAIT_S))
            # Still serving: the attacker's own valid request and another node's lookup.
            nodes = await attacker.call(victim, FindNode(target=Key(1)))
            assert [c.node_id for c in nodes.closer] == [peers[1].node_id]
            providers = await attacker.call(victim, GetProviders(key=Key(2)))
            assert providers.providers == ()
            result = await bounded(peers[1].dht.find_node(Key(3)))
            assert victim.node_id in {c.node_id for c in result.closest}
            # Refused on purpose (DhtRefusedError), not a handler failure.
            assert not victim.events("overlay_handler_failed")

    run(main())


# -- the routing table snapshot ----------------------------------------------------------


def test_snapshot_is_saved_and_a_restarted_node_bootstraps_from_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(3, first=70) as peers:
            ids = {p.node_id for p in peers}
            saver = Peer(77, data_dir=tmp_path)
            await saver.start([peers[0].contact])
            try:
                await eventually(lambda: saver.table() == ids, "the saver knows everyone")
                path = tmp_path / SNAPSHOT_FILE
                # Saved periodically, before any shutdown (a kill -9 loses little).
                await eventually(
                    lambda: path.exists() and len(decode_snapshot(path.read_bytes())[1]) == 3,
                    "periodic snapshot",
                )
            finally:
                await saver.close()
            node_id, contacts = decode_snapshot(path.read_bytes())
            assert node_id == saver.node_id
            assert {c.node_id for c in contacts} == ids
            assert not [p for p in os.listdir(tmp_path) if p != SNAPSHOT_FILE]  # no temp files

            restarted = Peer(77, data_dir=tmp_path)
            await restarted.start()  # no configured bootstrap peers
            try:
                await eventually(lambda: restarted.table() == ids, "restarted from the snapshot")
                assert restarted.events("dht_snapshot_loaded")[0]["contacts"] == 3
                assert restarted.events("dht_bootstrapped")
            finally:
                await restarted.close()

    run(main())


def test_a_save_cancelled_mid_write_never_overlaps_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plasm_grpc.net.dht as net_dht

    real = net_dht._write_atomically
    active: list[int] = []
    peak = 0
    lock = threading.Lock()

    def slow_write(path: Path, data: bytes) -> None:
        nonlocal peak
        with lock:
            active.append(1)
            peak = max(peak, len(active))
        try:
            time.sleep(0.3)
            real(path, data)
        finally:
            with lock:
                active.pop()

    monkeypatch.setattr(net_dht, "_write_atomically", slow_write)
    settings = dataclasses.replace(SETTINGS, snapshot_interval=3600.0)

    async def main() -> None:
        async with network(2, first=100) as peers:
            saver = Peer(102, data_dir=tmp_path, settings=settings)
            await saver.start([peers[0].contact])
            try:
                await eventually(lambda: bool(saver.table()), "the saver has peers")
                first = asyncio.create_task(saver.dht.save_snapshot())
                await eventually(lambda: bool(active), "the first write started")
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                # The table changes while that write goes on; the next save has it.
                newcomer = Contact(node_id=key(103).node_id, host="127.0.0.1", port=9)
                saver.dht.node.table.observe(newcomer, time.time())
                assert await bounded(saver.dht.save_snapshot())
            finally:
                await saver.close()
            assert peak == 1
            _, contacts = decode_snapshot((tmp_path / SNAPSHOT_FILE).read_bytes())
            assert newcomer in contacts  # the newer save was the last to land
            assert os.listdir(tmp_path) == [SNAPSHOT_FILE]  # no temp files

    run(main())


def test_rejoins_happen_when_due_not_at_the_retry_interval() -> None:
    settings = dataclasses.replace(
        SETTINGS, bootstrap_retry_interval=3600.0, rejoin_after=(0.1, 0.2, 0.3)
    )

    async def main() -> None:
        async with network(2, first=84, settings=settings) as peers:

            def joins() -> int:
                lookups = peers[1].events("dht_lookup_finished")
                return sum(e["kind"] == "bootstrap" for e in lookups)

            # The first join, then one per rejoin (all well before an hour).
            await eventually(lambda: joins() >= 4, "three rejoins")

    run(main())


def test_a_node_without_peers_retries_bootstrap_until_a_seed_appears() -> None:
    async def main() -> None:
        late = Peer(80)
        lonely = Peer(81)
        await late.endpoint.start()
        port = late.endpoint.port
        await late.endpoint.close()  # the seed's address, nobody there yet
        await lonely.start([Contact(node_id=late.node_id, host="127.0.0.1", port=port)])
        try:
            await eventually(
                lambda: len(lonely.events("dht_bootstrap_failed")) >= 2, "retried bootstrap"
            )
            assert lonely.table() == set()
        finally:
            await lonely.close()

    run(main())


def test_a_node_that_advertised_alone_publishes_once_a_peer_appears() -> None:
    async def main() -> None:
        async with network(1, first=90) as (first,):
            stores = await bounded(first.dht.advertise(["127.0.0.1:1"], capabilities(MIB * 64)))
            assert all(s.stored == 0 for s in stores)  # nobody to store at
            joiner = Peer(91)
            await joiner.start([first.contact])
            try:
                await eventually(lambda: bool(joiner.events("dht_record_stored")), "republished")
                workers = await bounded(
                    joiner.dht.find_workers(WorkerRequirements(), limit=5, timeout=WAIT_S)
                )
                assert [w.node_id for w in workers] == [first.node_id]
            finally:
                await joiner.close()

    run(main())


# -- daemon configuration ----------------------------------------------------------------


def test_dht_config_defaults_and_ranges(tmp_path: Path) -> None:
    from plasm_grpc.daemon.config import ConfigError, load_config

    config = load_config(None)
    assert config.dht.enabled
    assert config.dht.republish_interval_s < config.dht.record_ttl_s
    path = tmp_path / "plasmd.toml"
    path.write_text("[dht]\nrate_per_s = 5\nburst = 7\nrpc_timeout_s = 1.5\n")
    custom = load_config(path)
    assert (custom.dht.rate_per_s, custom.dht.burst, custom.dht.rpc_timeout_s) == (5.0, 7, 1.5)
    for bad, match in [
        ("burst = 0", "dht.burst must be between"),
        ("record_ttl_s = 100000", "dht.record_ttl_s must be between"),
        ("republish_interval_s = 7200", "shorter than dht.record_ttl_s"),
        ("rpc_timeout_s = 0", "dht.rpc_timeout_s must be between"),
        ("enabled = 1", "dht.enabled must be true or false"),
        ("nope = 1", "unknown key 'dht.nope'"),
    ]:
        path.write_text(f"[dht]\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            load_config(path)
