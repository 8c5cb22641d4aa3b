"""The two protobuf messages inside the Noise handshake, encoded by hand.

`plasm.v1.NoiseIdentity` (the payload signed under NOISE_IDENTITY_DOMAIN) and
`plasm.v1.HandshakePayload` (carried in Noise XX messages 2 and 3), defined in
proto/plasm/v1/overlay.proto.

Why by hand, in the core: the core may not import generated code
(import-linter), yet the handshake state machine builds and checks these
messages itself. Injecting encode/decode callables would put the parsing of
the peer's very first authenticated bytes in whatever code the caller passes
and leave the core's handshake untestable on its own. The messages are small
and fixed (with the nested `SignedEnvelope` and `google.protobuf.Timestamp`),
so a hundred lines of wire format do. The proto stays the single source of
truth: tests/test_noise_handshake.py checks both directions against the
generated `plasm.v1.overlay_pb2`, byte for byte.

Encoding is canonical: fields in number order, proto3 default scalars omitted,
the message fields (`identity`, `created_at`) always present. These are the
bytes protobuf's own serializers produce.

Decoding follows proto3, strict where only a broken or hostile encoder would
differ: unknown fields are skipped (forward compatibility), while a known
field with the wrong wire type, a known field seen twice, a varint over ten
bytes or 64 bits, a length past the end, a group, or a missing message field
raises `RemoteOverlayError`. Nothing else escapes `decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.overlay_errors import RemoteOverlayError

NOISE_STATIC_KEY_BYTES: Final = 32

# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to
# 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS: Final = -62_135_596_800
_MAX_SECONDS: Final = 253_402_300_799
_NS_PER_S: Final = 1_000_000_000
MIN_TIMESTAMP_NS: Final = _MIN_SECONDS * _NS_PER_S
MAX_TIMESTAMP_NS: Final = _MAX_SECONDS * _NS_PER_S + _NS_PER_S - 1

_U32_MAX: Final = 2**32 - 1
_U64_LIMIT: Final = 2**64
_MAX_VARINT_BYTES: Final = 10
_MAX_FIELD_NUMBER: Final = 2**29 - 1

# Wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5
_FIXED_WIDTH: Final[Mapping[int, int]] = {_I64: 8, _I32: 4}

# Field numbers and wire types of the known fields, per message.
_ENVELOPE_FIELDS: Final[Mapping[int, int]] = {1: _LEN, 2: _LEN, 3: _LEN}
_TIMESTAMP_FIELDS: Final[Mapping[int, int]] = {1: _VARINT, 2: _VARINT}
_NOISE_IDENTITY_FIELDS: Final[Mapping[int, int]] = {1: _LEN, 2: _LEN}
_HANDSHAKE_PAYLOAD_FIELDS: Final[Mapping[int, int]] = {1: _LEN, 2: _VARINT}


# -- writing -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(f"a varint holds 0..2**64-1, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, value: bytes, *, always: bool = False) -> bytes:
    if not value and not always:
        return b""  # proto3 default: omitted
    return _key(number, _LEN) + _varint(len(value)) + value


def _uint_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value) if value else b""


def _encode_envelope(envelope: SignedEnvelope) -> bytes:
    return (
        _bytes_field(1, envelope.payload)
        + _bytes_field(2, envelope.signature)
        + _bytes_field(3, envelope.signer_public_key)
    )


def _encode_timestamp(ns: int) -> bytes:
    seconds, nanos = divmod(ns, _NS_PER_S)
    # int64 on the wire is two's complement in 64 bits.
    return _uint_field(1, seconds % _U64_LIMIT) + _uint_field(2, nanos)


# -- reading -------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise RemoteOverlayError(f"{what}: truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if result >= _U64_LIMIT:
                raise RemoteOverlayError(f"{what}: varint above 64 bits")
            return result, pos + i + 1
    raise RemoteOverlayError(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes")


def _read_fields(data: bytes, known: Mapping[int, int], what: str) -> dict[int, int | bytes]:
    """The known fields of one message level, by field number; unknown ones skipped."""
    found: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos, what)
        number, wire_type = key >> 3, key & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise RemoteOverlayError(f"{what}: invalid field number {number}")
        value: int | bytes
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos, what)
        elif wire_type == _LEN:
            length, pos = _read_varint(data, pos, what)
            if length > len(data) - pos:
                raise RemoteOverlayError(f"{what}: field {number} runs past the end")
            value, pos = data[pos : pos + length], pos + length
        elif wire_type in _FIXED_WIDTH:
            width = _FIXED_WIDTH[wire_type]
            if width > len(data) - pos:
                raise RemoteOverlayError(f"{what}: field {number} runs past the end")
            value, pos = data[pos : pos + width], pos + width
        else:
            raise RemoteOverlayError(f"{what}: unsupported wire type {wire_type}")
        expected = known.get(number)
        if expected is None:
            continue  # a field from a newer version of the message
        if wire_type != expected:
            raise RemoteOverlayError(f"{what}: field {number} has wire type {wire_type}")
        if number in found:
            raise RemoteOverlayError(f"{what}: field {number} appears twice")
        found[number] = value
    return found


def _get_bytes(fields: Mapping[int, int | bytes], number: int) -> bytes:
    value = fields.get(number, b"")
    assert isinstance(value, bytes)  # the wire type was checked against `known`
    return value


def _get_int(fields: Mapping[int, int | bytes], number: int) -> int:
    value = fields.get(number, 0)
    assert isinstance(value, int)
    return value


def _required(fields: Mapping[int, int | bytes], number: int, what: str) -> bytes:
    if number not in fields:
        raise RemoteOverlayError(f"{what} is missing")
    return _get_bytes(fields, number)


def _decode_envelope(data: bytes) -> SignedEnvelope:
    fields = _read_fields(data, _ENVELOPE_FIELDS, "SignedEnvelope")
    return SignedEnvelope(
        payload=_get_bytes(fields, 1),
        signature=_get_bytes(fields, 2),
        signer_public_key=_get_bytes(fields, 3),
    )


def _decode_timestamp(data: bytes) -> int:
    fields = _read_fields(data, _TIMESTAMP_FIELDS, "Timestamp")
    seconds = _get_int(fields, 1)
    if seconds >= 2**63:
        seconds -= _U64_LIMIT
    nanos = _get_int(fields, 2)  # int32, sign-extended to 64 bits when negative
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise RemoteOverlayError(f"Timestamp: seconds {seconds} out of range")
    if nanos >= _NS_PER_S:
        raise RemoteOverlayError("Timestamp: nanos must be 0..999999999")
    return seconds * _NS_PER_S + nanos


# -- the messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoiseIdentity:
    """`plasm.v1.NoiseIdentity`: a node's claim that a Noise static key is its own."""

    noise_static_public_key: bytes
    created_at_ns: int

    def __post_init__(self) -> None:
        if len(self.noise_static_public_key) != NOISE_STATIC_KEY_BYTES:
            raise ValueError(
                f"a Noise static public key is {NOISE_STATIC_KEY_BYTES} bytes, "
                f"got {len(self.noise_static_public_key)}"
            )
        if not MIN_TIMESTAMP_NS <= self.created_at_ns <= MAX_TIMESTAMP_NS:
            raise ValueError(f"created_at_ns {self.created_at_ns} is outside Timestamp's range")

    def encode(self) -> bytes:
        return _bytes_field(1, self.noise_static_public_key) + _bytes_field(
            2, _encode_timestamp(self.created_at_ns), always=True
        )

    @classmethod
    def decode(cls, data: bytes) -> NoiseIdentity:
        fields = _read_fields(bytes(data), _NOISE_IDENTITY_FIELDS, "NoiseIdentity")
        key = _get_bytes(fields, 1)
        if len(key) != NOISE_STATIC_KEY_BYTES:
            raise RemoteOverlayError(
                f"NoiseIdentity: noise_static_public_key is {len(key)} bytes, "
                f"not {NOISE_STATIC_KEY_BYTES}"
            )
        created_at_ns = _decode_timestamp(_required(fields, 2, "NoiseIdentity.created_at"))
        return cls(noise_static_public_key=key, created_at_ns=created_at_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakePayload:
    """`plasm.v1.HandshakePayload`: the payload of Noise XX messages 2 and 3."""

    identity: SignedEnvelope
    overlay_version: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlay_version <= _U32_MAX:
            raise ValueError(f"overlay_version is a uint32, got {self.overlay_version}")

    def encode(self) -> bytes:
        return _bytes_field(1, _encode_envelope(self.identity), always=True) + _uint_field(
            2, self.overlay_version
        )

    @classmethod
    def decode(cls, data: bytes) -> HandshakePayload:
        fields = _read_fields(bytes(data), _HANDSHAKE_PAYLOAD_FIELDS, "HandshakePayload")
        identity = _decode_envelope(_required(fields, 1, "HandshakePayload.identity"))
        version = _get_int(fields, 2)
        if version > _U32_MAX:
            raise RemoteOverlayError(f"HandshakePayload: overlay_version {version} above uint32")
        return cls(identity=identity, overlay_version=version)
