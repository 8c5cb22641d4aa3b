"""The overlay's Noise XX handshake and transport (core/noise.py) and the hand-written
protobuf of its payloads (core/handshake_wire.py), with no sockets.

`HandshakePair` wires an initiator and a responder together in memory. `RawPeer`
drives noiseprotocol directly, as an attacker would, so a test can put any bytes
in messages 2 and 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from plasm.v1 import envelope_pb2, overlay_pb2

from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.envelope import (
    NOISE_IDENTITY_DOMAIN,
    RECEIPT_DOMAIN,
    SignedEnvelope,
)
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.handshake_wire import (
    MAX_TIMESTAMP_NS,
    MIN_TIMESTAMP_NS,
    HandshakePayload,
    NoiseIdentity,
)
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.noise import (
    MAX_HANDSHAKE_MESSAGE_BYTES,
    NOISE_MAX_MESSAGE_BYTES,
    NOISE_MAX_PLAINTEXT_BYTES,
    NOISE_PROTOCOL_NAME,
    OVERLAY_VERSION,
    PROLOGUE_LABEL,
    HandshakeComplete,
    HandshakeEvent,
    HandshakeFailed,
    HandshakeState,
    NoiseHandshake,
    NoiseTransport,
    handshake_prologue,
    noise_static_public_key,
    sign_noise_identity,
)
from plasm_grpc.core.overlay_errors import (
    LocalOverlayError,
    OverlayProtocolError,
    RemoteOverlayError,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NOW_NS = 1_763_800_000_123_456_789
ALICE = NodeKey.from_seed(b"A" * 32)
BOB = NodeKey.from_seed(b"B" * 32)
CAROL = NodeKey.from_seed(b"C" * 32)
STATIC = {
    key.node_id: hashlib.sha256(b"noise static " + key.seed()).digest()
    for key in (ALICE, BOB, CAROL)
}
CERT = b"0\x82\x01\x0a server certificate of the QUIC connection"
PROLOGUE = handshake_prologue(CERT)


def static_of(key: NodeKey) -> bytes:
    return STATIC[key.node_id]


def initiator(
    key: NodeKey = ALICE, *, expect: str | None = None, prologue: bytes = PROLOGUE
) -> NoiseHandshake:
    return NoiseHandshake.initiator(key, static_of(key), prologue, expect, now_ns=NOW_NS)


def responder(
    key: NodeKey = BOB, *, expect: str | None = None, prologue: bytes = PROLOGUE
) -> NoiseHandshake:
    return NoiseHandshake.responder(key, static_of(key), prologue, expect, now_ns=NOW_NS + 1)


def events(handshake: NoiseHandshake) -> list[HandshakeEvent]:
    out = []
    while (event := handshake.next_event()) is not None:
        out.append(event)
    return out


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass
class HandshakePair:
    """An initiator and a responder joined by an in-memory byte stream."""

    initiator: NoiseHandshake = field(default_factory=initiator)
    responder: NoiseHandshake = field(default_factory=responder)
    # Every delivery, as (direction, bytes), for replay tests.
    transcript: list[tuple[str, bytes]] = field(default_factory=list)

    def pump(self, chunk: int | None = None) -> None:
        """Deliver everything each side has to send, `chunk` bytes per receive call."""
        sides = (("i->r", self.initiator, self.responder), ("r->i", self.responder, self.initiator))
        moved = True
        while moved:
            moved = False
            for direction, sender, receiver in sides:
                data = sender.data_to_send()
                if not data:
                    continue
                moved = True
                self.transcript.append((direction, data))
                for piece in split(data, chunk or len(data)):
                    receiver.receive(piece)

    def sent(self, direction: str) -> list[bytes]:
        return [data for d, data in self.transcript if d == direction]


def completed(handshake: NoiseHandshake) -> HandshakeComplete:
    found = events(handshake)
    assert len(found) == 1, found
    assert isinstance(found[0], HandshakeComplete), found[0]
    assert handshake.state is HandshakeState.COMPLETE
    return found[0]


def failed(handshake: NoiseHandshake) -> str:
    found = events(handshake)
    assert len(found) == 1, found
    assert isinstance(found[0], HandshakeFailed), found[0]
    assert handshake.state is HandshakeState.FAILED
    assert handshake.data_to_send() == b""
    return found[0].reason


# -- success -------------------------------------------------------------------------------


def test_handshake_authenticates_both_node_ids() -> None:
    pair = HandshakePair(initiator(expect=BOB.node_id))
    pair.pump()
    at_initiator = completed(pair.initiator)
    at_responder = completed(pair.responder)

    assert at_initiator.remote_node_id == BOB.node_id
    assert at_initiator.remote_public_key == BOB.public_key
    assert at_initiator.remote_static_key == noise_static_public_key(static_of(BOB))
    assert at_initiator.remote_identity_created_at_ns == NOW_NS + 1
    assert at_responder.remote_node_id == ALICE.node_id
    assert at_responder.remote_public_key == ALICE.public_key
    assert at_responder.remote_static_key == noise_static_public_key(static_of(ALICE))
    assert at_responder.remote_identity_created_at_ns == NOW_NS
    assert at_initiator.handshake_hash == at_responder.handshake_hash
    # Three messages, nothing more to say, nothing more to report.
    assert [d for d, _ in pair.transcript] == ["i->r", "r->i", "i->r"]
    for side in (pair.initiator, pair.responder):
        assert side.data_to_send() == b""
        assert side.next_event() is None
        assert side.trailing_data == b""


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_handshake_over_a_stream_split_anywhere(chunk: int) -> None:
    pair = HandshakePair()
    pair.pump(chunk)
    assert completed(pair.initiator).remote_node_id == BOB.node_id
    assert completed(pair.responder).remote_node_id == ALICE.node_id


@FAST
@given(data=st.data())
def test_handshake_survives_any_split_of_each_message(data: st.DataObject) -> None:
    pair = HandshakePair()
    i, r = pair.initiator, pair.responder
    for sender, receiver in [(i, r), (r, i), (i, r)]:
        message = sender.data_to_send()
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
        for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True):
            receiver.receive(message[a:b])
    assert completed(pair.initiator).remote_node_id == BOB.node_id
    assert completed(pair.responder).remote_node_id == ALICE.node_id


def test_a_precomputed_proof_works_and_the_handshake_never_needs_the_identity_key() -> None:
    proof = sign_noise_identity(
        BOB, noise_static_public_key(static_of(BOB)), created_at_ns=NOW_NS - 10
    )
    bob = NoiseHandshake(
        initiator=False, static_private=static_of(BOB), prologue=PROLOGUE, identity_proof=proof
    )
    pair = HandshakePair(responder=bob)
    pair.pump()
    assert completed(pair.initiator).remote_identity_created_at_ns == NOW_NS - 10
    assert completed(pair.responder).remote_node_id == ALICE.node_id


def test_handshake_messages_have_the_documented_shape() -> None:
    pair = HandshakePair()
    pair.pump()
    message_1, message_3 = pair.sent("i->r")
    (message_2,) = pair.sent("r->i")
    for framed in (message_1, message_2, message_3):
        assert int.from_bytes(framed[:2], "big") == len(framed) - 2
    assert len(message_1) == 2 + 32  # -> e, no payload
    assert 2 + 32 + 48 + 16 < len(message_2) <= 2 + MAX_HANDSHAKE_MESSAGE_BYTES
    assert 2 + 48 + 16 < len(message_3) <= 2 + MAX_HANDSHAKE_MESSAGE_BYTES


def test_responder_receives_message_3_and_transport_data_in_one_read() -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    pair.initiator.receive(pair.responder.data_to_send())
    completed(pair.initiator)
    first_frame = pair.initiator.transport().encrypt(b"right behind message 3")
    pair.responder.receive(pair.initiator.data_to_send() + first_frame)
    completed(pair.responder)
    assert pair.responder.trailing_data == first_frame
    assert pair.responder.transport().decrypt(first_frame) == b"right behind message 3"


# -- wrong identities ----------------------------------------------------------------------


def test_initiator_rejects_a_peer_that_proves_another_id_than_dialled() -> None:
    pair = HandshakePair(initiator(expect=CAROL.node_id))
    pair.pump()
    reason = failed(pair.initiator)
    assert reason == f"dialled {CAROL.node_id} but the peer proved {BOB.node_id}"
    # It never sent message 3, so the responder is still waiting for it.
    assert len(pair.sent("i->r")) == 1
    assert pair.responder.state is HandshakeState.AWAIT_MESSAGE_3
    assert events(pair.responder) == []
    with pytest.raises(LocalOverlayError, match="failed"):
        pair.initiator.transport()


def test_responder_can_require_a_node_id_too() -> None:
    pair = HandshakePair(responder=responder(expect=CAROL.node_id))
    pair.pump()
    assert completed(pair.initiator).remote_node_id == BOB.node_id  # it finished its part
    assert failed(pair.responder) == f"dialled {CAROL.node_id} but the peer proved {ALICE.node_id}"


def test_a_node_cannot_handshake_with_its_own_identity() -> None:
    pair = HandshakePair(initiator(BOB), responder(BOB))
    pair.pump()
    assert "own identity" in failed(pair.initiator)


# -- binding to the QUIC connection, replay ------------------------------------------------


def test_a_handshake_relayed_onto_another_quic_connection_fails() -> None:
    # A man in the middle terminates the QUIC connection from Alice with its own
    # certificate and opens one to Bob, who shows his: it forwards the Noise bytes
    # untouched, but the two ends' prologues differ.
    pair = HandshakePair(
        initiator(expect=BOB.node_id, prologue=handshake_prologue(b"the relay's certificate")),
        responder(prologue=handshake_prologue(b"Bob's certificate")),
    )
    pair.pump()
    assert "another QUIC connection" in failed(pair.initiator)
    assert events(pair.responder) == []
    assert pair.responder.state is HandshakeState.AWAIT_MESSAGE_3


def test_replaying_an_initiator_transcript_cannot_complete() -> None:
    recorded = HandshakePair()
    recorded.pump()
    completed(recorded.responder)
    message_1, message_3 = recorded.sent("i->r")

    victim = responder()  # same identity, static key and prologue as the recorded one
    victim.receive(message_1)
    assert victim.data_to_send()  # a fresh message 2, with a fresh ephemeral key
    victim.receive(message_3)
    reason = failed(victim)
    assert "message 3 does not authenticate" in reason


def test_prologue_is_the_label_and_the_certificate_hash() -> None:
    assert PROLOGUE_LABEL + hashlib.sha256(CERT).digest() == PROLOGUE
    assert PROLOGUE_LABEL == b"plasm/overlay/v1\x00"
    assert handshake_prologue(CERT) == PROLOGUE
    assert handshake_prologue(CERT + b"x") != PROLOGUE
    with pytest.raises(ValueError, match="empty"):
        handshake_prologue(b"")


# -- a peer that sends what it likes -------------------------------------------------------


class RawPeer:
    """One end of Noise XX driven directly through noiseprotocol, payloads chosen freely."""

    def __init__(self, key: NodeKey, *, initiator: bool, prologue: bytes = PROLOGUE) -> None:
        self.key = key
        self.static_public = noise_static_public_key(static_of(key))
        self.connection = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        self.connection.set_keypair_from_private_bytes(Keypair.STATIC, static_of(key))
        self.connection.set_prologue(prologue)
        if initiator:
            self.connection.set_as_initiator()
        else:
            self.connection.set_as_responder()
        self.connection.start_handshake()

    def write(self, payload: bytes = b"") -> bytes:
        message = bytes(self.connection.write_message(payload))
        return len(message).to_bytes(2, "big") + message

    def read(self, framed: bytes) -> bytes:
        assert int.from_bytes(framed[:2], "big") == len(framed) - 2
        return bytes(self.connection.read_message(framed[2:]))


def pb_payload(envelope: SignedEnvelope, version: int = OVERLAY_VERSION) -> bytes:
    """A HandshakePayload built with the generated code, as another implementation would."""
    return overlay_pb2.HandshakePayload(
        identity=envelope_pb2.SignedEnvelope(
            payload=envelope.payload,
            signature=envelope.signature,
            signer_public_key=envelope.signer_public_key,
        ),
        overlay_version=version,
    ).SerializeToString()


def pb_identity(static_public: bytes, ns: int = NOW_NS) -> bytes:
    return overlay_pb2.NoiseIdentity(
        noise_static_public_key=static_public,
        created_at=Timestamp(seconds=ns // 10**9, nanos=ns % 10**9),
    ).SerializeToString()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def honest(peer: RawPeer) -> bytes:
    return pb_payload(
        envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    )


def tampered_signature(peer: RawPeer) -> bytes:
    env = envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    return pb_payload(dataclasses.replace(env, signature=flip(env.signature, 5)))


def tampered_signed_bytes(peer: RawPeer) -> bytes:
    env = envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    return pb_payload(dataclasses.replace(env, payload=flip(env.payload, 10)))


def claims_another_signer(peer: RawPeer) -> bytes:
    env = envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    return pb_payload(dataclasses.replace(env, signer_public_key=CAROL.public_key))


def wrong_domain(peer: RawPeer) -> bytes:
    return pb_payload(envelopes.sign(peer.key, RECEIPT_DOMAIN, pb_identity(peer.static_public)))


def signs_another_static_key(peer: RawPeer) -> bytes:
    other = noise_static_public_key(static_of(CAROL))
    return pb_payload(envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(other)))


def replays_carols_proof(peer: RawPeer) -> bytes:
    # A valid proof captured from Carol's handshakes: useless without her static key.
    carol_static = noise_static_public_key(static_of(CAROL))
    return pb_payload(sign_noise_identity(CAROL, carol_static, created_at_ns=NOW_NS))


def overlay_version_2(peer: RawPeer) -> bytes:
    env = envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    return pb_payload(env, version=2)


def no_overlay_version(peer: RawPeer) -> bytes:
    env = envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, pb_identity(peer.static_public))
    return pb_payload(env, version=0)


def signs_garbage(peer: RawPeer) -> bytes:
    return pb_payload(envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, b"\x0a\x05abc"))


def signs_an_identity_without_time(peer: RawPeer) -> bytes:
    claim = overlay_pb2.NoiseIdentity(noise_static_public_key=peer.static_public)
    return pb_payload(envelopes.sign(peer.key, NOISE_IDENTITY_DOMAIN, claim.SerializeToString()))


BAD_PROOFS: list[tuple[Callable[[RawPeer], bytes], str]] = [
    (tampered_signature, "identity proof does not verify: signature does not verify"),
    (tampered_signed_bytes, "identity proof does not verify: signature does not verify"),
    (claims_another_signer, "identity proof does not verify: signature does not verify"),
    (wrong_domain, "identity proof does not verify: signature does not verify"),
    (signs_another_static_key, "signs Noise static key"),
    (replays_carols_proof, "signs Noise static key"),
    (overlay_version_2, "the peer speaks overlay version 2, this node speaks 1"),
    (no_overlay_version, "the peer speaks overlay version 0"),
    (signs_garbage, "signed NoiseIdentity is malformed"),
    (signs_an_identity_without_time, "NoiseIdentity.created_at is missing"),
    (lambda peer: b"", "malformed HandshakePayload: HandshakePayload.identity is missing"),
    (lambda peer: b"\xff\xff\xff", "malformed HandshakePayload"),
]


def attack_initiator(payload: Callable[[RawPeer], bytes]) -> NoiseHandshake:
    """Alice dials; a raw responder answers message 2 with `payload`."""
    alice = initiator()
    mallory = RawPeer(BOB, initiator=False)
    mallory.read(alice.data_to_send())
    alice.receive(mallory.write(payload(mallory)))
    return alice


def attack_responder(payload: Callable[[RawPeer], bytes]) -> NoiseHandshake:
    """A raw initiator reaches Bob and sends `payload` in message 3."""
    bob = responder()
    mallory = RawPeer(ALICE, initiator=True)
    bob.receive(mallory.write())
    mallory.read(bob.data_to_send())
    bob.receive(mallory.write(payload(mallory)))
    return bob


@pytest.mark.parametrize("attack", [attack_initiator, attack_responder])
def test_a_proof_built_by_another_implementation_is_accepted(
    attack: Callable[[Callable[[RawPeer], bytes]], NoiseHandshake],
) -> None:
    # The control for the table below: the raw peer and the generated protobuf
    # code interoperate with the core's handshake.
    victim = attack(honest)
    expected = BOB if victim.is_initiator else ALICE
    assert completed(victim).remote_node_id == expected.node_id


@pytest.mark.parametrize("attack", [attack_initiator, attack_responder])
@pytest.mark.parametrize(("payload", "reason"), BAD_PROOFS)
def test_a_bad_identity_proof_fails_the_handshake(
    attack: Callable[[Callable[[RawPeer], bytes]], NoiseHandshake],
    payload: Callable[[RawPeer], bytes],
    reason: str,
) -> None:
    victim = attack(payload)
    assert reason in failed(victim)
    with pytest.raises(LocalOverlayError):
        victim.transport()


def test_a_low_order_ephemeral_key_fails_the_responder() -> None:
    bob = responder()
    bob.receive(b"\x00\x20" + bytes(32))  # X25519 with the zero point gives an all-zero secret
    assert "ephemeral key is unusable" in failed(bob)


# -- garbage, truncation, oversize ---------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33, 1000, 65535])
def test_message_1_of_the_wrong_size_fails_before_it_is_read(length: int) -> None:
    bob = responder()
    bob.receive(length.to_bytes(2, "big"))  # only the length: nothing else buffered
    assert failed(bob) == f"message 1 would be {length} bytes; it is exactly 32 bytes"


@pytest.mark.parametrize("length", [0, 95, MAX_HANDSHAKE_MESSAGE_BYTES + 1, 65535])
def test_message_2_of_an_impossible_size_fails_at_its_length(length: int) -> None:
    alice = initiator()
    alice.receive(length.to_bytes(2, "big"))
    assert f"message 2 would be {length} bytes" in failed(alice)


def test_truncated_message_2_fails() -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    message_2 = pair.responder.data_to_send()[2:]
    short = message_2[:-5]
    pair.initiator.receive(len(short).to_bytes(2, "big") + short)
    assert "message 2 does not authenticate" in failed(pair.initiator)


def test_an_incomplete_message_only_waits() -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    message_2 = pair.responder.data_to_send()
    pair.initiator.receive(message_2[:-1])
    assert pair.initiator.state is HandshakeState.AWAIT_MESSAGE_2
    assert events(pair.initiator) == []
    assert pair.initiator.data_to_send() == b""
    pair.initiator.receive(message_2[-1:])
    completed(pair.initiator)


@pytest.mark.parametrize("index", [0, 2, 33, 40, 100, -1])
def test_a_flipped_bit_in_message_2_never_completes(index: int) -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    message_2 = pair.responder.data_to_send()
    pair.initiator.receive(flip(message_2, index % len(message_2)))
    found = events(pair.initiator)
    assert all(isinstance(e, HandshakeFailed) for e in found)
    assert pair.initiator.state is not HandshakeState.COMPLETE


@FAST
@given(flip_message_3=st.booleans(), index=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_bit_stops_the_receiving_side_from_completing(
    flip_message_3: bool, index: int, bit: int
) -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    message_2 = pair.responder.data_to_send()
    receiver, message = pair.initiator, message_2
    if flip_message_3:
        pair.initiator.receive(message_2)
        receiver, message = pair.responder, pair.initiator.data_to_send()
    index %= len(message)
    corrupted = message[:index] + bytes([message[index] ^ 1 << bit]) + message[index + 1 :]
    receiver.receive(corrupted)
    assert receiver.state is not HandshakeState.COMPLETE
    assert all(isinstance(e, HandshakeFailed) for e in events(receiver))


def test_garbage_of_a_plausible_length_fails_message_3() -> None:
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    pair.responder.data_to_send()
    pair.responder.receive(b"\x00\x80" + b"\xaa" * 128)
    assert "message 3 does not authenticate" in failed(pair.responder)


def test_after_a_failure_input_is_ignored_and_nothing_is_sent() -> None:
    bob = responder()
    bob.receive(b"\xff\xff")
    failed(bob)
    bob.receive(b"more bytes" * 1000)
    assert bob.next_event() is None
    assert bob.data_to_send() == b""
    assert bob.state is HandshakeState.FAILED


def test_input_after_completion_is_the_callers_mistake() -> None:
    pair = HandshakePair()
    pair.pump()
    completed(pair.initiator)
    with pytest.raises(LocalOverlayError, match="belong to the transport"):
        pair.initiator.receive(b"x")


@FAST
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), as_initiator=st.booleans())
def test_random_bytes_only_ever_fail_the_handshake(chunks: list[bytes], as_initiator: bool) -> None:
    handshake = initiator() if as_initiator else responder()
    handshake.data_to_send()
    for chunk in chunks:
        handshake.receive(chunk)  # raises nothing at all for peer input
    found = events(handshake)
    assert len(found) <= 1
    assert all(isinstance(e, HandshakeFailed) for e in found)
    assert handshake.state is not HandshakeState.COMPLETE


@FAST
@given(data=st.data())
def test_random_bytes_after_a_real_message_only_fail_the_handshake(data: st.DataObject) -> None:
    # Past message 1, so the garbage reaches Noise decryption and proof checks.
    pair = HandshakePair()
    pair.responder.receive(pair.initiator.data_to_send())
    pair.responder.data_to_send()
    body = data.draw(st.binary(min_size=64, max_size=400))
    pair.responder.receive(len(body).to_bytes(2, "big") + body)
    assert "message 3" in failed(pair.responder)


# -- transport -----------------------------------------------------------------------------


@pytest.fixture
def transports() -> tuple[NoiseTransport, NoiseTransport]:
    pair = HandshakePair()
    pair.pump()
    completed(pair.initiator)
    completed(pair.responder)
    return pair.initiator.transport(), pair.responder.transport()


def test_transport_round_trips_both_ways(transports: tuple[NoiseTransport, NoiseTransport]) -> None:
    alice, bob = transports
    for i in range(20):
        message = bytes([i]) * (i * 97)
        assert bob.decrypt(alice.encrypt(message)) == message
        assert alice.decrypt(bob.encrypt(message[::-1])) == message[::-1]
    ciphertext = alice.encrypt(b"same")
    assert ciphertext != alice.encrypt(b"same")  # the nonce moves on


def test_transport_enforces_the_plaintext_cap(
    transports: tuple[NoiseTransport, NoiseTransport],
) -> None:
    alice, bob = transports
    largest = b"\x07" * NOISE_MAX_PLAINTEXT_BYTES
    ciphertext = alice.encrypt(largest)
    assert len(ciphertext) == NOISE_MAX_MESSAGE_BYTES == 65535
    assert bob.decrypt(ciphertext) == largest
    with pytest.raises(LocalOverlayError, match="65519"):
        alice.encrypt(largest + b"!")
    assert not alice.failed  # refusing to send breaks nothing
    assert bob.decrypt(alice.encrypt(b"still fine")) == b"still fine"


@pytest.mark.parametrize("tamper", ["flip", "truncate", "extend", "replay", "reorder"])
def test_transport_rejects_forged_or_misordered_ciphertext(
    transports: tuple[NoiseTransport, NoiseTransport], tamper: str
) -> None:
    alice, bob = transports
    first, second = alice.encrypt(b"first message"), alice.encrypt(b"second message")
    if tamper == "replay":
        assert bob.decrypt(first) == b"first message"
        bad = first
    elif tamper == "reorder":
        bad = second
    else:
        bad = {"flip": flip(first, 3), "truncate": first[:-1], "extend": first + b"\x00"}[tamper]
    with pytest.raises(RemoteOverlayError, match="does not authenticate"):
        bob.decrypt(bad)
    assert bob.failed
    with pytest.raises(LocalOverlayError, match="closed"):
        bob.decrypt(second)
    with pytest.raises(LocalOverlayError, match="closed"):
        bob.encrypt(b"reply")


@pytest.mark.parametrize("size", [0, 15, NOISE_MAX_MESSAGE_BYTES + 1])
def test_transport_rejects_impossible_ciphertext_sizes(
    transports: tuple[NoiseTransport, NoiseTransport], size: int
) -> None:
    _, bob = transports
    with pytest.raises(RemoteOverlayError, match="a Noise message is"):
        bob.decrypt(b"\x00" * size)


@FAST
@given(junk=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_transport_decrypt_of_random_bytes_raises_only_protocol_errors(junk: list[bytes]) -> None:
    pair = HandshakePair()
    pair.pump()
    bob = pair.responder.transport()
    for ciphertext in junk:
        with pytest.raises(OverlayProtocolError):
            bob.decrypt(ciphertext)


# -- construction --------------------------------------------------------------------------


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NoiseHandshake.initiator(ALICE, b"short", PROLOGUE, now_ns=NOW_NS)
    with pytest.raises(ValueError, match="prologue is empty"):
        NoiseHandshake.initiator(ALICE, static_of(ALICE), b"", now_ns=NOW_NS)
    with pytest.raises(InvalidIdError):
        NoiseHandshake.initiator(ALICE, static_of(ALICE), PROLOGUE, "not-an-id", now_ns=NOW_NS)
    stale = sign_noise_identity(
        ALICE, noise_static_public_key(static_of(CAROL)), created_at_ns=NOW_NS
    )
    with pytest.raises(LocalOverlayError, match="another Noise static key"):
        NoiseHandshake(
            initiator=True, static_private=static_of(ALICE), prologue=PROLOGUE, identity_proof=stale
        )
    forged = dataclasses.replace(stale, signature=bytes(64))
    with pytest.raises(LocalOverlayError, match="proof is invalid"):
        NoiseHandshake(
            initiator=True,
            static_private=static_of(ALICE),
            prologue=PROLOGUE,
            identity_proof=forged,
        )


def test_transport_is_only_available_once_complete() -> None:
    pair = HandshakePair()
    with pytest.raises(LocalOverlayError, match="awaiting message 2"):
        pair.initiator.transport()
    pair.pump()
    assert pair.initiator.transport() is pair.initiator.transport()


def test_events_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="reason"):
        HandshakeFailed(reason="")
    with pytest.raises(InvalidIdError):
        HandshakeComplete(
            remote_node_id="x",
            remote_public_key=bytes(32),
            remote_static_key=bytes(32),
            remote_identity_created_at_ns=0,
            handshake_hash=bytes(32),
        )


# -- the hand-written protobuf of NoiseIdentity and HandshakePayload -----------------------

keys32 = st.binary(min_size=32, max_size=32)
timestamps = st.integers(MIN_TIMESTAMP_NS, MAX_TIMESTAMP_NS)
envelope_values = st.builds(
    SignedEnvelope,
    payload=st.binary(max_size=200),
    signature=st.binary(max_size=80),
    signer_public_key=st.binary(max_size=40),
)


def as_pb_timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 10**9, nanos=ns % 10**9)


@FAST
@given(key=keys32, ns=timestamps)
def test_noise_identity_encodes_exactly_as_the_generated_code(key: bytes, ns: int) -> None:
    ours = NoiseIdentity(noise_static_public_key=key, created_at_ns=ns)
    theirs = overlay_pb2.NoiseIdentity(noise_static_public_key=key, created_at=as_pb_timestamp(ns))
    assert ours.encode() == theirs.SerializeToString(deterministic=True)
    assert NoiseIdentity.decode(theirs.SerializeToString()) == ours
    parsed = overlay_pb2.NoiseIdentity.FromString(ours.encode())
    assert parsed.noise_static_public_key == key
    assert parsed.created_at.seconds * 10**9 + parsed.created_at.nanos == ns


@FAST
@given(env=envelope_values, version=st.integers(0, 2**32 - 1))
def test_handshake_payload_encodes_exactly_as_the_generated_code(
    env: SignedEnvelope, version: int
) -> None:
    ours = HandshakePayload(identity=env, overlay_version=version)
    theirs = overlay_pb2.HandshakePayload(
        identity=envelope_pb2.SignedEnvelope(
            payload=env.payload, signature=env.signature, signer_public_key=env.signer_public_key
        ),
        overlay_version=version,
    )
    assert ours.encode() == theirs.SerializeToString(deterministic=True)
    assert HandshakePayload.decode(theirs.SerializeToString()) == ours


def test_unknown_fields_are_skipped() -> None:
    identity = NoiseIdentity(noise_static_public_key=bytes(range(32)), created_at_ns=NOW_NS)
    # Field 9 of each wire type a newer sender might add: varint, i64, len, i32.
    extra = b"\x48\x96\x01" + b"\x49" + bytes(8) + b"\x4a\x02hi" + b"\x4d" + bytes(4)
    assert NoiseIdentity.decode(extra + identity.encode() + extra) == identity


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\x20" + bytes(31), "runs past the end"),
        (b"\x0a", "truncated varint"),
        (b"\x0a" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x08" + b"\xff" * 9 + b"\x7f", "above 64 bits"),
        (b"\x08\x01", "field 1 has wire type 0"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x00", "invalid field number 0"),
        (b"\x0a\x20" + bytes(32) + b"\x0a\x20" + bytes(32), "field 1 appears twice"),
        (b"\x0a\x1f" + bytes(31) + b"\x12\x00", "is 31 bytes, not 32"),
        (b"\x0a\x20" + bytes(32), "NoiseIdentity.created_at is missing"),
        (b"\x0a\x20" + bytes(32) + b"\x12\x06\x10\x80\x94\xeb\xdc\x03", "nanos must be"),
        (
            b"\x0a\x20" + bytes(32) + b"\x12\x07\x08\x80\x80\x80\x80\x80\x20",
            "seconds 1099511627776",
        ),
        (
            b"\x0a\x20" + bytes(32) + b"\x12\x0b\x08\xff\x91\xb8\xc3\x98\xfe\xff\xff\xff\x01",
            "seconds -62135596801 out of range",
        ),
    ],
)
def test_malformed_noise_identity_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteOverlayError, match=reason):
        NoiseIdentity.decode(data)


def test_overlay_version_above_uint32_is_refused() -> None:
    with pytest.raises(RemoteOverlayError, match="above uint32"):
        HandshakePayload.decode(b"\x0a\x00\x10\x80\x80\x80\x80\x10")


def test_message_values_are_validated() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NoiseIdentity(noise_static_public_key=b"", created_at_ns=0)
    with pytest.raises(ValueError, match="range"):
        NoiseIdentity(noise_static_public_key=bytes(32), created_at_ns=MAX_TIMESTAMP_NS + 1)
    with pytest.raises(ValueError, match="uint32"):
        HandshakePayload(
            identity=SignedEnvelope(payload=b"", signature=b"", signer_public_key=b""),
            overlay_version=-1,
        )


@FAST
@given(data=st.binary(max_size=300))
def test_decoding_random_bytes_raises_only_the_protocol_error(data: bytes) -> None:
    for decode in (NoiseIdentity.decode, HandshakePayload.decode):
        with contextlib.suppress(RemoteOverlayError):
            decode(data)
