"""Node ids, job ids and hex digests.

DESIGN.md: a node id is SHA-256 of the raw 32-byte Ed25519 public key, written
as 64 lowercase hex characters. Job ids are 128 random bits as 32 hex.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from plasm_grpc.core.errors import InvalidIdError

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX32: Final = re.compile(r"[0-9a-f]{32}")

PUBLIC_KEY_BYTES: Final = 32
JOB_ID_BYTES: Final = 16


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def node_id_from_public_key(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidIdError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    return sha256_hex(public_key)


def check_hex64(value: str, what: str) -> str:
    """Return `value` if it is 64 lowercase hex characters, else raise."""
    if not _HEX64.fullmatch(value):
        raise InvalidIdError(f"{what} must be 64 lowercase hex characters, got {value!r:.80}")
    return value


def check_job_id(value: str) -> str:
    if not _HEX32.fullmatch(value):
        raise InvalidIdError(f"job id must be 32 lowercase hex characters, got {value!r:.80}")
    return value


def new_job_id(random_bytes: bytes) -> str:
    """A job id from 16 bytes of randomness supplied by the caller."""
    if len(random_bytes) != JOB_ID_BYTES:
        raise InvalidIdError(f"a job id needs {JOB_ID_BYTES} random bytes")
    return random_bytes.hex()
