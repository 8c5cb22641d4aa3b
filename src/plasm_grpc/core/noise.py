"""The overlay's Noise handshake and transport, sans-I/O (DESIGN.md item 5).

Noise_XX_25519_ChaChaPoly_SHA256, through `noiseprotocol`::

    -> e                                    message 1, empty payload
    <- e, ee, s, es    + HandshakePayload   message 2: the responder's proof
    -> s, se           + HandshakePayload   message 3: the initiator's proof

**Identity.** Each side's HandshakePayload carries a SignedEnvelope under
NOISE_IDENTITY_DOMAIN whose payload is NoiseIdentity{its Noise static public
key}, signed by its Ed25519 identity key. The receiver verifies the signature
over the bytes it received, only then decodes them, and checks that the
signed key is the static key Noise just authenticated (the peer proved it
holds the matching private key by completing `es`/`se`). The peer's node id is
SHA-256 of the envelope's Ed25519 key; if the caller dialled a particular
node id and the peer proved another, the handshake fails.

**Binding to the QUIC connection.** Both ends set the Noise prologue to
`handshake_prologue(server certificate)`: both see the QUIC server's
certificate. Noise hashes the prologue into the handshake hash, which is the
associated data of every encrypted handshake field, so when the two ends'
prologues differ the first encrypted field (the responder's static key in
message 2) fails to authenticate. Someone relaying the Noise messages between
two QUIC connections it terminates shows its own certificate on at least one
of them (it cannot finish TLS under another server's certificate without that
server's private key), so the prologues differ and the relay fails. A plain
replay fails anyway: both sides' ephemeral keys are fresh. This needs two
things of the adapter: each node's QUIC certificate key is its own (never
shared), and the QUIC client checks the server's CertificateVerify (aioquic
always does, whatever its verify_mode).

**I/O** is pulled, as in aioquic: `receive(data)` in, `data_to_send()` and
`next_event()` out. On the byte stream each handshake message is a u16
big-endian length and the Noise message, so the handshake runs over any
stream and takes its bytes in any split, one at a time included. Only one
message is buffered at a time, at most MAX_HANDSHAKE_MESSAGE_BYTES; a length
above what the next message can be fails the handshake before any of it is
buffered.

**Failures.** Whatever the peer gets wrong (garbage, a wrong length, a
ciphertext that does not authenticate, a bad proof, an unexpected identity)
ends the handshake with one `HandshakeFailed(reason)` event; bytes received
after that are ignored and nothing is sent. `receive` raises nothing for
anything a peer sends. Misuse by the caller raises `LocalOverlayError`.

**Randomness.** The ephemeral keys come from the OS through noiseprotocol,
not from an argument like the core's other randomness: an ephemeral key used
twice gives the sessions' keys away, so there is no way to pass one in.
Nothing here needs the clock except `now_ns`, the proof's creation time.

**State transitions** are the `_STEPS` table: what each state expects next,
its size bounds, whether it carries a proof, what we answer, and the state
that follows.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)

from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.envelope import NOISE_IDENTITY_DOMAIN, SignedEnvelope
from plasm_grpc.core.errors import VerificationError
from plasm_grpc.core.handshake_wire import (
    NOISE_STATIC_KEY_BYTES,
    HandshakePayload,
    NoiseIdentity,
)
from plasm_grpc.core.ids import check_hex64
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.overlay_errors import LocalOverlayError, RemoteOverlayError

__all__ = [
    "MAX_HANDSHAKE_MESSAGE_BYTES",
    "NOISE_MAX_MESSAGE_BYTES",
    "NOISE_MAX_PLAINTEXT_BYTES",
    "NOISE_PROTOCOL_NAME",
    "OVERLAY_VERSION",
    "PROLOGUE_LABEL",
    "HandshakeComplete",
    "HandshakeEvent",
    "HandshakeFailed",
    "HandshakeState",
    "NoiseHandshake",
    "NoiseLocalIdentity",
    "NoiseTransport",
    "handshake_prologue",
    "noise_static_public_key",
    "sign_noise_identity",
]

NOISE_PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
OVERLAY_VERSION: Final = 1
PROLOGUE_LABEL: Final = b"plasm/overlay/v1\x00"

# Noise's limit on any message (spec section 3), and the AEAD tag in each.
NOISE_MAX_MESSAGE_BYTES: Final = 65535
NOISE_TAG_BYTES: Final = 16
NOISE_MAX_PLAINTEXT_BYTES: Final = NOISE_MAX_MESSAGE_BYTES - NOISE_TAG_BYTES  # 65519

# An honest message 2 or 3 is about 250 bytes (keys, tags and a ~180-byte
# HandshakePayload); the bound leaves room for the payload to grow.
MAX_HANDSHAKE_MESSAGE_BYTES: Final = 1024
HANDSHAKE_LENGTH_PREFIX_BYTES: Final = 2

_DH_BYTES: Final = 32  # an X25519 public key
_ENCRYPTED_KEY_BYTES: Final = _DH_BYTES + NOISE_TAG_BYTES

# What noiseprotocol and `cryptography` raise for bad input. ValueError covers
# cryptography's refusal of a low-order X25519 point (an all-zero DH output).
_NOISE_ERRORS: Final = (
    NoiseValueError,
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    InvalidTag,
    ValueError,
)


# noiseprotocol's X25519 keypair class (what set_keypair_from_private_bytes builds).
_NOISE_DH_KEYPAIR: Final[Any] = NoiseConnection.from_name(
    NOISE_PROTOCOL_NAME
).noise_protocol.dh_fn.klass


def handshake_prologue(server_certificate_der: bytes) -> bytes:
    """The Noise prologue binding a handshake to one QUIC connection.

    ``b"plasm/overlay/v1\\x00" || SHA-256(server certificate, DER)``: both ends
    of a QUIC connection see the server's certificate (see the module
    docstring for why this stops a relayed handshake).
    """
    if not server_certificate_der:
        raise ValueError("the server certificate is empty")
    return PROLOGUE_LABEL + hashlib.sha256(server_certificate_der).digest()


def noise_static_public_key(static_private: bytes) -> bytes:
    """The X25519 public key of a 32-byte Noise static private key."""
    _check_static_private(static_private)
    private = X25519PrivateKey.from_private_bytes(static_private)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_noise_identity(
    identity: NodeKey, static_public_key: bytes, *, created_at_ns: int
) -> SignedEnvelope:
    """`identity`'s signed claim that `static_public_key` is its Noise static key.

    The key is long-lived, so a node can sign this once at start-up and pass
    it to every `NoiseHandshake`, which then never holds the identity key.
    """
    claim = NoiseIdentity(noise_static_public_key=static_public_key, created_at_ns=created_at_ns)
    return envelopes.sign(identity, NOISE_IDENTITY_DOMAIN, claim.encode())


def _check_static_private(static_private: bytes) -> None:
    if len(static_private) != NOISE_STATIC_KEY_BYTES:
        raise ValueError(
            f"a Noise static private key is {NOISE_STATIC_KEY_BYTES} bytes, "
            f"got {len(static_private)}"
        )


class NoiseLocalIdentity:
    """This node's side of every handshake: its Noise static key and identity proof.

    Checked once, here: the proof must verify and sign the static key's
    public half (LocalOverlayError otherwise). A node builds one at start-up
    and passes it to each `NoiseHandshake` as `local`, which then does no
    verification of its own proof per connection. Immutable.
    """

    __slots__ = ("_keypair", "node_id", "payload", "proof", "static_public_key")

    def __init__(self, static_private: bytes, identity_proof: SignedEnvelope) -> None:
        _check_static_private(static_private)
        try:
            claim = NoiseIdentity.decode(envelopes.verify(identity_proof, NOISE_IDENTITY_DOMAIN))
        except (VerificationError, RemoteOverlayError) as e:
            raise LocalOverlayError(f"this node's identity proof is invalid: {e}") from e
        keypair: Any = _NOISE_DH_KEYPAIR.from_private_bytes(static_private)
        static_public = bytes(keypair.public_bytes)
        if not hmac.compare_digest(claim.noise_static_public_key, static_public):
            raise LocalOverlayError("this node's identity proof signs another Noise static key")
        self._keypair: Final[Any] = keypair
        self.static_public_key: Final = static_public
        self.proof: Final = identity_proof
        self.node_id: Final = identity_proof.signer_node_id
        self.payload: Final = HandshakePayload(
            identity=identity_proof, overlay_version=OVERLAY_VERSION
        ).encode()


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete:
    """The peer proved its identity; `NoiseHandshake.transport()` is ready.

    The initiator gets this on sending message 3, before the responder has
    checked the initiator's proof: the responder may still drop the connection.
    The initiator reveals its identity only to a responder that proved the
    expected one (its proof is checked before message 3 is written).
    """

    remote_node_id: str
    remote_public_key: bytes  # Ed25519, 32 bytes
    remote_static_key: bytes  # X25519 Noise static key, 32 bytes
    remote_identity_created_at_ns: int
    handshake_hash: bytes  # Noise's h: unique to this session, for channel binding

    def __post_init__(self) -> None:
        check_hex64(self.remote_node_id, "remote_node_id")
        for name in ("remote_public_key", "remote_static_key", "handshake_hash"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFailed:
    """The handshake is over without a session; the adapter closes the connection."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("a HandshakeFailed needs a reason")


