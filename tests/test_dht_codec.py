"""protobuf <-> core conversion of the DHT (plasm_grpc.net.dht_codec).

Round trips: `decode(encode(m)) == m` for every request and response, peer
record payloads and the routing table snapshot. Robustness: any bytes given to
any decoder raise `DhtCodecError` or decode; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from plasm.v1 import dht_pb2, envelope_pb2

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.messages import (
    MAX_CONTACTS,
    METHODS,
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
from plasm_grpc.core.dht.records import (
    MEMORY_TIERS,
    Capabilities,
    RecordContent,
    RecordError,
    make_record,
    open_record,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.net.dht_codec import (
    MAX_ENVELOPE_PAYLOAD_BYTES,
    DhtCodecError,
    ProtobufRecordCodec,
    decode_request,
    decode_response,
    decode_snapshot,
    encode_request,
    encode_response,
    encode_snapshot,
    method_of,
)

CODEC = ProtobufRecordCodec()
NOW = 1_800_000_000.0

keys = st.binary(min_size=32, max_size=32).map(Key.from_bytes)
node_ids = st.binary(min_size=32, max_size=32).map(bytes.hex)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.binary(min_size=16, max_size=16).map(
    lambda b: ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))
)
contacts = st.builds(
    Contact, node_id=node_ids, host=st.one_of(ipv4, ipv6), port=st.integers(1, 65535)
)
envelopes = st.builds(
    SignedEnvelope,
    payload=st.binary(max_size=300),
    signature=st.binary(max_size=64),
    signer_public_key=st.binary(max_size=32),
)
closer = st.lists(contacts, max_size=MAX_CONTACTS).map(tuple)
texts = st.text(max_size=64)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
limits = st.builds(
    ResourceLimits,
    max_memory_bytes=u64,
    max_fuel=u64,
    timeout_ms=u32,
    max_stdout_bytes=u64,
    max_stderr_bytes=u64,
)
capabilities = st.builds(
    Capabilities,
    arch=texts,
    os=texts,
    cores=u32,
    memory_bytes=u64,
    runtime_name=texts,
    runtime_version=texts,
    wasi_version=texts,
    max_limits=limits,
    free_job_slots=u32,
    total_job_slots=u32,
)
# Whole milliseconds survive the float -> nanosecond Timestamp -> float trip exactly.
times = st.integers(0, 4_000_000_000_000).map(lambda ms: ms / 1000)
contents = st.builds(
    RecordContent,
    addresses=st.lists(st.text(min_size=1, max_size=40), max_size=8).map(tuple),
    capabilities=capabilities,
    seq=u64,
    created_at=times,
    expires_at=times,
)
requests: st.SearchStrategy[Request] = st.one_of(
    st.just(Ping()),
    st.builds(FindNode, target=keys),
    st.builds(GetRecord, key=keys),
    st.builds(PutRecord, record=envelopes),
    st.builds(AddProvider, key=keys, record=envelopes),
    st.builds(GetProviders, key=keys),
)


def _responses_for(request: Request) -> st.SearchStrategy[Response]:
    match request:
        case Ping():
            return st.builds(Pong, record=st.none() | envelopes)
        case FindNode():
            return st.builds(Nodes, closer=closer)
        case GetRecord():
            return st.builds(RecordReply, record=st.none() | envelopes, closer=closer)
        case PutRecord() | AddProvider():
            return st.builds(StoreReply, stored=st.booleans(), reason=st.text(max_size=40))
        case GetProviders():
            return st.builds(
                ProvidersReply, providers=st.lists(envelopes, max_size=20).map(tuple), closer=closer
            )
    raise AssertionError(request)


@given(requests)
def test_request_round_trip(request: Request) -> None:
    assert decode_request(method_of(request), encode_request(request)) == request


@given(requests.flatmap(lambda r: st.tuples(st.just(r), _responses_for(r))))
def test_response_round_trip(pair: tuple[Request, Response]) -> None:
    request, response = pair
    assert decode_response(request, encode_response(response)) == response


@given(contents)
def test_record_content_round_trip(content: RecordContent) -> None:
    assert CODEC.decode(CODEC.encode(content)) == content


def test_record_times_round_trip_to_the_nanosecond() -> None:
    content = RecordContent(
        addresses=("127.0.0.1:7946",),
        capabilities=Capabilities(),
        seq=1,
        created_at=NOW + 0.123456789,
        expires_at=NOW + 3600.5,
    )
    back = CODEC.decode(CODEC.encode(content))
    assert back.created_at == pytest.approx(content.created_at, abs=1e-6)
    assert back.expires_at == content.expires_at


def test_signed_record_opens_with_the_protobuf_codec() -> None:
    key = NodeKey.from_seed(hashlib.sha256(b"dht codec test").digest())
    content = RecordContent(
        addresses=("127.0.0.1:7946",),
        capabilities=Capabilities(
            arch="x86_64",
            max_limits=ResourceLimits(max_memory_bytes=MEMORY_TIERS[2]),
            free_job_slots=3,
        ),
        seq=7,
        created_at=NOW,
        expires_at=NOW + 3600,
    )
    record = make_record(key, content, CODEC)
    wire = encode_request(PutRecord(record=record.envelope))
    request = decode_request(METHODS[PutRecord], wire)
    assert isinstance(request, PutRecord)
    opened = open_record(request.record, codec=CODEC, now=NOW + 1, sender=key.node_id)
    assert opened.content == content
    assert opened.node_id == key.node_id


@given(st.sampled_from(sorted(METHODS.values())), st.binary(max_size=400))
def test_decode_request_of_random_bytes_raises_only_the_codec_error(
    method: str, data: bytes
) -> None:
    with contextlib.suppress(DhtCodecError):
        decode_request(method, data)


@given(requests, st.binary(max_size=400))
def test_decode_response_of_random_bytes_raises_only_the_codec_error(
    request: Request, data: bytes
) -> None:
    with contextlib.suppress(DhtCodecError):
        decode_response(request, data)


@given(st.binary(max_size=400))
def test_decode_record_of_random_bytes_raises_only_the_record_error(data: bytes) -> None:
    assert issubclass(DhtCodecError, RecordError)  # the RecordCodec contract
    with contextlib.suppress(DhtCodecError):
        CODEC.decode(data)


@given(st.binary(max_size=400))
def test_decode_snapshot_of_random_bytes_raises_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(DhtCodecError):
        decode_snapshot(data)


def test_unknown_method_is_a_codec_error() -> None:
    with pytest.raises(DhtCodecError, match="not a DHT method"):
        decode_request("plasm.v1.Dht/Nope", b"")


@pytest.mark.parametrize("length", [0, 31, 33])
def test_keys_must_be_32_bytes(length: int) -> None:
    payload = dht_pb2.DhtFindNodeRequest(target=b"\x01" * length).SerializeToString()
    with pytest.raises(DhtCodecError, match="32 bytes"):
        decode_request(METHODS[FindNode], payload)


def test_store_requests_need_a_record() -> None:
    with pytest.raises(DhtCodecError, match="record is required"):
        decode_request(METHODS[PutRecord], b"")
    payload = dht_pb2.DhtAddProviderRequest(key=b"\x01" * 32).SerializeToString()
    with pytest.raises(DhtCodecError, match="record is required"):
        decode_request(METHODS[AddProvider], payload)


@pytest.mark.parametrize(
    ("contact", "match"),
    [
        (dht_pb2.DhtContact(node_id=b"\x02" * 31, host="10.0.0.1", port=1), "node_id"),
        (dht_pb2.DhtContact(node_id=b"\x02" * 32, host="10.0.0.1", port=0), "port"),
        (dht_pb2.DhtContact(node_id=b"\x02" * 32, host="10.0.0.1", port=70000), "port"),
        (dht_pb2.DhtContact(node_id=b"\x02" * 32, host="evil.example", port=1), "IP address"),
        (dht_pb2.DhtContact(node_id=b"\x02" * 32, host="", port=1), "IP address"),
    ],
)
def test_bad_contacts_make_the_reply_malformed(contact: dht_pb2.DhtContact, match: str) -> None:
    payload = dht_pb2.DhtFindNodeResponse(closer=[contact]).SerializeToString()
    with pytest.raises(DhtCodecError, match=match):
        decode_response(FindNode(target=Key(1)), payload)


def test_replies_over_the_caps_are_malformed() -> None:
    many = [
        dht_pb2.DhtContact(node_id=bytes([i]) * 32, host="10.0.0.1", port=1)
        for i in range(MAX_CONTACTS + 1)
    ]
    payload = dht_pb2.DhtFindNodeResponse(closer=many).SerializeToString()
    with pytest.raises(DhtCodecError, match="at most 20 contacts"):
        decode_response(FindNode(target=Key(1)), payload)
    envelope = envelope_pb2.SignedEnvelope(payload=b"x", signature=b"s", signer_public_key=b"k")
    payload = dht_pb2.DhtGetProvidersResponse(providers=[envelope] * 21).SerializeToString()
    with pytest.raises(DhtCodecError, match="at most 20 providers"):
        decode_response(GetProviders(key=Key(1)), payload)


def test_encoding_cuts_replies_to_the_caps() -> None:
    many = tuple(Contact(node_id=f"{i:064x}", host="10.0.0.1", port=1000 + i) for i in range(1, 30))
    reply = decode_response(FindNode(target=Key(1)), encode_response(Nodes(closer=many)))
    assert isinstance(reply, Nodes)
    assert reply.closer == many[:MAX_CONTACTS]


def test_huge_envelope_payload_is_malformed() -> None:
    envelope = envelope_pb2.SignedEnvelope(
        payload=b"x" * (MAX_ENVELOPE_PAYLOAD_BYTES + 1), signature=b"s" * 64
    )
    payload = dht_pb2.DhtPutRecordRequest(record=envelope).SerializeToString()
    with pytest.raises(DhtCodecError, match="envelope payload"):
        decode_request(METHODS[PutRecord], payload)


def test_record_needs_capabilities_and_times() -> None:
    with pytest.raises(DhtCodecError, match="capabilities is required"):
        CODEC.decode(dht_pb2.PeerRecord(seq=1).SerializeToString())
    too_long = dht_pb2.PeerRecord(addresses=["a" * 300])
    too_long.capabilities.SetInParent()
    too_long.created_at.seconds = 1
    too_long.expires_at.seconds = 2
    with pytest.raises(DhtCodecError, match="address"):
        CODEC.decode(too_long.SerializeToString())


def test_refused_is_not_encodable() -> None:
    with pytest.raises(ValueError, match="overlay error"):
        encode_response(Refused(reason="rate limited"))


def test_snapshot_round_trip_skips_bad_contacts() -> None:
    good = [Contact(node_id=f"{i:064x}", host="127.0.0.1", port=4000 + i) for i in range(1, 4)]
    named = Contact(node_id=f"{9:064x}", host="seed.example", port=7946)
    data = encode_snapshot("ab" * 32, [*good, named], NOW)
    assert decode_snapshot(data) == ("ab" * 32, [*good, named])
    broken = dht_pb2.RoutingTableSnapshot.FromString(data)
    broken.contacts.add(node_id=b"\x01", host="127.0.0.1", port=1)
    assert decode_snapshot(broken.SerializeToString()) == ("ab" * 32, [*good, named])
