"""Property tests (hypothesis) for signed envelopes, the receipt codec and the input hash."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from plasm_grpc.api import codec
from plasm_grpc.api.verify import verify_receipt
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.errors import VerificationError
from plasm_grpc.core.input_hash import INPUT_DOMAIN, encode_input, input_sha256
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.receipt import Receipt, RuntimeInfo

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U32 = 2**32 - 1
U64 = 2**64 - 1

seeds = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=512)
# A signing domain is non-empty ASCII without NUL.
domains = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1)


@st.composite
def signed(draw: st.DrawFn) -> tuple[NodeKey, str, SignedEnvelope]:
    key = NodeKey.from_seed(draw(seeds))
    domain = draw(domains)
    return key, domain, envelopes.sign(key, domain, draw(payloads))


# -- envelopes -----------------------------------------------------------------------------


@FAST
@given(seed=seeds, domain=domains, payload=payloads)
def test_sign_verify_round_trip(seed: bytes, domain: str, payload: bytes) -> None:
    key = NodeKey.from_seed(seed)
    env = envelopes.sign(key, domain, payload)
    assert env.payload == payload
    assert len(env.signature) == 64
    assert env.signer_public_key == key.public_key
    assert env.signer_node_id == key.node_id
    assert envelopes.verify(env, domain) == payload
    assert envelopes.verify(env, domain, expected_signer_node_id=key.node_id) == payload


@FAST
@given(data=st.data(), case=signed())
def test_any_single_bit_flip_fails(data: st.DataObject, case: Any) -> None:
    _key, domain, env = case
    fields = ["signature", "signer_public_key"] + (["payload"] if env.payload else [])
    name = data.draw(st.sampled_from(fields), label="field")
    value: bytes = getattr(env, name)
    bit = data.draw(st.integers(0, len(value) * 8 - 1), label="bit")
    flipped = bytearray(value)
    flipped[bit // 8] ^= 1 << (bit % 8)
    tampered = replace(env, **{name: bytes(flipped)})
    with pytest.raises(VerificationError):
        envelopes.verify(tampered, domain)


@FAST
@given(case=signed(), other=domains)
def test_wrong_domain_fails(case: Any, other: str) -> None:
    _key, domain, env = case
    assume(other != domain)
    with pytest.raises(VerificationError, match="domain"):
        envelopes.verify(env, other)


@FAST
@given(case=signed(), other_seed=seeds)
def test_wrong_signer_fails(case: Any, other_seed: bytes) -> None:
    key, domain, env = case
    other = NodeKey.from_seed(other_seed)
    assume(other.node_id != key.node_id)
    with pytest.raises(VerificationError, match="expected"):
        envelopes.verify(env, domain, expected_signer_node_id=other.node_id)
    # The other key's public key with this signature does not verify either.
    with pytest.raises(VerificationError):
        envelopes.verify(replace(env, signer_public_key=other.public_key), domain)


@FAST
@given(case=signed(), cut=st.integers(1, 64))
def test_truncated_signature_or_key_fails(case: Any, cut: int) -> None:
    _key, domain, env = case
    with pytest.raises(VerificationError):
        envelopes.verify(replace(env, signature=env.signature[:-cut]), domain)
    with pytest.raises(VerificationError):
        envelopes.verify(replace(env, signer_public_key=env.signer_public_key[: cut % 32]), domain)
    with pytest.raises(VerificationError):
        envelopes.verify(replace(env, signature=env.signature + b"\x00" * cut), domain)


@FAST
@given(d1=domains, p1=payloads, d2=domains, p2=payloads)
def test_signing_input_is_injective(d1: str, p1: bytes, d2: str, p2: bytes) -> None:
    same = envelopes.signing_input(d1, p1) == envelopes.signing_input(d2, p2)
    assert same == ((d1, p1) == (d2, p2))


@FAST
@given(domain=domains, payload=payloads)
def test_domain_and_payload_boundary_cannot_shift(domain: str, payload: bytes) -> None:
    """Moving bytes between the domain and the payload changes what is signed."""
    assume(len(domain) > 1)
    shifted = envelopes.signing_input(domain[:-1], domain[-1].encode() + payload)
    assert shifted != envelopes.signing_input(domain, payload)


@pytest.mark.parametrize("domain", ["", "a\x00b", "plasm/rëceipt/v1"])
def test_bad_domains_are_refused(domain: str) -> None:
    with pytest.raises(ValueError, match=r"domain|ascii"):
        envelopes.signing_input(domain, b"payload")


# -- receipts through the codec ------------------------------------------------------------

hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
uint64 = st.integers(0, U64)
limits_strategy = st.builds(
    ResourceLimits,
    max_memory_bytes=uint64,
    max_fuel=uint64,
    timeout_ms=st.integers(0, U32),
    max_stdout_bytes=uint64,
    max_stderr_bytes=uint64,
)
runtime_strategy = st.builds(
    RuntimeInfo,
    name=st.text(),
    version=st.text(),
    wasi_version=st.text(),
    config=st.lists(st.text(), max_size=5).map(tuple),
)
receipts = st.builds(
    Receipt,
    job_id=st.binary(min_size=16, max_size=16).map(bytes.hex),
    module_sha256=hex64,
    input_sha256=hex64,
    stdout_sha256=hex64,
    stderr_sha256=hex64,
    stdout_bytes=uint64,
    stderr_bytes=uint64,
    outcome=st.sampled_from(Outcome),
    exit_code=st.integers(-(2**31), 2**31 - 1),
    trap_code=st.text(),
    fuel_consumed=uint64,
    wall_time_us=uint64,
    limits=limits_strategy,
    runtime=runtime_strategy,
    executor_node_id=hex64,
    requester_node_id=st.one_of(st.just(""), hex64),
    started_at_ns=st.integers(0, 2**63 - 1),
    finished_at_ns=st.integers(0, 2**63 - 1),
    detail=st.text(),
    version=st.one_of(st.just(1), st.integers(0, U32)),
)


@FAST
@given(receipt=receipts)
def test_receipt_encode_decode_round_trip(receipt: Receipt) -> None:
    payload = codec.encode_receipt(receipt)
    assert codec.encode_receipt(receipt) == payload  # deterministic
    body = codec.decode_receipt_body(payload)
    assert codec.receipt_from_pb(body) == receipt


@FAST
@given(receipt=receipts, seed=seeds)
def test_signed_receipt_verifies_offline(receipt: Receipt, seed: bytes) -> None:
    key = NodeKey.from_seed(seed)
    receipt = replace(receipt, executor_node_id=key.node_id, version=1)
    env = envelopes.sign(key, envelopes.RECEIPT_DOMAIN, codec.encode_receipt(receipt))
    wire = codec.envelope_to_pb(env).SerializeToString()
    result = verify_receipt(codec.envelope_from_bytes(wire))
    assert result.valid, result.checks
    assert result.body is not None
    assert codec.receipt_from_pb(result.body) == receipt


# -- decoding untrusted bytes ---------------------------------------------------------------


def _decode_all(data: bytes) -> None:
    """Decode as every message type; anything but codec.DecodeError propagates."""
    try:
        body = codec.decode_receipt_body(data)
    except codec.DecodeError:
        body = None
    if body is not None:
        with contextlib.suppress(codec.DecodeError):
            codec.receipt_from_pb(body)
    with contextlib.suppress(codec.DecodeError):
        codec.envelope_from_bytes(data)


@FAST
@given(data=st.binary(max_size=1024))
def test_decoding_random_bytes_raises_only_decode_error(data: bytes) -> None:
    _decode_all(data)


@FAST
@given(receipt=receipts, data=st.data())
def test_decoding_mutated_receipts_raises_only_decode_error(
    receipt: Receipt, data: st.DataObject
) -> None:
    encoded = bytearray(codec.encode_receipt(receipt))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="kind")
        pos = data.draw(st.integers(0, max(0, len(encoded) - 1)), label="pos")
        if kind == "flip" and encoded:
            encoded[pos] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "cut":
            del encoded[pos:]
        else:
            encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    _decode_all(bytes(encoded))


@FAST
@given(payload=st.binary(max_size=512), seed=seeds)
def test_verify_receipt_never_raises_on_signed_garbage(payload: bytes, seed: bytes) -> None:
    key = NodeKey.from_seed(seed)
    env = envelopes.sign(key, envelopes.RECEIPT_DOMAIN, payload)
    result = verify_receipt(env)
    assert not result.valid  # random bytes never name this key as executor
    assert result.signer_node_id == key.node_id


@FAST
@given(payload=st.binary(max_size=64), signature=st.binary(max_size=80), key=st.binary(max_size=40))
def test_verify_receipt_never_raises_on_random_envelopes(
    payload: bytes, signature: bytes, key: bytes
) -> None:
    env = SignedEnvelope(payload=payload, signature=signature, signer_public_key=key)
    assert not verify_receipt(env).valid


# -- the input hash ------------------------------------------------------------------------

Input = tuple[tuple[str, ...], tuple[tuple[str, str], ...], bytes]

inputs: st.SearchStrategy[Input] = st.tuples(
    st.lists(st.text(max_size=8), max_size=5).map(tuple),
    st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=4).map(tuple),
    st.binary(max_size=32),
)


def decode_input(data: bytes) -> Input:
    """An independent parser of the documented encoding (tests/vectors/README.md)."""
    assert data.startswith(INPUT_DOMAIN)
    pos = len(INPUT_DOMAIN)

    def u32() -> int:
        nonlocal pos
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        return int(n)

    def string() -> str:
        nonlocal pos
        n = u32()
        raw = data[pos : pos + n]
        assert len(raw) == n
        pos += n
        return raw.decode("utf-8")

    args = tuple(string() for _ in range(u32()))
    env = tuple((string(), string()) for _ in range(u32()))
    (n,) = struct.unpack_from(">Q", data, pos)
    pos += 8
    stdin = data[pos:]
    assert len(stdin) == n
    return args, env, stdin


@FAST
@given(job=inputs)
def test_input_encoding_parses_back(job: Input) -> None:
    """A parser recovers the input exactly, so encode_input is injective."""
    assert decode_input(encode_input(*job)) == job


@FAST
@given(a=inputs, b=inputs)
def test_input_encoding_distinguishes_distinct_inputs(a: Input, b: Input) -> None:
    assert (encode_input(*a) == encode_input(*b)) == (a == b)
    assert (input_sha256(*a) == input_sha256(*b)) == (a == b)


@st.composite
def boundary_shifts(draw: st.DrawFn) -> tuple[Input, Input]:
    """An input and a variant with the same bytes cut at different boundaries."""
    args, env, stdin = draw(inputs)
    kind = draw(st.sampled_from(["split_arg", "arg_to_env", "arg_to_stdin", "env_swap"]))
    if kind == "split_arg":
        text = draw(st.text(min_size=2, max_size=8))
        cut = draw(st.integers(1, len(text) - 1))
        return ((*args, text), env, stdin), ((*args, text[:cut], text[cut:]), env, stdin)
    if kind == "arg_to_env":
        name, value = draw(st.text(max_size=4)), draw(st.text(max_size=4))
        return ((*args, name, value), env, stdin), (args, (*env, (name, value)), stdin)
    if kind == "arg_to_stdin":
        text = draw(st.text(min_size=1, max_size=8))
        return ((*args, text), env, stdin), (args, env, text.encode() + stdin)
    pairs = draw(st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), min_size=2))
    assume(pairs[0] != pairs[1])
    swapped = [pairs[1], pairs[0], *pairs[2:]]
    return (args, tuple(pairs), stdin), (args, tuple(swapped), stdin)


@FAST
@given(pair=boundary_shifts())
def test_input_hash_sees_boundary_shifts(pair: tuple[Input, Input]) -> None:
    a, b = pair
    assert a != b
    assert encode_input(*a) != encode_input(*b)
    assert input_sha256(*a) != input_sha256(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((("ab",), (), b""), (("a", "b"), (), b"")),
        ((("a", "b"), (), b""), ((), (("a", "b"),), b"")),
        ((("ab",), (), b""), ((), (), b"ab")),
        (((), (("a", "b"), ("c", "d")), b""), ((), (("c", "d"), ("a", "b")), b"")),
        (((), (("ab", ""),), b""), ((), (("a", "b"),), b"")),
        ((("",), (), b""), ((), (), b"")),
        (((), (), b"\x00"), ((), (), b"")),
    ],
)
def test_input_hash_boundary_examples(a: Input, b: Input) -> None:
    assert input_sha256(*a) != input_sha256(*b)
