"""DhtNode without a simulator: a few nodes wired by hand, `now` stepped by hand.

Covers the defences of issue 4 one by one (every record check, every store cap,
the rate limiter, ping-back before a requester enters the table, eviction
pings) and the timers (expiry, republish). Each limit has a test that hits it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasm_grpc.core.dht import Key
from plasm_grpc.core.dht.messages import (
    MAX_CONTACTS,
    AddProvider,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersReply,
    PutRecord,
    RecordReply,
    Refused,
    Request,
    Response,
    StoreReply,
)
from plasm_grpc.core.dht.node import (
    DhtNode,
    DhtSettings,
    Event,
    OperationFinished,
    OperationKind,
    PeerAdded,
    PeerEvicted,
    RateLimited,
    RecordRejectedEvent,
    RecordStored,
)
from plasm_grpc.core.dht.ratelimit import RateLimiter
from plasm_grpc.core.dht.records import (
    CLOCK_SKEW,
    MAX_ADDRESSES,
    MAX_RECORD_BYTES,
    MAX_RECORD_TTL,
    MAX_TEXT_CHARS,
    Capabilities,
    PeerRecord,
    RecordContent,
    RecordRejectedError,
    RecordRejectReason,
    WorkerRequirements,
    class_key,
    make_record,
    open_record,
    provider_keys,
    requirement_class,
)
from plasm_grpc.core.dht.routing import Contact, K
from plasm_grpc.core.dht.sim import JsonRecordCodec
from plasm_grpc.core.envelope import PEER_RECORD_DOMAIN, SignedEnvelope, sign
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import MIB, ResourceLimits

CODEC = JsonRecordCodec()
T0 = 1_700_000_000.0
CAPS = Capabilities(arch="x86_64", max_limits=ResourceLimits(max_memory_bytes=256 * MIB))
SMALL_CAPS = Capabilities(arch="x86_64", max_limits=ResourceLimits(max_memory_bytes=64 * MIB))
KEY_256 = class_key(requirement_class(WorkerRequirements(min_memory_bytes=256 * MIB)))
KEY_1G = class_key(requirement_class(WorkerRequirements(min_memory_bytes=1024 * MIB)))


def node_key(n: int) -> NodeKey:
    return NodeKey.from_seed(n.to_bytes(32, "big"))


def contact_of(key: NodeKey, n: int) -> Contact:
    return Contact(node_id=key.node_id, host=f"10.{n // 256 % 256}.{n % 256}.1", port=4000)


def record(
    key: NodeKey,
    *,
    seq: int = 1,
    now: float = T0,
    ttl: float = 3600.0,
    caps: Capabilities = CAPS,
    addresses: tuple[str, ...] = ("10.0.0.1:4000",),
) -> PeerRecord:
    content = RecordContent(
        addresses=addresses, capabilities=caps, seq=seq, created_at=now, expires_at=now + ttl
    )
    return make_record(key, content, CODEC)


class Harness:
    """A few DhtNodes and a synchronous link: a request is answered at once."""

    def __init__(self, count: int, settings: DhtSettings | None = None) -> None:
        self.settings = settings or DhtSettings(learn_peer_records=False)
        self.keys = [node_key(i + 1) for i in range(count)]
        self.nodes = [self.make(i) for i in range(count)]
        self.down: set[str] = set()
        self.events: dict[str, list[Event]] = {n.node_id: [] for n in self.nodes}

    def make(self, i: int) -> DhtNode:
        return DhtNode(
            contact_of(self.keys[i], i + 1),
            key=self.keys[i],
            codec=CODEC,
            randbytes=random.Random(i).randbytes,
            now=T0,
            settings=self.settings,
        )

    def by_id(self, node_id: str) -> DhtNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def pump(self, now: float) -> None:
        """Deliver every outgoing request until all is quiet."""
        for _ in range(10_000):
            busy = False
            for node in self.nodes:
                for out in node.requests_to_send():
                    busy = True
                    peer = self.by_id(out.contact.node_id)
                    if peer is None or peer.node_id in self.down:
                        node.handle_failure(out.rpc, now)
                    else:
                        response = peer.handle_request(
                            node.contact, out.request, now, client=out.client
                        )
                        node.handle_response(out.rpc, response, now)
            self.drain()
            if not busy:
                return
        raise AssertionError("the harness never went quiet")

    def drain(self) -> None:
        for node in self.nodes:
            while (event := node.next_event()) is not None:
                self.events[node.node_id].append(event)

    def rejections(self, node: DhtNode) -> list[RecordRejectReason]:
        self.drain()
        return [e.reason for e in self.events[node.node_id] if isinstance(e, RecordRejectedEvent)]

    def introduce(self, now: float = T0) -> None:
        """Every node pings every other and learns it from the pong."""
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    b.handle_request(a.contact, Ping(), now)
        self.pump(now)

    def finished(self, node: DhtNode, op: int) -> OperationFinished:
        self.drain()
        for event in self.events[node.node_id]:
            if isinstance(event, OperationFinished) and event.operation == op:
                return event
        raise AssertionError(f"operation {op} did not finish")


def ask(node: DhtNode, sender: Contact, request: Request, now: float = T0) -> Response:
    return node.handle_request(sender, request, now)


# -- records: every check of open_record, through the node ------------------------------


def test_put_record_is_stored_and_served() -> None:
    h = Harness(2)
    a, b = h.nodes
    rec = record(h.keys[0])
    assert ask(b, a.contact, PutRecord(record=rec.envelope)) == StoreReply(stored=True)
    assert b.stored_records() == 1
    reply = ask(b, h.nodes[1].contact, GetRecord(key=Key.from_hex(a.node_id)))
    assert isinstance(reply, RecordReply)
    assert reply.record == rec.envelope
    h.drain()
    assert any(isinstance(e, RecordStored) and not e.provider for e in h.events[b.node_id])


def forged(key: NodeKey) -> SignedEnvelope:
    envelope = record(key).envelope
    bad = bytes([envelope.signature[0] ^ 1]) + envelope.signature[1:]
    return replace(envelope, signature=bad)


def oversized(key: NodeKey) -> SignedEnvelope:
    return sign(key, PEER_RECORD_DOMAIN, b"{" + b" " * MAX_RECORD_BYTES + b"}")


def expired(key: NodeKey) -> SignedEnvelope:
    return record(key, now=T0 - 7200.0, ttl=3600.0).envelope


def too_long_lived(key: NodeKey) -> SignedEnvelope:
    return record(key, ttl=MAX_RECORD_TTL + CLOCK_SKEW + 60).envelope


def created_in_the_future(key: NodeKey) -> SignedEnvelope:
    """A creation time far ahead must not buy a record a longer life."""
    return record(key, now=T0 + 10 * MAX_RECORD_TTL, ttl=3600.0).envelope


def edited(key: NodeKey, old: bytes, new: bytes) -> SignedEnvelope:
    """A validly signed payload with `old` replaced by `new` in its JSON."""
    payload = CODEC.encode(record(key).content)
    assert old in payload
    return sign(key, PEER_RECORD_DOMAIN, payload.replace(old, new))


def not_a_record(key: NodeKey) -> SignedEnvelope:
    return sign(key, PEER_RECORD_DOMAIN, b'{"not": "a record"}')


def too_many_addresses(key: NodeKey) -> SignedEnvelope:
    many = b",".join([b'"h:1"'] * (MAX_ADDRESSES + 1))
    return edited(key, b'"addresses": ["10.0.0.1:4000"]', b'"addresses": [' + many + b"]")


def text_too_long(key: NodeKey) -> SignedEnvelope:
    return edited(key, b'"arch": "x86_64"', b'"arch": "' + b"x" * (MAX_TEXT_CHARS + 1) + b'"')


def nan_expiry(key: NodeKey) -> SignedEnvelope:
    return edited(key, b'"expires_at": ', b'"expires_at": NaN, "": ')


BAD_RECORDS: list[tuple[Callable[[NodeKey], SignedEnvelope], RecordRejectReason]] = [
    (forged, RecordRejectReason.FORGED),
    (oversized, RecordRejectReason.OVERSIZED),
    (expired, RecordRejectReason.EXPIRED),
    (too_long_lived, RecordRejectReason.TOO_LONG_LIVED),
    (created_in_the_future, RecordRejectReason.TOO_LONG_LIVED),
    (not_a_record, RecordRejectReason.MALFORMED),
    (too_many_addresses, RecordRejectReason.MALFORMED),
    (text_too_long, RecordRejectReason.MALFORMED),
    (nan_expiry, RecordRejectReason.MALFORMED),
]


def stored(reply: Response) -> bool:
    assert isinstance(reply, StoreReply)
    return reply.stored


@pytest.mark.parametrize(("make", "reason"), BAD_RECORDS, ids=[m.__name__ for m, _ in BAD_RECORDS])
def test_bad_records_are_rejected_with_reason_and_not_stored(
    make: Callable[[NodeKey], SignedEnvelope], reason: RecordRejectReason
) -> None:
    h = Harness(2)
    a, b = h.nodes
    envelope = make(h.keys[0])
    reply = ask(b, a.contact, PutRecord(record=envelope))
    assert isinstance(reply, StoreReply)
    assert not reply.stored
    assert reply.reason.startswith(reason.value)
    assert h.rejections(b) == [reason]
    assert b.stored_records() == 0
    assert not stored(ask(b, a.contact, AddProvider(key=KEY_256, record=envelope)))
    assert h.rejections(b) == [reason, reason]
    assert b.stored_providers() == 0
    reply = ask(b, a.contact, GetRecord(key=Key.from_hex(a.node_id)))
    assert isinstance(reply, RecordReply)
    assert reply.record is None


def test_newest_seq_wins_and_stale_or_conflicting_are_rejected() -> None:
    h = Harness(2)
    a, b = h.nodes
    key = Key.from_hex(a.node_id)
    v5, v6 = record(h.keys[0], seq=5), record(h.keys[0], seq=6)
    twin = record(h.keys[0], seq=6, addresses=("10.9.9.9:4000",))
    assert ask(b, a.contact, PutRecord(record=v5.envelope)) == StoreReply(stored=True)
    assert ask(b, a.contact, PutRecord(record=v6.envelope)) == StoreReply(stored=True)
    # The same record again is a republish, acknowledged and not an error.
    assert ask(b, a.contact, PutRecord(record=v6.envelope)) == StoreReply(stored=True)
    stale = ask(b, a.contact, PutRecord(record=v5.envelope))
    conflict = ask(b, a.contact, PutRecord(record=twin.envelope))
    assert isinstance(stale, StoreReply)
    assert not stale.stored
    assert isinstance(conflict, StoreReply)
    assert not conflict.stored
    assert h.rejections(b) == [RecordRejectReason.STALE, RecordRejectReason.CONFLICT]
    reply = ask(b, a.contact, GetRecord(key=key))
    assert isinstance(reply, RecordReply)
    assert reply.record == v6.envelope
    # The same for provider entries.
    assert stored(ask(b, a.contact, AddProvider(key=KEY_256, record=v6.envelope)))
    assert not stored(ask(b, a.contact, AddProvider(key=KEY_256, record=v5.envelope)))
    assert not stored(ask(b, a.contact, AddProvider(key=KEY_256, record=twin.envelope)))
    assert h.rejections(b)[-2:] == [RecordRejectReason.STALE, RecordRejectReason.CONFLICT]
    assert b.stored_providers() == 1


def test_spoofed_put_and_add_provider_are_rejected() -> None:
    """A record can only be stored by the node it describes (the authenticated sender)."""
    h = Harness(3)
    a, b, c = h.nodes
    of_c = record(h.keys[2])
    put = ask(b, a.contact, PutRecord(record=of_c.envelope))
    add = ask(b, a.contact, AddProvider(key=KEY_256, record=of_c.envelope))
    assert not stored(put)
    assert not stored(add)
    assert h.rejections(b) == [RecordRejectReason.SPOOFED] * 2
    assert (b.stored_records(), b.stored_providers()) == (0, 0)
    assert c.node_id not in {e.node_id for e in h.events[b.node_id] if isinstance(e, RecordStored)}


def test_get_record_reply_for_another_node_is_rejected() -> None:
    h = Harness(3)
    a, _, c = h.nodes
    h.introduce()
    op = a.get_record(c.node_id, T0)
    out = a.requests_to_send()
    assert out
    assert all(isinstance(o.request, GetRecord) for o in out)
    wrong = record(h.keys[1])  # b's record, as an answer for c
    for o in out:
        a.handle_response(o.rpc, RecordReply(record=wrong.envelope, closer=()), T0)
    assert h.rejections(a) == [RecordRejectReason.SPOOFED] * len(out)
    result = h.finished(a, op)
    assert result.record is None
    assert not result.found


def test_not_a_provider_is_rejected_when_stored_and_when_returned() -> None:
    h = Harness(2)
    a, b = h.nodes
    small = record(h.keys[0], caps=SMALL_CAPS)  # 64 MiB cannot provide the 1 GiB class
    reply = ask(b, a.contact, AddProvider(key=KEY_1G, record=small.envelope))
    assert isinstance(reply, StoreReply)
    assert not reply.stored
    assert h.rejections(b) == [RecordRejectReason.NOT_A_PROVIDER]
    assert b.stored_providers() == 0
    # And a provider reply carrying it is filtered out by the asker.
    h.introduce()
    op = b.get_providers(KEY_1G, T0)
    for out in b.requests_to_send():
        b.handle_response(out.rpc, ProvidersReply(providers=(small.envelope,), closer=()), T0)
    assert h.rejections(b)[-1] == RecordRejectReason.NOT_A_PROVIDER
    assert h.finished(b, op).providers == ()


def test_malformed_envelopes_in_replies_are_rejected_not_raised() -> None:
    h = Harness(2)
    a, b = h.nodes
    h.introduce()
    short = replace(record(h.keys[0]).envelope, signer_public_key=b"\x01" * 31)
    op = b.get_providers(KEY_256, T0)
    get = b.get_record(a.node_id, T0)
    for out in b.requests_to_send():
        reply: Response = (
            ProvidersReply(providers=(short, short), closer=())
            if isinstance(out.request, GetProviders)
            else RecordReply(record=short, closer=())
        )
        b.handle_response(out.rpc, reply, T0)
    assert h.rejections(b) == [RecordRejectReason.MALFORMED] * 3
    assert h.finished(b, op).providers == ()
    assert h.finished(b, get).record is None


def test_provider_entries_are_stored_and_found() -> None:
    h = Harness(4)
    h.introduce()
    publisher, asker = h.nodes[0], h.nodes[3]
    publisher.advertise(["10.0.0.1:4000"], CAPS, T0)
    h.pump(T0)
    assert sum(n.stored_providers() for n in h.nodes[1:]) >= 3
    op = asker.get_providers(KEY_256, T0 + 1)
    h.pump(T0 + 1)
    result = h.finished(asker, op)
    assert [r.node_id for r in result.providers] == [publisher.node_id]
    assert KEY_256 in provider_keys(result.providers[0].capabilities)


# -- store caps ------------------------------------------------------------------------


def test_max_records_is_enforced() -> None:
    h = Harness(4, DhtSettings(learn_peer_records=False, max_records=2))
    holder = h.nodes[3]
    for i in range(3):
        sender = h.nodes[i]
        reply = ask(holder, sender.contact, PutRecord(record=record(h.keys[i]).envelope))
        assert isinstance(reply, StoreReply)
        assert reply.stored == (i < 2)
    assert h.rejections(holder) == [RecordRejectReason.STORE_FULL]
    assert holder.stored_records() == 2
    # A node already held may still replace its own record.
    newer = record(h.keys[0], seq=2)
    assert stored(ask(holder, h.nodes[0].contact, PutRecord(record=newer.envelope)))


def test_a_full_provider_key_drops_a_random_entry_not_the_shortest_lived() -> None:
    h = Harness(6, DhtSettings(learn_peer_records=False, max_providers_per_key=3))
    holder = h.nodes[5]
    ttls = (1000.0, 2000.0, 3000.0, 500.0, 400.0)
    for i, ttl in enumerate(ttls):
        rec = record(h.keys[i], ttl=ttl)
        assert stored(
            ask(holder, h.nodes[i].contact, AddProvider(key=KEY_256, record=rec.envelope))
        )
        assert holder.stored_providers() == min(i + 1, 3)
    # The newest always gets in; which older one left is random, so a
    # sybil's 24-hour records cannot push out honest 2-hour ones for sure.
    reply = ask(holder, h.nodes[0].contact, GetProviders(key=KEY_256))
    assert isinstance(reply, ProvidersReply)
    held = {e.signer_node_id for e in reply.providers}
    assert len(held) == 3
    assert h.keys[4].node_id in held


def test_a_sender_holds_one_provider_entry_per_tier_whatever_it_re_signs() -> None:
    h = Harness(2)
    a, b = h.nodes
    caps = Capabilities(max_limits=ResourceLimits(max_memory_bytes=4096 * MIB))
    for version, seq in (("preview1", 1), ("preview2", 2), ("preview3", 3)):
        rec = record(h.keys[0], caps=dataclasses.replace(caps, wasi_version=version), seq=seq)
        for key in provider_keys(rec.capabilities):
            assert stored(ask(b, a.contact, AddProvider(key=key, record=rec.envelope)))
    # Only the newest record's classes stay: 4 tiers up to 4 GiB, not 12.
    assert b.stored_providers() == len(provider_keys(caps))


def test_re_signing_in_a_loop_does_not_grow_the_expiry_heap() -> None:
    h = Harness(2, DhtSettings(learn_peer_records=False, burst=10_000))
    a, b = h.nodes
    for seq in range(1, 2001):
        rec = record(h.keys[0], seq=seq)
        assert stored(ask(b, a.contact, PutRecord(record=rec.envelope)))
    assert b.stored_records() == 1
    assert len(b._expiries) <= 2 * 1 + 64 + 1


def test_max_provider_entries_is_enforced() -> None:
    h = Harness(2, DhtSettings(learn_peer_records=False, max_provider_entries=2))
    a, b = h.nodes
    rec = record(
        h.keys[0], caps=Capabilities(max_limits=ResourceLimits(max_memory_bytes=4096 * MIB))
    )
    keys = provider_keys(rec.capabilities)
    assert len(keys) >= 3
    replies = [ask(b, a.contact, AddProvider(key=k, record=rec.envelope)) for k in keys[:3]]
    assert [stored(r) for r in replies] == [True, True, False]
    assert h.rejections(b) == [RecordRejectReason.STORE_FULL]
    assert b.stored_providers() == 2


def test_a_store_that_every_holder_refuses_finishes() -> None:
    """Refused stores end the operation (they were once sent again forever)."""
    h = Harness(3, DhtSettings(learn_peer_records=False, max_records=1))
    h.introduce()
    a, b, c = h.nodes
    assert stored(ask(b, c.contact, PutRecord(record=record(h.keys[2]).envelope)))
    assert stored(ask(c, b.contact, PutRecord(record=record(h.keys[1]).envelope)))
    ops = a.advertise(["10.0.0.1:4000"], CAPS, T0)
    h.pump(T0)
    put = h.finished(a, ops[0])
    assert put.kind is OperationKind.PUT_RECORD
    assert put.stored == 0
    assert not put.found
    assert all(h.finished(a, op).stored == 2 for op in ops[1:])  # provider entries fit
    assert a.operations_running() == 0


# -- timers ----------------------------------------------------------------------------


def test_records_and_providers_expire_through_handle_timer() -> None:
    h = Harness(2)
    a, b = h.nodes
    rec = record(h.keys[0], ttl=100.0)
    ask(b, a.contact, PutRecord(record=rec.envelope))
    ask(b, a.contact, AddProvider(key=KEY_256, record=rec.envelope))
    assert (b.stored_records(), b.stored_providers()) == (1, 1)
    b.handle_timer(T0 + 50.0)  # before maintenance is due: nothing happens
    assert b.get_timer() == T0 + b.settings.maintenance_interval
    b.handle_timer(b.get_timer())
    assert (b.stored_records(), b.stored_providers()) == (1, 1)
    later = T0 + 100.0 + b.settings.maintenance_interval
    b.handle_timer(later)
    assert (b.stored_records(), b.stored_providers()) == (0, 0)
    reply = ask(b, a.contact, GetRecord(key=Key.from_hex(a.node_id)), later)
    assert isinstance(reply, RecordReply)
    assert reply.record is None


def test_republish_re_signs_with_a_higher_seq() -> None:
    h = Harness(3)
    h.introduce()
    a = h.nodes[0]
    a.advertise(["10.0.0.1:4000"], CAPS, T0)
    h.pump(T0)
    first = a.own_record
    assert first is not None
    now = T0 + a.settings.republish_interval
    while a.get_timer() < now:
        a.handle_timer(a.get_timer())
    a.handle_timer(max(now, a.get_timer()))
    second = a.own_record
    assert second is not None
    assert second.seq > first.seq
    assert second.content.expires_at > first.content.expires_at
    h.pump(now)
    for holder in h.nodes[1:]:
        reply = ask(holder, h.nodes[2].contact, GetRecord(key=Key.from_hex(a.node_id)), now)
        assert isinstance(reply, RecordReply)
        assert reply.record == second.envelope


def test_updated_capabilities_go_out_with_the_next_republish_not_before() -> None:
    h = Harness(2)
    h.introduce()
    a = h.nodes[0]
    a.advertise(["10.0.0.1:4000"], CAPS, T0)
    h.pump(T0)
    first = a.own_record
    assert first is not None
    busy = dataclasses.replace(CAPS, free_job_slots=0)
    a.update_capabilities(busy)
    assert a.own_record == first  # nothing re-signed yet
    assert a.requests_to_send() == []
    now = T0 + a.settings.republish_interval
    while a.get_timer() < now:
        a.handle_timer(a.get_timer())
    a.handle_timer(max(now, a.get_timer()))
    second = a.own_record
    assert second is not None
    assert second.capabilities == busy
    assert second.content.addresses == first.content.addresses


# -- rate limiting ---------------------------------------------------------------------


def test_a_flood_from_one_peer_is_refused_and_others_are_still_answered() -> None:
    h = Harness(3, DhtSettings(learn_peer_records=False, rate=1.0, burst=5))
    flooder, polite, target = h.nodes
    replies = [ask(target, flooder.contact, FindNode(target=Key(1))) for _ in range(50)]
    answered = [r for r in replies if isinstance(r, Nodes)]
    refused = [r for r in replies if isinstance(r, Refused)]
    assert len(answered) == 5
    assert len(refused) == 45
    assert refused[0] == Refused(reason="rate limited")
    h.drain()
    limited = [e for e in h.events[target.node_id] if isinstance(e, RateLimited)]
    assert limited
    assert limited[0].peer == flooder.node_id
    assert limited[0].refused == 1
    # Another peer, interleaved with the flood, gets every answer.
    for i in range(5):
        assert isinstance(ask(target, polite.contact, FindNode(target=Key(i))), Nodes)
        assert isinstance(ask(target, flooder.contact, Ping()), Refused)
    # Tokens come back at `rate` per second.
    assert isinstance(ask(target, flooder.contact, Ping(), T0 + 1.0), Pong)


def test_rate_limited_event_repeats_every_hundredth() -> None:
    h = Harness(2, DhtSettings(learn_peer_records=False, rate=0.001, burst=1))
    a, b = h.nodes
    for _ in range(201):
        ask(b, a.contact, Ping())
    h.drain()
    assert [e.refused for e in h.events[b.node_id] if isinstance(e, RateLimited)] == [1, 100, 200]


def test_rate_limiter_forgets_the_least_recently_active_peer_first() -> None:
    limiter = RateLimiter(rate=0.001, burst=1, max_peers=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.refused("a") == 1
    assert limiter.allow("c", 0.0)  # "b" is forgotten, not "a" (active more recently)
    assert len(limiter) == 2
    assert limiter.refused("a") == 1
    assert limiter.allow("b", 0.0)  # a forgotten peer starts again with a full bucket
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0.0, burst=1)


# -- the routing table through the node ------------------------------------------------


def test_unknown_requester_enters_the_table_only_after_answering_the_ping_back() -> None:
    h = Harness(2)
    a, b = h.nodes
    assert isinstance(ask(b, a.contact, FindNode(target=Key(5))), Nodes)
    assert a.node_id not in b.table
    out = b.requests_to_send()
    assert [(o.contact, o.request) for o in out] == [(a.contact, Ping())]
    # A second request meanwhile does not ping again.
    ask(b, a.contact, Ping())
    assert b.requests_to_send() == []
    b.handle_response(out[0].rpc, Pong(), T0 + 0.1)
    assert a.node_id in b.table
    h.drain()
    assert PeerAdded(contact=a.contact) in h.events[b.node_id]


def test_requester_that_does_not_answer_the_ping_back_stays_out() -> None:
    h = Harness(2)
    a, b = h.nodes
    ask(b, a.contact, Ping())
    (out,) = b.requests_to_send()
    b.handle_failure(out.rpc, T0 + 1.0)
    assert a.node_id not in b.table
    ask(b, a.contact, Ping(), T0 + 2.0)
    assert b.requests_to_send() == []  # backing off
    ask(b, a.contact, Ping(), T0 + 120.0)
    assert len(b.requests_to_send()) == 1  # tried again after the back-off


def test_ping_backs_in_flight_are_capped() -> None:
    h = Harness(1)
    (b,) = h.nodes
    strangers = [contact_of(node_key(1000 + i), 1000 + i) for i in range(80)]
    for s in strangers:
        ask(b, s, Ping())
    assert len(b.requests_to_send()) == 64


def bucket_mates(own: str, count: int, index: int = 255) -> list[Contact]:
    """Contacts that fall in bucket `index` of `own`, each in its own /24."""
    base = int(own, 16)
    return [
        Contact(
            node_id=f"{base ^ (1 << index) ^ (i + 1):064x}",
            host=f"10.{i // 256}.{i % 256}.7",
            port=4000,
        )
        for i in range(count)
    ]


def learn(node: DhtNode, contact: Contact, now: float) -> None:
    """`contact` sends a request and answers the ping-back."""
    ask(node, contact, Ping(), now)
    for out in node.requests_to_send():
        node.handle_response(out.rpc, Pong(), now)


def test_full_bucket_pings_the_oldest_and_a_dead_one_is_replaced_from_the_cache() -> None:
    node = Harness(1, DhtSettings(learn_peer_records=False, k=2)).nodes[0]
    first, second, third = bucket_mates(node.node_id, 3)
    learn(node, first, T0)
    learn(node, second, T0)
    assert node.table.bucket(255) == [first, second]
    # Within the grace period the oldest is not pinged and the newcomer is not
    # even pinged back: it could only wait in the replacement cache.
    ask(node, third, Ping(), T0 + 1.0)
    assert node.requests_to_send() == []
    later = T0 + node.settings.evict_ping_grace + 1.0
    ask(node, third, Ping(), later + 60.0)  # after the ping-back back-off
    (ping_back,) = node.requests_to_send()
    node.handle_response(ping_back.rpc, Pong(), later + 60.0)
    assert node.table.replacements(255) == [third]
    (evict_check,) = node.requests_to_send()
    assert evict_check.contact == first
    assert evict_check.request == Ping()
    node.handle_failure(evict_check.rpc, later + 61.0)
    assert node.table.bucket(255) == [second, third]
    events = []
    while (e := node.next_event()) is not None:
        events.append(e)
    assert PeerEvicted(contact=first, reason="did not answer a ping") in events
    assert PeerAdded(contact=third) in events


def test_full_bucket_keeps_the_oldest_when_it_answers() -> None:
    node = Harness(1, DhtSettings(learn_peer_records=False, k=2, evict_ping_grace=0.0)).nodes[0]
    first, second, third = bucket_mates(node.node_id, 3)
    learn(node, first, T0)
    learn(node, second, T0)
    ask(node, third, Ping(), T0 + 1.0)
    (ping_back,) = node.requests_to_send()
    node.handle_response(ping_back.rpc, Pong(), T0 + 1.0)
    (evict_check,) = node.requests_to_send()
    node.handle_response(evict_check.rpc, Pong(), T0 + 2.0)
    assert node.table.bucket(255) == [second, first]
    assert node.table.replacements(255) == [third]


def test_a_contact_that_fails_max_failures_rpcs_in_a_row_is_dropped() -> None:
    h = Harness(3)
    h.introduce()
    a, b, c = h.nodes
    h.down.add(c.node_id)
    for i in range(a.settings.max_failures):
        assert c.node_id in a.table  # flagged, kept: its bucket has no replacement
        op = a.find_node(Key(7), T0 + 1 + i)
        h.pump(T0 + 1 + i)
        result = h.finished(a, op)
        assert [x.node_id for x in result.closest] == [b.node_id]
        assert result.failed_rpcs == 1
    assert c.node_id not in a.table
    assert b.node_id in a.table
    h.drain()
    assert [e.contact for e in h.events[a.node_id] if isinstance(e, PeerEvicted)] == [c.contact]


def test_an_answer_clears_the_failure_count() -> None:
    node = Harness(1).nodes[0]
    (mate,) = bucket_mates(node.node_id, 1)
    learn(node, mate, T0)
    for i in range(2 * node.settings.max_failures):
        assert node.table.failed(mate.node_id, node.settings.max_failures) == (False, None)
        if i % 2:
            node.table.observe(mate, T0 + i)
    assert mate.node_id in node.table


def test_a_failed_contact_is_replaced_at_once_when_a_replacement_waits() -> None:
    node = Harness(1, DhtSettings(learn_peer_records=False, k=2, evict_ping_grace=1e9)).nodes[0]
    first, second, third = bucket_mates(node.node_id, 3)
    learn(node, first, T0)
    learn(node, second, T0)
    node.table.observe(third, T0)  # it answered something: it waits in the cache
    assert node.table.replacements(255) == [third]
    assert node.table.failed(first.node_id, node.settings.max_failures) == (True, third)
    assert node.table.bucket(255) == [second, third]


def test_replies_are_cut_to_max_contacts() -> None:
    h = Harness(2)
    a, b = h.nodes
    h.introduce()
    op = a.find_node(Key(9), T0)
    (out,) = a.requests_to_send()
    many = tuple(contact_of(node_key(500 + i), 500 + i) for i in range(3 * MAX_CONTACTS))
    a.handle_response(out.rpc, Nodes(closer=many), T0)
    sent = a.requests_to_send()
    assert {o.contact for o in sent} <= set(many[:MAX_CONTACTS])
    for o in sent:
        a.handle_failure(o.rpc, T0 + 1)
    while sent := a.requests_to_send():
        for o in sent:
            assert o.contact in many[:MAX_CONTACTS]
            a.handle_failure(o.rpc, T0 + 1)
    assert h.finished(a, op).closest == (b.contact,)


def test_join_refreshes_far_buckets_and_fills_the_table() -> None:
    h = Harness(12)
    first = h.nodes[0]
    for node in h.nodes[1:]:
        node.bootstrap([first.contact], T0)
        h.pump(T0)
    assert all(len(n.table) == len(h.nodes) - 1 for n in h.nodes)
    kinds = {e.kind for e in h.events[h.nodes[-1].node_id] if isinstance(e, OperationFinished)}
    assert {OperationKind.BOOTSTRAP, OperationKind.REFRESH} <= kinds


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="republish_interval"):
        DhtSettings(record_ttl=10.0, republish_interval=20.0)
    with pytest.raises(ValueError, match="positive"):
        DhtSettings(max_records=0)
    assert DhtSettings().k == K


# -- open_record never raises anything but RecordRejectedError --------------------------


SIGNER = node_key(77)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=MAX_RECORD_BYTES + 16),
    signature=st.binary(min_size=0, max_size=70),
    public_key=st.binary(min_size=0, max_size=40),
    resign=st.booleans(),
    sender=st.sampled_from([None, SIGNER.node_id, "ab" * 32]),
)
def test_open_record_raises_only_record_rejected(
    payload: bytes, signature: bytes, public_key: bytes, resign: bool, sender: str | None
) -> None:
    envelope = (
        sign(SIGNER, PEER_RECORD_DOMAIN, payload)
        if resign
        else SignedEnvelope(payload=payload, signature=signature, signer_public_key=public_key)
    )
    with contextlib.suppress(RecordRejectedError):
        open_record(envelope, codec=CODEC, now=T0, sender=sender)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted(CODEC.encode(record(SIGNER).content).decode().split('"')[1::2])),
    value=_json_values,
)
def test_signed_records_with_odd_field_values_raise_only_record_rejected(
    field: str, value: object
) -> None:
    raw = json.loads(CODEC.encode(record(SIGNER).content))
    for holder in (raw, raw["capabilities"], raw["capabilities"]["max_limits"]):
        if field in holder:
            holder[field] = value
    envelope = sign(SIGNER, PEER_RECORD_DOMAIN, json.dumps(raw).encode())
    try:
        opened = open_record(envelope, codec=CODEC, now=T0)
    except RecordRejectedError:
        return
    # Whatever passed is usable: times are finite, texts are strings.
    assert opened.content.expires_at > T0
    assert all(isinstance(a, str) for a in opened.content.addresses)
    provider_keys(opened.capabilities)


# -- addresses -------------------------------------------------------------------------


def test_the_table_records_where_a_node_answered_not_where_a_referrer_said_it_was() -> None:
    h = Harness(2)
    h.introduce()
    a, b = h.nodes
    real = (b.contact.host, b.contact.port)
    # Someone named B at a made-up address; the transport reached B anyway
    # (an open connection to its node id) and reports where it answered from.
    fake = Contact(node_id=b.node_id, host="192.0.2.9", port=9)
    a.table.remove(b.node_id)
    a.bootstrap([fake], T0)
    (out,) = [o for o in a.requests_to_send() if o.contact == fake]
    a.handle_response(out.rpc, b.handle_request(a.contact, out.request, T0), T0, answered_from=real)
    (known,) = [c for c in a.table.contacts() if c.node_id == b.node_id]
    assert (known.host, known.port) == real


def test_admit_charges_the_bucket_before_decoding() -> None:
    h = Harness(2, DhtSettings(learn_peer_records=False, rate=1.0, burst=3))
    a, b = h.nodes
    assert [a.admit(b.node_id, T0) for _ in range(5)] == [True, True, True, False, False]
    assert isinstance(a.handle_request(b.contact, Ping(), T0), Refused)
    assert isinstance(a.handle_request(b.contact, Ping(), T0, admitted=True), Pong)


def test_referrals_that_would_aim_our_packets_elsewhere_are_not_dialled() -> None:
    h = Harness(2)
    h.introduce()
    a, b = h.nodes
    referrer = Contact(node_id=b.node_id, host="8.8.4.4", port=4000)
    a.table.remove(b.node_id)
    a.bootstrap([referrer], T0)
    (out,) = [o for o in a.requests_to_send() if o.contact == referrer]

    def fake(n: int, host: str) -> Contact:
        return Contact(node_id=f"{n:064x}", host=host, port=4000)

    named = (
        fake(1, "127.0.0.53"),  # a service on our own machine
        fake(2, "10.1.2.3"),  # someone's private network
        fake(3, "0.0.0.0"),
        fake(4, "224.0.0.1"),  # multicast
        fake(5, "255.255.255.255"),  # broadcast
        fake(6, "1.1.1.1"),  # global: fine, but at most MAX_PER_IP per address
        fake(7, "1.1.1.1"),
        fake(8, "1.1.1.1"),
        fake(9, "9.9.9.9"),
    )
    a.handle_response(out.rpc, Nodes(closer=named), T0, answered_from=("8.8.4.4", 4000))
    dialled = {o.contact.node_id for o in a.requests_to_send()}
    assert dialled <= {f"{n:064x}" for n in (6, 7, 8, 9)}
    assert f"{9:064x}" in dialled
    assert len(dialled & {f"{n:064x}" for n in (6, 7, 8)}) <= 2


# -- client mode (issue 8: unreachable nodes query but are not in others' tables) -------


def test_a_client_is_answered_but_never_enters_the_table_nor_referrals() -> None:
    h = Harness(3)
    a, b, c = h.nodes
    assert b.set_client_mode(True)
    assert not b.set_client_mode(True)  # no change
    assert b.client_mode
    ask(a, c.contact, Ping())  # c is a full node: a pings it back
    h.pump(T0)
    assert c.node_id in a.table
    op = b.bootstrap([a.contact], T0)
    outgoing = b.requests_to_send()
    assert outgoing
    assert all(out.client for out in outgoing)
    for out in outgoing:
        reply = a.handle_request(b.contact, out.request, T0, client=True)
        b.handle_response(out.rpc, reply, T0)
    h.pump(T0)
    # b learnt the full nodes and its lookup finished; nobody learnt b.
    assert h.finished(b, op).found
    assert {a.node_id, c.node_id} <= {x.node_id for x in b.table.contacts()}
    assert b.node_id not in a.table
    assert b.node_id not in c.table
    nodes = ask(c, a.contact, FindNode(target=Key.from_hex(b.node_id)))
    assert isinstance(nodes, Nodes)
    assert b.node_id not in {x.node_id for x in nodes.closer}


def test_a_node_turning_client_leaves_the_tables_of_its_contacts() -> None:
    h = Harness(3)
    h.introduce()
    a, b, c = h.nodes
    assert b.node_id in a.table
    assert b.node_id in c.table
    b.set_client_mode(True)
    h.pump(T0 + 1)
    assert b.node_id not in a.table
    assert b.node_id not in c.table
    evicted = [e for e in h.events[a.node_id] if isinstance(e, PeerEvicted)]
    assert [(e.contact.node_id, e.reason) for e in evicted] == [(b.node_id, "client mode")]
    # Back to a full node: the next request's ping-back puts it in again.
    b.set_client_mode(False)
    b.find_node(Key.from_hex(a.node_id), T0 + 100)
    h.pump(T0 + 100)
    assert b.node_id in a.table


def test_a_client_stores_its_own_record_on_full_nodes_but_stores_nothing_for_others() -> None:
    h = Harness(3)
    h.introduce()
    a, b, _c = h.nodes
    b.set_client_mode(True)
    h.pump(T0)
    ops = b.advertise(["10.0.0.2:4000"], CAPS, T0)
    h.pump(T0)
    put = h.finished(b, ops[0])
    assert put.stored == 2  # a and c
    assert a.peer_record(b.node_id) is not None
    reply = ask(b, a.contact, PutRecord(record=record(h.keys[0]).envelope))
    assert isinstance(reply, StoreReply)
    assert not reply.stored
    assert "client mode" in reply.reason
    reply = ask(b, a.contact, AddProvider(key=KEY_256, record=record(h.keys[0]).envelope))
    assert isinstance(reply, StoreReply)
    assert not reply.stored
    assert b.stored_records() == 0
    assert b.stored_providers() == 0
