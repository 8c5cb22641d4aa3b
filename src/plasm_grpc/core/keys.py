"""Ed25519 identity keys.

`cryptography` is used (already a dependency of aioquic): it is maintained,
constant-time, and about 20x faster than the old `ed25519` package. The raw
byte accessors (`public_bytes_raw`, `private_bytes_raw`) spare a verifier
importing `cryptography`'s serialization package (SSH, PKCS#12: about 20 ms
of a CLI's start).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import node_id_from_public_key

SEED_BYTES = 32
SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class NodeKey:
    """A node's Ed25519 key pair. The seed never leaves the node."""

    private: Ed25519PrivateKey
    public_key: bytes
    node_id: str

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        if len(seed) != SEED_BYTES:
            raise InvalidIdError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes_raw()
        return cls(private=private, public_key=public, node_id=node_id_from_public_key(public))

    def seed(self) -> bytes:
        return self.private.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:  # never print key material
        return f"NodeKey(node_id={self.node_id})"


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message`."""
    if len(public_key) != 32 or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