HandshakeEvent = HandshakeComplete | HandshakeFailed


# -- the state machine ---------------------------------------------------------------------


class HandshakeState(enum.Enum):
    AWAIT_MESSAGE_1 = "awaiting message 1"  # responder, at the start
    AWAIT_MESSAGE_2 = "awaiting message 2"  # initiator, message 1 sent
    AWAIT_MESSAGE_3 = "awaiting message 3"  # responder, message 2 sent
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Step:
    """What a state expects next, and what reading it leads to."""

    message: int  # its number in the XX pattern
    min_bytes: int
    max_bytes: int
    carries_proof: bool
    reply: bool  # we then write the next message, which carries our proof
    next_state: HandshakeState


_STEPS: Final[Mapping[HandshakeState, _Step]] = MappingProxyType(
    {
        # -> e: exactly one ephemeral key, no payload.
        HandshakeState.AWAIT_MESSAGE_1: _Step(
            message=1,
            min_bytes=_DH_BYTES,
            max_bytes=_DH_BYTES,
            carries_proof=False,
            reply=True,
            next_state=HandshakeState.AWAIT_MESSAGE_3,
        ),
        # <- e, ee, s, es: ephemeral key, encrypted static key, encrypted proof.
        HandshakeState.AWAIT_MESSAGE_2: _Step(
            message=2,
            min_bytes=_DH_BYTES + _ENCRYPTED_KEY_BYTES + NOISE_TAG_BYTES,
            max_bytes=MAX_HANDSHAKE_MESSAGE_BYTES,
            carries_proof=True,
            reply=True,
            next_state=HandshakeState.COMPLETE,
        ),
        # -> s, se: encrypted static key, encrypted proof.
        HandshakeState.AWAIT_MESSAGE_3: _Step(
            message=3,
            min_bytes=_ENCRYPTED_KEY_BYTES + NOISE_TAG_BYTES,
            max_bytes=MAX_HANDSHAKE_MESSAGE_BYTES,
            carries_proof=True,
            reply=False,
            next_state=HandshakeState.COMPLETE,
        ),
    }
)


