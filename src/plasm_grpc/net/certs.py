"""A fresh self-signed certificate per endpoint, for QUIC's TLS only.

Nobody checks this certificate against a name or an authority: the Noise
handshake proves identities. It exists because TLS 1.3 needs one, and because
its hash is the Noise prologue (core/noise.py: `handshake_prologue`), which is
why every endpoint makes its own key and never shares it.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = ["QuicCertificate", "new_certificate"]

_VALIDITY: Final = datetime.timedelta(days=365)
_CLOCK_SKEW: Final = datetime.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class QuicCertificate:
    certificate: x509.Certificate
    private_key: Ed25519PrivateKey
    der: bytes


def new_certificate(common_name: str = "plasm-overlay") -> QuicCertificate:
    """An Ed25519 self-signed certificate with a new key (aioquic speaks TLS Ed25519)."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) + 1)
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
        .sign(key, None)
    )
    return QuicCertificate(
        certificate=certificate, private_key=key, der=certificate.public_bytes(Encoding.DER)
    )
