"""The key space and the XOR metric (Kademlia paper, section 2.1).

Node ids and record keys share one 256-bit space: a node id is SHA-256 of the
node's Ed25519 public key (DESIGN.md), written as 64 lowercase hex characters.
The distance between two keys is their bitwise XOR read as an unsigned integer.
XOR is a metric (d(x, x) = 0, symmetric, triangle inequality) and it is
unidirectional: for any x and distance D there is exactly one y with
d(x, y) = D, which is what lets lookups for one key converge on one path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import check_hex64

KEY_BITS: Final = 256
KEY_BYTES: Final = KEY_BITS // 8
_KEY_LIMIT: Final = 1 << KEY_BITS


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """A 256-bit key; ordering is numeric, which is not the XOR order."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < _KEY_LIMIT:
            raise InvalidIdError(f"a key is an integer in [0, 2**{KEY_BITS})")

    @classmethod
    def from_hex(cls, text: str) -> Key:
        return cls(int(check_hex64(text, "key"), 16))

    @classmethod
    def from_bytes(cls, data: bytes) -> Key:
        if len(data) != KEY_BYTES:
            raise InvalidIdError(f"a key is {KEY_BYTES} bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    @property
    def hex(self) -> str:
        return f"{self.value:064x}"

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(KEY_BYTES, "big")

    def __str__(self) -> str:
        return self.hex


def distance(a: Key, b: Key) -> int:
    """The XOR distance d(a, b) = a XOR b (section 2.1)."""
    return a.value ^ b.value


def bucket_index(own: Key, other: Key) -> int:
    """Index i of the k-bucket holding `other`: 2**i <= d(own, other) < 2**(i+1).

    Section 2.2: bucket i covers the keys at distance [2**i, 2**(i+1)) from
    `own`, so i is the position of the highest bit in which the keys differ.
    A node has no bucket for itself, so equal keys raise.
    """
    d = distance(own, other)
    if d == 0:
        raise InvalidIdError("a key has no bucket index relative to itself")
    return d.bit_length() - 1


def closest(target: Key, keys: Iterable[Key], count: int) -> list[Key]:
    """The `count` distinct keys nearest `target` by XOR, nearest first."""
    if count < 0:
        raise ValueError("count must be non-negative")
    return sorted(set(keys), key=lambda k: k.value ^ target.value)[:count]
