"""Placement: where a job may run, and which candidate workers to try first."""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from plasm_grpc.core.dht.records import RelayAddress
from plasm_grpc.core.ids import check_hex64


class PlacementMode(enum.IntEnum):
    """Values equal `plasm.v1.PlacementMode`; UNSPECIFIED means AUTO."""

    LOCAL = 1
    PEER = 2
    AUTO = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    mode: PlacementMode = PlacementMode.AUTO
    peer_node_id: str = ""
    arch: str = ""
    wasi_version: str = ""
    min_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if self.mode is PlacementMode.PEER:
            check_hex64(self.peer_node_id, "placement.peer_node_id")
        elif self.peer_node_id:
            raise ValueError("placement.peer_node_id is only for PLACEMENT_MODE_PEER")
        if self.min_memory_bytes < 0:
            raise ValueError("placement.min_memory_bytes must be non-negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A worker that may take the job, from its signed peer record."""

    node_id: str
    host: str
    port: int
    free_slots: int  # as its record said when signed: a hint, not a promise
    total_slots: int
    # For a worker that cannot be dialled (host ""): the relays its record names.
    relays: tuple[RelayAddress, ...] = ()


def rank(
    candidates: Iterable[Candidate],
    *,
    in_flight: Mapping[str, int],
    rtt: Mapping[str, float],
    salt: bytes,
) -> list[Candidate]:
    """Best first.

    1. Workers we do not expect to be full: our own jobs in flight there are
       fewer than the free slots its record advertised.
    2. Fewer of our jobs in flight there (spreads concurrent jobs).
    3. An open connection (no handshake to pay), lowest round-trip time first.
    4. More free slots advertised.
    5. A per-job random order (`salt`), so ties do not all land on one node.
    """

    def key(c: Candidate) -> tuple[bool, int, float, int, bytes]:
        ours = in_flight.get(c.node_id, 0)
        return (
            ours >= c.free_slots,
            ours,
            rtt.get(c.node_id, math.inf),
            -c.free_slots,
            hashlib.sha256(salt + bytes.fromhex(c.node_id)).digest(),
        )

    return sorted(candidates, key=key)


def unmet_requirement(
    placement: Placement, *, arch: str, wasi_version: str, max_memory_bytes: int
) -> str | None:
    """Why a node (its architecture, WASI version, largest memory limit) cannot
    meet the placement's requirements, or None when it can."""
    if placement.arch and placement.arch != arch:
        return f"job requires arch {placement.arch!r}; this node is {arch!r}"
    if placement.wasi_version and placement.wasi_version != wasi_version:
        return f"job requires WASI {placement.wasi_version!r}; this node runs {wasi_version!r}"
    if placement.min_memory_bytes > max_memory_bytes:
        return (
            f"job requires {placement.min_memory_bytes} bytes of memory; this node "
            f"offers at most {max_memory_bytes}"
        )
    return None