def _frame(message: bytes) -> bytes:
    return len(message).to_bytes(HANDSHAKE_LENGTH_PREFIX_BYTES, "big") + message


class NoiseHandshake:
    """One side of the overlay's Noise XX handshake. See the module docstring."""

    __slots__ = (
        "_buffer",
        "_connection",
        "_events",
        "_expected_node_id",
        "_initiator",
        "_message_length",
        "_outgoing",
        "_own_node_id",
        "_own_payload",
        "_state",
        "_trailing",
        "_transport",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes | None = None,
        prologue: bytes,
        identity_proof: SignedEnvelope | None = None,
        expected_node_id: str | None = None,
        local: NoiseLocalIdentity | None = None,
    ) -> None:
        """A handshake presenting `identity_proof` (see `sign_noise_identity`).

        Pass either `static_private` and `identity_proof`, or `local`: the same
        two, checked once (a node reuses one `NoiseLocalIdentity` for all its
        handshakes instead of re-verifying its own proof each time).

        Raises LocalOverlayError if the proof does not verify or signs another
        static key than `static_private`'s: the peer would refuse it anyway.
        """
        if local is None:
            if static_private is None or identity_proof is None:
                raise TypeError("pass static_private and identity_proof, or local")
            local = NoiseLocalIdentity(static_private, identity_proof)
        elif static_private is not None or identity_proof is not None:
            raise TypeError("pass static_private and identity_proof, or local, not both")
        if not prologue:
            raise ValueError("the prologue is empty: use handshake_prologue(server certificate)")
        if expected_node_id is not None:
            check_hex64(expected_node_id, "expected_node_id")

        self._initiator = initiator
        self._expected_node_id = expected_node_id
        self._own_node_id = local.node_id
        self._own_payload = local.payload
        self._buffer = bytearray()
        self._message_length: int | None = None
        self._outgoing = bytearray()
        self._events: deque[HandshakeEvent] = deque()
        self._trailing = b""
        self._transport: NoiseTransport | None = None

        connection: Any = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        # The static keypair object is only read by noiseprotocol, so one per
        # node serves every handshake (set_keypair_from_private_bytes would
        # rebuild it from the private bytes each time).
        connection.noise_protocol.keypairs["s"] = local._keypair
        connection.set_prologue(prologue)
        if initiator:
            connection.set_as_initiator()
        else:
            connection.set_as_responder()
        connection.start_handshake()
        self._connection = connection
        if initiator:
            self._outgoing += _frame(bytes(connection.write_message(b"")))
            self._state = HandshakeState.AWAIT_MESSAGE_2
        else:
            self._state = HandshakeState.AWAIT_MESSAGE_1

    @classmethod
    def initiator(
        cls,
        identity: NodeKey,
        static_private: bytes,
        prologue: bytes,
        expected_node_id: str | None = None,
        *,
        now_ns: int,
    ) -> NoiseHandshake:
        """The dialling side. `expected_node_id`: the node id that was dialled, if known."""
        return cls._with_key(
            identity,
            static_private,
            initiator=True,
            prologue=prologue,
            expected_node_id=expected_node_id,
            now_ns=now_ns,
        )

    @classmethod
    def responder(
        cls,
        identity: NodeKey,
        static_private: bytes,
        prologue: bytes,
        expected_node_id: str | None = None,
        *,
        now_ns: int,
    ) -> NoiseHandshake:
        """The accepting side (usually with no `expected_node_id`)."""
        return cls._with_key(
            identity,
            static_private,
            initiator=False,
            prologue=prologue,
            expected_node_id=expected_node_id,
            now_ns=now_ns,
        )

    @classmethod
    def _with_key(
        cls,
        identity: NodeKey,
        static_private: bytes,
        *,
        initiator: bool,
        prologue: bytes,
        expected_node_id: str | None,
        now_ns: int,
    ) -> NoiseHandshake:
        proof = sign_noise_identity(
            identity, noise_static_public_key(static_private), created_at_ns=now_ns
        )
        return cls(
            initiator=initiator,
            static_private=static_private,
            prologue=prologue,
            identity_proof=proof,
            expected_node_id=expected_node_id,
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> HandshakeState:
        return self._state

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last handshake message, in the same `receive` call.

        They belong to the transport (the initiator may send its first
        transport frame right behind message 3).
        """
        return self._trailing

    def transport(self) -> NoiseTransport:
        """The session's transport, once the handshake is COMPLETE."""
        if self._transport is None:
            raise LocalOverlayError(f"no transport: the handshake is {self._state.value}")
        return self._transport

    # -- input and output ----------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Feed bytes from the peer, in any split. Never raises for what a peer sends."""
        if not data or self._state is HandshakeState.FAILED:
            return  # after a failure: already reported; the adapter is closing the connection
        if self._state is HandshakeState.COMPLETE:
            raise LocalOverlayError(
                "the handshake is complete: later bytes belong to the transport"
            )
        view = memoryview(data)
        try:
            while view and self._state in _STEPS:
                step = _STEPS[self._state]
                if self._message_length is None:
                    view = self._take(view, HANDSHAKE_LENGTH_PREFIX_BYTES)
                    if len(self._buffer) < HANDSHAKE_LENGTH_PREFIX_BYTES:
                        break
                    length = int.from_bytes(self._buffer, "big")
                    self._buffer.clear()
                    if not step.min_bytes <= length <= step.max_bytes:
                        raise RemoteOverlayError(
                            f"message {step.message} would be {length} bytes; it is {_bounds(step)}"
                        )
                    self._message_length = length
                view = self._take(view, self._message_length)
                if len(self._buffer) < self._message_length:
                    break
                message = bytes(self._buffer)
                self._buffer.clear()
                self._message_length = None
                self._process(step, message)
        except RemoteOverlayError as e:
            self._fail(str(e))
            return
        if self.state is HandshakeState.COMPLETE:  # the property: mypy keeps no narrowing
            self._trailing = bytes(view)

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (possibly none)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> HandshakeEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals -----------------------------------------------------------------------

    def _take(self, view: memoryview, until: int) -> memoryview:
        """Move bytes from `view` into the buffer until it holds `until`; return the rest."""
        need = until - len(self._buffer)
        self._buffer += view[:need]
        return view[need:]

    def _process(self, step: _Step, message: bytes) -> None:
        # The HandshakeState object holds `rs`; noiseprotocol drops its own
        # reference to it when the handshake finishes, so keep ours first.
        noise_state = self._connection.noise_protocol.handshake_state
        try:
            payload = bytes(self._connection.read_message(message))
        except _NOISE_ERRORS as e:
            raise RemoteOverlayError(_read_failure(step, e)) from e
        proven = None
        if step.carries_proof:
            proven = self._check_proof(step, payload, bytes(noise_state.rs.public_bytes))
        if step.reply:
            try:
                reply = bytes(self._connection.write_message(self._own_payload))
            except _NOISE_ERRORS as e:
                # Writing message 2 computes DH(e, re): it fails for a low-order re.
                raise RemoteOverlayError(
                    f"the peer's ephemeral key is unusable ({type(e).__name__})"
                ) from e
            self._outgoing += _frame(reply)
        self._state = step.next_state
        if self._state is HandshakeState.COMPLETE:
            assert proven is not None  # the last message of either role carries a proof
            self._events.append(
                HandshakeComplete(
                    remote_node_id=proven.remote_node_id,
                    remote_public_key=proven.remote_public_key,
                    remote_static_key=proven.remote_static_key,
                    remote_identity_created_at_ns=proven.remote_identity_created_at_ns,
                    handshake_hash=bytes(self._connection.get_handshake_hash()),
                )
            )
            self._transport = NoiseTransport(self._connection)

    def _check_proof(self, step: _Step, payload: bytes, remote_static: bytes) -> _Proven:
        where = f"message {step.message}"
        try:
            message = HandshakePayload.decode(payload)
        except RemoteOverlayError as e:
            raise RemoteOverlayError(f"{where}: malformed HandshakePayload: {e}") from e
        if message.overlay_version != OVERLAY_VERSION:
            raise RemoteOverlayError(
                f"the peer speaks overlay version {message.overlay_version}, "
                f"this node speaks {OVERLAY_VERSION}"
            )
        # Verify the signature over the bytes received, and only then decode them.
        try:
            signed = envelopes.verify(message.identity, NOISE_IDENTITY_DOMAIN)
        except VerificationError as e:
            raise RemoteOverlayError(f"the peer's identity proof does not verify: {e}") from e
        try:
            claim = NoiseIdentity.decode(signed)
        except RemoteOverlayError as e:
            raise RemoteOverlayError(f"the peer's signed NoiseIdentity is malformed: {e}") from e
        if not hmac.compare_digest(claim.noise_static_public_key, remote_static):
            raise RemoteOverlayError(
                "the peer's identity proof signs Noise static key "
                f"{claim.noise_static_public_key.hex()}, but it used {remote_static.hex()}"
            )
        node_id = message.identity.signer_node_id
        if node_id == self._own_node_id:
            raise RemoteOverlayError(
                "the peer proved this node's own identity (a reflected handshake, "
                "or a node dialling itself)"
            )
        if self._expected_node_id is not None and node_id != self._expected_node_id:
            raise RemoteOverlayError(
                f"dialled {self._expected_node_id} but the peer proved {node_id}"
            )
        return _Proven(
            remote_node_id=node_id,
            remote_public_key=message.identity.signer_public_key,
            remote_static_key=remote_static,
            remote_identity_created_at_ns=claim.created_at_ns,
        )

    def _fail(self, reason: str) -> None:
        self._state = HandshakeState.FAILED
        self._buffer.clear()
        self._outgoing.clear()
        self._message_length = None
        self._events.append(HandshakeFailed(reason=reason))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Proven:
    remote_node_id: str
    remote_public_key: bytes
    remote_static_key: bytes
    remote_identity_created_at_ns: int


def _bounds(step: _Step) -> str:
    if step.min_bytes == step.max_bytes:
        return f"exactly {step.min_bytes} bytes"
    return f"{step.min_bytes}..{step.max_bytes} bytes"


def _read_failure(step: _Step, error: BaseException) -> str:
    if step.message == 2 and isinstance(error, InvalidTag):
        # The responder's static key is the first field encrypted under the
        # prologue-bound handshake hash.
        return (
            "message 2 does not authenticate: the peer saw another QUIC connection "
            "(different server certificate, so a relayed handshake) or the bytes "
            "were corrupted"
        )
    if step.message == 3 and isinstance(error, InvalidTag):
        return (
            "message 3 does not authenticate: it was not made for this handshake "
            "(a replay, a relay, or corrupted bytes)"
        )
    return f"message {step.message} is invalid ({type(error).__name__}: {error})"


# -- transport -----------------------------------------------------------------------------


class NoiseTransport:
    """The encrypted session after the handshake (`NoiseHandshake.transport()`).

    One Noise transport message per call.

    Messages must be decrypted in the order they were encrypted (the nonce is
    a counter), which a QUIC stream guarantees. A ciphertext that does not
    authenticate ends the session: every later call raises.
    """

    __slots__ = ("_connection", "_failure")

    def __init__(self, connection: Any) -> None:
        if not connection.handshake_finished:
            raise LocalOverlayError("the Noise handshake is not finished")
        self._connection = connection
        self._failure: str | None = None

    def encrypt(self, plaintext: bytes) -> bytes:
        """One Noise transport message: at most NOISE_MAX_PLAINTEXT_BYTES of plaintext."""
        self._check_usable()
        if len(plaintext) > NOISE_MAX_PLAINTEXT_BYTES:
            raise LocalOverlayError(
                f"a Noise message holds at most {NOISE_MAX_PLAINTEXT_BYTES} bytes of "
                f"plaintext, got {len(plaintext)}: chunk it"
            )
        try:
            return bytes(self._connection.encrypt(bytes(plaintext)))
        except NoiseMaxNonceError as e:  # 2**64 - 1 messages: unreachable in practice
            self._failure = "the sending nonce is exhausted"
            raise LocalOverlayError(self._failure) from e

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext of the peer's next message; RemoteOverlayError if it is forged."""
        self._check_usable()
        if not NOISE_TAG_BYTES <= len(ciphertext) <= NOISE_MAX_MESSAGE_BYTES:
            self._failure = (
                f"a Noise message is {NOISE_TAG_BYTES}..{NOISE_MAX_MESSAGE_BYTES} bytes, "
                f"got {len(ciphertext)}"
            )
            raise RemoteOverlayError(self._failure)
        try:
            return bytes(self._connection.decrypt(bytes(ciphertext)))
        except _NOISE_ERRORS as e:
            self._failure = "a message from the peer does not authenticate"
            raise RemoteOverlayError(self._failure) from e

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LocalOverlayError(f"the Noise session is closed: {self._failure}")
