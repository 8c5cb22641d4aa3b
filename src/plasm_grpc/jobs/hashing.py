"""Hashing a job's bytes without stalling the event loop.

A module (up to 16 MiB) or stdin (up to 8 MiB) takes milliseconds to hash;
on the event loop that would hold up every other RPC of the node. Small
inputs are hashed in place (a thread hop costs more than the hash).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

from plasm_grpc.core.ids import sha256_hex
from plasm_grpc.core.input_hash import input_sha256

HASH_INLINE_BYTES: Final = 256 * 1024

_T = TypeVar("_T")


async def off_loop_if_large(work: Callable[[], _T], size: int) -> _T:
    """`work()`, in a thread when it covers more than HASH_INLINE_BYTES bytes."""
    if size > HASH_INLINE_BYTES:
        return await asyncio.to_thread(work)
    return work()


async def module_sha256(module: bytes) -> str:
    return await off_loop_if_large(lambda: sha256_hex(module), len(module))


async def job_input_sha256(
    args: tuple[str, ...], env: tuple[tuple[str, str], ...], stdin: bytes
) -> str:
    return await off_loop_if_large(lambda: input_sha256(args, env, stdin), len(stdin))


def arg_env_bytes(args: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> int:
    """The UTF-8 bytes of args and env names and values (what input limits count)."""
    return sum(len(a.encode()) for a in args) + sum(
        len(k.encode()) + len(v.encode()) for k, v in env
    )
