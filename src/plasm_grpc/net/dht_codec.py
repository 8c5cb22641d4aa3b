"""protobuf <-> core conversion for the DHT (proto/plasm/v1/dht.proto).

The only place the DHT touches generated code: `net.dht` turns bytes from the
overlay into `core.dht.messages` values here and back, and `ProtobufRecordCodec`
is the daemon's `RecordCodec` (the `PeerRecord` message as an envelope payload).

Everything decoded from the wire is checked here or by the core value's own
`__post_init__`; anything wrong raises `DhtCodecError` and nothing else (the
hypothesis tests in tests/test_dht_codec.py hold that). Caps: at most
`MAX_CONTACTS` contacts and `MAX_PROVIDERS_PER_REPLY` providers in one reply
(a reply with more is malformed: a conforming peer cuts them when encoding),
an envelope payload of at most `MAX_ENVELOPE_PAYLOAD_BYTES` (larger than any
record, so an oversized record still reaches `open_record` and is rejected,
and logged, as OVERSIZED), and contact hosts are IP address literals (a peer
must not make this node resolve names it chose).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from plasm.v1 import capability_pb2, dht_pb2, envelope_pb2, limits_pb2

from plasm_grpc import wire
from plasm_grpc.core.dht.keys import KEY_BYTES, Key
from plasm_grpc.core.dht.messages import (
    MAX_CONTACTS,
    MAX_PROVIDERS_PER_REPLY,
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
from plasm_grpc.core.dht.records import Capabilities, RecordContent, RecordError, RelayAddress
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.errors import PlasmError
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.wire import (
    capabilities_to_pb,
    envelope_to_pb,
)

__all__ = [
    "MAX_ENVELOPE_PAYLOAD_BYTES",
    "MAX_SNAPSHOT_CONTACTS",
    "DhtCodecError",
    "ProtobufRecordCodec",
    "capabilities_from_pb",
    "capabilities_to_pb",
    "contact_from_pb",
    "contact_to_pb",
    "decode_request",
    "decode_request_from",
    "decode_response",
    "decode_snapshot",
    "encode_request",
    "encode_response",
    "encode_snapshot",
    "envelope_from_pb",
    "envelope_to_pb",
    "method_of",
]

MAX_ENVELOPE_PAYLOAD_BYTES: Final = 16 * 1024
"""Largest envelope payload decoded at all (records are checked against the
smaller `records.MAX_RECORD_BYTES` later, by `open_record`)."""
_MAX_SIGNATURE_FIELD_BYTES: Final = 256
"""Signature and public key fields longer than this are malformed outright
(the right lengths, 64 and 32, are checked by `open_record`)."""
MAX_SNAPSHOT_CONTACTS: Final = 4096
_MAX_PORT: Final = 65535
_NANOS: Final = 1_000_000_000
# Timestamps past year 9999 are invalid in protobuf's JSON form; refuse them.
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799

_M = TypeVar("_M", bound=Message)


class DhtCodecError(RecordError):
    """Bytes from the wire (or the snapshot file) are not a valid DHT message.

    A `RecordError`, so `ProtobufRecordCodec.decode` meets the `RecordCodec`
    contract with this one type.
    """


def _parse(message: _M, data: bytes, what: str) -> _M:
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise DhtCodecError(f"not a {what}: {err}") from err
    return message


def _serialize(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


# -- small values ------------------------------------------------------------------------


def _key(data: bytes, field: str) -> Key:
    if len(data) != KEY_BYTES:
        raise DhtCodecError(f"{field} must be {KEY_BYTES} bytes, got {len(data)}")
    return Key.from_bytes(data)


def contact_to_pb(contact: Contact) -> dht_pb2.DhtContact:
    return dht_pb2.DhtContact(
        node_id=bytes.fromhex(contact.node_id), host=contact.host, port=contact.port
    )


def contact_from_pb(msg: dht_pb2.DhtContact, *, require_ip: bool = True) -> Contact:
    """A contact from the wire: a 32-byte id, an IP literal host (unless not
    `require_ip`: saved bootstrap seeds may be names) and a port in 1..65535."""
    if len(msg.node_id) != KEY_BYTES:
        raise DhtCodecError(
            f"a contact's node_id must be {KEY_BYTES} bytes, got {len(msg.node_id)}"
        )
    if not 0 < msg.port <= _MAX_PORT:
        raise DhtCodecError(f"a contact's port must be in 1..{_MAX_PORT}, got {msg.port}")
    if require_ip:
        try:
            ipaddress.ip_address(msg.host)
        except ValueError:
            raise DhtCodecError(
                f"a contact's host must be an IP address, got {msg.host[:64]!r}"
            ) from None
    try:
        return Contact(node_id=msg.node_id.hex(), host=msg.host, port=msg.port)
    except PlasmError as err:
        raise DhtCodecError(f"bad contact: {err}") from err


def _contacts_to_pb(contacts: Sequence[Contact]) -> list[dht_pb2.DhtContact]:
    return [contact_to_pb(c) for c in contacts[:MAX_CONTACTS]]


def _contacts_from_pb(msgs: Sequence[dht_pb2.DhtContact]) -> tuple[Contact, ...]:
    if len(msgs) > MAX_CONTACTS:
        raise DhtCodecError(f"a reply carries at most {MAX_CONTACTS} contacts, got {len(msgs)}")
    return tuple(contact_from_pb(m) for m in msgs)


def envelope_from_pb(msg: envelope_pb2.SignedEnvelope) -> SignedEnvelope:
    """The envelope as received; its signature is checked later, by `open_record`."""
    if len(msg.payload) > MAX_ENVELOPE_PAYLOAD_BYTES:
        raise DhtCodecError(
            f"an envelope payload is at most {MAX_ENVELOPE_PAYLOAD_BYTES} bytes,"
            f" got {len(msg.payload)}"
        )
    if max(len(msg.signature), len(msg.signer_public_key)) > _MAX_SIGNATURE_FIELD_BYTES:
        raise DhtCodecError("an envelope's signature or public key is far too long")
    return wire.envelope_from_pb(msg)


def _optional_envelope(
    msg: dht_pb2.DhtPingResponse | dht_pb2.DhtGetRecordResponse,
) -> SignedEnvelope | None:
    return envelope_from_pb(msg.record) if msg.HasField("record") else None


def _required_envelope(
    msg: dht_pb2.DhtPutRecordRequest | dht_pb2.DhtAddProviderRequest,
) -> SignedEnvelope:
    if not msg.HasField("record"):
        raise DhtCodecError(f"{type(msg).__name__}.record is required")
    return envelope_from_pb(msg.record)


def limits_from_pb(msg: limits_pb2.ResourceLimits) -> ResourceLimits:
    try:
        return wire.limits_from_pb(msg)
    except PlasmError as err:
        raise DhtCodecError(f"bad limits: {err}") from err


def capabilities_from_pb(msg: capability_pb2.Capabilities) -> Capabilities:
    try:
        return Capabilities(
            arch=msg.arch,
            os=msg.os,
            cores=msg.cores,
            memory_bytes=msg.memory_bytes,
            runtime_name=msg.runtime_name,
            runtime_version=msg.runtime_version,
            wasi_version=msg.wasi_version,
            max_limits=limits_from_pb(msg.max_limits),
            free_job_slots=msg.free_job_slots,
            total_job_slots=msg.total_job_slots,
        )
    except PlasmError as err:
        raise DhtCodecError(f"bad capabilities: {err}") from err


def _timestamp(seconds: float) -> Timestamp:
    if not math.isfinite(seconds) or not 0 <= seconds <= _MAX_TIMESTAMP_SECONDS:
        raise ValueError(f"a timestamp must be within years 1970..9999, got {seconds!r}")
    # Whole seconds and the fraction apart: seconds * 1e9 as one float loses
    # the last nanoseconds of a date (the spacing there is 128 ns), and the
    # decoded time would not be the one signed.
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS)
    if nanos == _NANOS:
        whole, nanos = whole + 1, 0
    return Timestamp(seconds=whole, nanos=nanos)


def _relay_id(raw: bytes) -> str:
    if len(raw) != 32:
        raise DhtCodecError("PeerRecord.relays.relay_node_id is 32 bytes")
    return raw.hex()


def _seconds(ts: Timestamp, field: str) -> float:
    if not 0 <= ts.seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= ts.nanos < _NANOS:
        raise DhtCodecError(f"{field} is not a valid timestamp")
    return (ts.seconds * _NANOS + ts.nanos) / _NANOS  # one rounding, not two


# -- peer records ------------------------------------------------------------------------


class ProtobufRecordCodec:
    """`RecordCodec`: a record payload is a serialized `plasm.v1.PeerRecord`.

    Times are carried to the nanosecond: `decode(encode(c))` equals `c` up to
    the float's rounding to a whole nanosecond. Decoding never re-serializes;
    `open_record` verifies the exact payload bytes that were signed.
    """

    def encode(self, content: RecordContent) -> bytes:
        return _serialize(
            dht_pb2.PeerRecord(
                addresses=list(content.addresses),
                relays=[
                    dht_pb2.RelayAddress(
                        relay_node_id=bytes.fromhex(r.relay_node_id), address=r.address
                    )
                    for r in content.relays
                ],
                capabilities=capabilities_to_pb(content.capabilities),
                seq=content.seq,
                created_at=_timestamp(content.created_at),
                expires_at=_timestamp(content.expires_at),
            )
        )

    def decode(self, payload: bytes) -> RecordContent:
        msg = _parse(dht_pb2.PeerRecord(), payload, "PeerRecord")
        for name in ("capabilities", "created_at", "expires_at"):
            if not msg.HasField(name):
                raise DhtCodecError(f"PeerRecord.{name} is required")
        try:
            return RecordContent(
                addresses=tuple(msg.addresses),
                relays=tuple(
                    RelayAddress(relay_node_id=_relay_id(r.relay_node_id), address=r.address)
                    for r in msg.relays
                ),
                capabilities=capabilities_from_pb(msg.capabilities),
                seq=msg.seq,
                created_at=_seconds(msg.created_at, "PeerRecord.created_at"),
                expires_at=_seconds(msg.expires_at, "PeerRecord.expires_at"),
            )
        except DhtCodecError:
            raise
        except PlasmError as err:
            raise DhtCodecError(f"bad PeerRecord: {err}") from err


# -- RPC messages ------------------------------------------------------------------------

_METHOD_TYPES: Final[dict[str, type[Request]]] = {m: t for t, m in METHODS.items()}


def method_of(request: Request) -> str:
    """The overlay method name `request` is sent as."""
    return METHODS[type(request)]


def encode_request(request: Request, *, client: bool = False) -> bytes:
    """`client`: the sender is in DHT client mode (every request type's `client` field)."""
    message: Message
    match request:
        case Ping():
            message = dht_pb2.DhtPingRequest(client=client)
        case FindNode(target=target):
            message = dht_pb2.DhtFindNodeRequest(target=target.to_bytes(), client=client)
        case GetRecord(key=key):
            message = dht_pb2.DhtGetRecordRequest(key=key.to_bytes(), client=client)
        case PutRecord(record=record):
            message = dht_pb2.DhtPutRecordRequest(record=envelope_to_pb(record), client=client)
        case AddProvider(key=key, record=record):
            message = dht_pb2.DhtAddProviderRequest(
                key=key.to_bytes(), record=envelope_to_pb(record), client=client
            )
        case GetProviders(key=key):
            message = dht_pb2.DhtGetProvidersRequest(key=key.to_bytes(), client=client)
    return _serialize(message)


def decode_request(method: str, payload: bytes) -> Request:
    """The request `payload` sent to overlay `method` ("plasm.v1.Dht/...")."""
    return decode_request_from(method, payload)[0]


def decode_request_from(method: str, payload: bytes) -> tuple[Request, bool]:
    """The request and whether its sender is in DHT client mode."""
    kind = _METHOD_TYPES.get(method)
    if kind is None:
        raise DhtCodecError(f"{method!r} is not a DHT method")
    if kind is Ping:
        ping = _parse(dht_pb2.DhtPingRequest(), payload, "DhtPingRequest")
        return Ping(), ping.client
    if kind is FindNode:
        find = _parse(dht_pb2.DhtFindNodeRequest(), payload, "DhtFindNodeRequest")
        return FindNode(target=_key(find.target, "DhtFindNodeRequest.target")), find.client
    if kind is GetRecord:
        get = _parse(dht_pb2.DhtGetRecordRequest(), payload, "DhtGetRecordRequest")
        return GetRecord(key=_key(get.key, "DhtGetRecordRequest.key")), get.client
    if kind is PutRecord:
        put = _parse(dht_pb2.DhtPutRecordRequest(), payload, "DhtPutRecordRequest")
        return PutRecord(record=_required_envelope(put)), put.client
    if kind is AddProvider:
        add = _parse(dht_pb2.DhtAddProviderRequest(), payload, "DhtAddProviderRequest")
        request = AddProvider(
            key=_key(add.key, "DhtAddProviderRequest.key"), record=_required_envelope(add)
        )
        return request, add.client
    assert kind is GetProviders
    providers = _parse(dht_pb2.DhtGetProvidersRequest(), payload, "DhtGetProvidersRequest")
    return GetProviders(key=_key(providers.key, "DhtGetProvidersRequest.key")), providers.client


def encode_response(response: Response) -> bytes:
    """Encode an answer; a `Refused` has no message (the adapter sends an overlay ERROR)."""
    message: Message
    match response:
        case Pong(record=record):
            message = dht_pb2.DhtPingResponse()
            if record is not None:
                message.record.CopyFrom(envelope_to_pb(record))
        case Nodes(closer=closer):
            message = dht_pb2.DhtFindNodeResponse(closer=_contacts_to_pb(closer))
        case RecordReply(record=record, closer=closer):
            message = dht_pb2.DhtGetRecordResponse(closer=_contacts_to_pb(closer))
            if record is not None:
                message.record.CopyFrom(envelope_to_pb(record))
        case StoreReply(stored=stored, reason=reason):
            # PutRecord and AddProvider answers have the same fields and encoding.
            message = dht_pb2.DhtPutRecordResponse(stored=stored, reason=reason)
        case ProvidersReply(providers=providers, closer=closer):
            message = dht_pb2.DhtGetProvidersResponse(
                providers=[envelope_to_pb(p) for p in providers[:MAX_PROVIDERS_PER_REPLY]],
                closer=_contacts_to_pb(closer),
            )
        case Refused(reason=reason):
            raise ValueError(f"a refusal ({reason}) is sent as an overlay error, not encoded")
    return _serialize(message)


def decode_response(request: Request, payload: bytes) -> Response:
    """The answer `payload` to `request`, as the response type that request expects."""
    match request:
        case Ping():
            pong = _parse(dht_pb2.DhtPingResponse(), payload, "DhtPingResponse")
            return Pong(record=_optional_envelope(pong))
        case FindNode():
            nodes = _parse(dht_pb2.DhtFindNodeResponse(), payload, "DhtFindNodeResponse")
            return Nodes(closer=_contacts_from_pb(nodes.closer))
        case GetRecord():
            got = _parse(dht_pb2.DhtGetRecordResponse(), payload, "DhtGetRecordResponse")
            return RecordReply(record=_optional_envelope(got), closer=_contacts_from_pb(got.closer))
        case PutRecord():
            put = _parse(dht_pb2.DhtPutRecordResponse(), payload, "DhtPutRecordResponse")
            return StoreReply(stored=put.stored, reason=put.reason[:256])
        case AddProvider():
            add = _parse(dht_pb2.DhtAddProviderResponse(), payload, "DhtAddProviderResponse")
            return StoreReply(stored=add.stored, reason=add.reason[:256])
        case GetProviders():
            reply = _parse(dht_pb2.DhtGetProvidersResponse(), payload, "DhtGetProvidersResponse")
            if len(reply.providers) > MAX_PROVIDERS_PER_REPLY:
                raise DhtCodecError(
                    f"a reply carries at most {MAX_PROVIDERS_PER_REPLY} providers,"
                    f" got {len(reply.providers)}"
                )
            return ProvidersReply(
                providers=tuple(envelope_from_pb(p) for p in reply.providers),
                closer=_contacts_from_pb(reply.closer),
            )
    raise AssertionError(f"unknown request {request!r}")  # pragma: no cover


# -- the routing table snapshot ----------------------------------------------------------


def encode_snapshot(node_id: str, contacts: Sequence[Contact], saved_at: float) -> bytes:
    return _serialize(
        dht_pb2.RoutingTableSnapshot(
            node_id=node_id,
            saved_at=_timestamp(saved_at),
            contacts=[contact_to_pb(c) for c in contacts[:MAX_SNAPSHOT_CONTACTS]],
        )
    )


def decode_snapshot(data: bytes) -> tuple[str, list[Contact]]:
    """(saving node id, contacts); a contact that does not decode is skipped."""
    msg = _parse(dht_pb2.RoutingTableSnapshot(), data, "RoutingTableSnapshot")
    contacts: list[Contact] = []
    for entry in msg.contacts[:MAX_SNAPSHOT_CONTACTS]:
        try:
            contacts.append(contact_from_pb(entry, require_ip=False))
        except DhtCodecError:
            continue
    return msg.node_id, contacts
