"""Signed envelopes (DESIGN.md, "Signed envelopes").

The signature is Ed25519 over ``domain || 0x00 || payload``. A verifier checks
the signature over the exact bytes it received, under the domain it expects,
and only then decodes the payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from plasm_grpc.core.errors import VerificationError
from plasm_grpc.core.ids import node_id_from_public_key

if TYPE_CHECKING:
    from plasm_grpc.core.keys import NodeKey

RECEIPT_DOMAIN: Final = "plasm/receipt/v1"
DECLINE_DOMAIN: Final = "plasm/decline/v1"
PEER_RECORD_DOMAIN: Final = "plasm/peer-record/v1"
NOISE_IDENTITY_DOMAIN: Final = "plasm/noise-identity/v1"


def signing_input(domain: str, payload: bytes) -> bytes:
    encoded = domain.encode("ascii")
    if b"\x00" in encoded or not encoded:
        raise ValueError("a signing domain is non-empty ASCII without NUL")
    return encoded + b"\x00" + payload


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedEnvelope:
    payload: bytes
    signature: bytes
    signer_public_key: bytes

    @property
    def signer_node_id(self) -> str:
        return node_id_from_public_key(self.signer_public_key)


def sign(key: NodeKey, domain: str, payload: bytes) -> SignedEnvelope:
    return SignedEnvelope(
        payload=payload,
        signature=key.sign(signing_input(domain, payload)),
        signer_public_key=key.public_key,
    )


def verify(
    envelope: SignedEnvelope, domain: str, *, expected_signer_node_id: str | None = None
) -> bytes:
    """Return the payload if the envelope is validly signed under `domain`.

    Raises VerificationError naming the first check that failed.
    """
    if len(envelope.signer_public_key) != 32:
        raise VerificationError(
            f"signer public key must be 32 bytes, got {len(envelope.signer_public_key)}"
        )
    if len(envelope.signature) != 64:
        raise VerificationError(f"signature must be 64 bytes, got {len(envelope.signature)}")
    # Imported here: a client that only carries envelopes (`plasm submit` sending
    # its request) loads cryptography while the node works, not before.
    from plasm_grpc.core.keys import verify_signature

    if not verify_signature(
        envelope.signer_public_key, envelope.signature, signing_input(domain, envelope.payload)
    ):
        raise VerificationError(f"signature does not verify under domain {domain!r}")
    if expected_signer_node_id is not None:
        signer = envelope.signer_node_id
        if signer != expected_signer_node_id:
            raise VerificationError(f"signed by node {signer}, expected {expected_signer_node_id}")
    return envelope.payload
