"""The Noise handshake of one overlay connection, over its QUIC connection
(DESIGN.md item 5; the protocol itself is core/noise.py).

Owns what an endpoint presents in every handshake (`LocalIdentity`), the
binding of a handshake to its QUIC connection, and the check of who the peer
is:

**Binding.** QUIC's own handshake comes first and must have negotiated
`ALPN`. Both ends then run Noise XX on the connection's stream 0 with the
prologue `handshake_prologue(the QUIC server's certificate)`: the server knows
its own certificate from the start, the client reads the one its QUIC
handshake received. aioquic checks the server's CertificateVerify (the client
configuration need not trust the certificate: identity comes from Noise), so
a handshake relayed between two QUIC connections fails (core/noise.py says
why).

**Identity.** The peer's node id is whatever its Noise proof shows; a dialler
names the node id it expects and the handshake fails for any other.

`OverlayHandshake` is driven by `OverlayConnection`: it takes the QUIC
handshake's outcome and the stream's bytes, and answers with bytes to write
and, at the end, a `HandshakeDone` or a `HandshakeFailure`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.noise import (
    HandshakeComplete,
    HandshakeFailed,
    NoiseHandshake,
    NoiseLocalIdentity,
    NoiseTransport,
    handshake_prologue,
    noise_static_public_key,
    sign_noise_identity,
)
from plasm_grpc.net.settings import (
    ALPN,
    CLOSE_HANDSHAKE_FAILED,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
)

__all__ = ["HandshakeDone", "HandshakeFailure", "LocalIdentity", "OverlayHandshake"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalIdentity:
    """What this endpoint presents in every handshake."""

    node_id: str
    static_private: bytes  # X25519 Noise static key
    proof: SignedEnvelope  # sign_noise_identity(identity key, static public key)
    certificate_der: bytes  # this endpoint's QUIC server certificate
    # Derived once at start-up, not per handshake: the static key and proof,
    # checked (NoiseLocalIdentity), and the prologue of the connections this
    # endpoint accepts (handshake_prologue(certificate_der)).
    noise: NoiseLocalIdentity
    server_prologue: bytes

    @classmethod
    def create(
        cls,
        identity: NodeKey,
        static_private: bytes,
        certificate_der: bytes,
        *,
        created_at_ns: int,
    ) -> LocalIdentity:
        """Sign `identity`'s claim to the Noise static key and derive the rest."""
        proof = sign_noise_identity(
            identity, noise_static_public_key(static_private), created_at_ns=created_at_ns
        )
        return cls(
            node_id=identity.node_id,
            static_private=static_private,
            proof=proof,
            certificate_der=certificate_der,
            noise=NoiseLocalIdentity(static_private, proof),
            server_prologue=handshake_prologue(certificate_der),
        )


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The peer proved `remote_node_id`; frames go through `transport` from now on."""

    remote_node_id: str
    transport: NoiseTransport
    trailing_data: bytes  # the peer's first frame bytes, if they came with its last message


@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """The connection closes with `reason` and this QUIC application error code."""

    reason: str
    error_code: int


class OverlayHandshake:
    """One connection's handshake: `quic_handshake_completed`, then `receive` stream
    bytes until it answers with an outcome; write `data_to_send()` after each call.

    The server makes its Noise handshake once its first QUIC flight is out
    (`server_flight_sent`), or at the latest when the client's first Noise
    message arrives; the client makes its own when the QUIC handshake delivers
    the server's certificate.
    """

    def __init__(
        self, *, local: LocalIdentity, initiator: bool, expected_node_id: str | None
    ) -> None:
        self._local = local
        self._initiator = initiator
        self._expected_node_id = expected_node_id
        self._noise: NoiseHandshake | None = None
        self._outgoing = b""

    def server_flight_sent(self) -> None:
        """The server's first QUIC flight is out: prepare while the client works on it."""
        if not self._initiator and self._noise is None:
            self._noise = self._new(self._local.server_prologue)

    def quic_handshake_completed(
        self, quic: QuicConnection, alpn_protocol: str | None
    ) -> HandshakeFailure | None:
        """QUIC is up: check what it negotiated; the client sends Noise message 1."""
        if alpn_protocol != ALPN:
            return HandshakeFailure(f"the peer negotiated ALPN {alpn_protocol!r}", CLOSE_REFUSED)
        if not self._initiator:
            return None  # the responder waits for Noise message 1
        certificate = quic.tls._peer_certificate  # no public accessor in aioquic 1.x
        if certificate is None:
            return HandshakeFailure("the QUIC server sent no certificate", CLOSE_HANDSHAKE_FAILED)
        self._noise = self._new(handshake_prologue(certificate.public_bytes(Encoding.DER)))
        self._outgoing += self._noise.data_to_send()
        return None

    def receive(self, data: bytes) -> HandshakeDone | HandshakeFailure | None:
        """Bytes of stream 0 while the handshake runs; an outcome once it is over."""
        noise = self._noise
        if noise is None and not self._initiator:
            noise = self._noise = self._new(self._local.server_prologue)
        if noise is None:
            return HandshakeFailure(
                "protocol error: stream data before the QUIC handshake finished",
                CLOSE_PROTOCOL_ERROR,
            )
        noise.receive(data)
        self._outgoing += noise.data_to_send()
        event = noise.next_event()
        if isinstance(event, HandshakeFailed):
            return HandshakeFailure(event.reason, CLOSE_HANDSHAKE_FAILED)
        if isinstance(event, HandshakeComplete):
            self._noise = None
            return HandshakeDone(event.remote_node_id, noise.transport(), noise.trailing_data)
        return None

    def data_to_send(self) -> bytes:
        """The handshake bytes to write to stream 0 now (possibly none)."""
        out, self._outgoing = self._outgoing, b""
        return out

    def _new(self, prologue: bytes) -> NoiseHandshake:
        return NoiseHandshake(
            initiator=self._initiator,
            prologue=prologue,
            expected_node_id=self._expected_node_id,
            local=self._local.noise,
        )
