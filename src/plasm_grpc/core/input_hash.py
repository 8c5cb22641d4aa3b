"""The canonical encoding of a job's input, which receipts hash.

Any client can recompute it from what it sent (docs/receipts.md)::

    "plasm/input/v1" 0x00
    u32be(len(args))  then for each arg:  u32be(len(utf8)) utf8
    u32be(len(env))   then for each var:  u32be(len(name)) name u32be(len(value)) value
    u64be(len(stdin)) stdin

All strings are UTF-8; env keeps the order the client gave.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Final

INPUT_DOMAIN: Final = b"plasm/input/v1\x00"


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _u32(len(encoded)) + encoded


def encode_input(args: Sequence[str], env: Sequence[tuple[str, str]], stdin: bytes) -> bytes:
    parts = [INPUT_DOMAIN, _u32(len(args))]
    parts.extend(_string(a) for a in args)
    parts.append(_u32(len(env)))
    for name, value in env:
        parts.append(_string(name))
        parts.append(_string(value))
    parts.append(struct.pack(">Q", len(stdin)))
    parts.append(stdin)
    return b"".join(parts)


def input_sha256(args: Sequence[str], env: Sequence[tuple[str, str]], stdin: bytes) -> str:
    return hashlib.sha256(encode_input(args, env, stdin)).hexdigest()
