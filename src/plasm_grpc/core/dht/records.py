"""Signed peer records and capability classes (DESIGN.md items 3 and 6).

A peer record is a node's own signed statement of where it listens and what
it can run. It travels as a `SignedEnvelope` under `PEER_RECORD_DOMAIN`; a
receiver checks sizes, the sender, the signature and only then decodes the
payload (through a `RecordCodec`: the daemon's is protobuf, the simulator's is
its own), then the expiry. Nobody re-serializes a record to check it.

Capability classes make "who can run WASI preview1 jobs with 512 MiB" a DHT
lookup, not a crawl: a node is a provider of the class key of its WASI
version and every memory tier up to its maximum job memory, and a requester
looks up the key of the smallest tier that covers its need, then filters the
records it gets back exactly.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from typing import Final, Protocol

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.envelope import PEER_RECORD_DOMAIN, SignedEnvelope, sign, signing_input
from plasm_grpc.core.errors import PlasmError
from plasm_grpc.core.ids import check_hex64, node_id_from_public_key
from plasm_grpc.core.keys import NodeKey, verify_signature
from plasm_grpc.core.limits import MIB, ResourceLimits

MAX_RECORD_BYTES: Final = 2048
"""Largest peer record payload accepted (a real one is a few hundred bytes)."""
MAX_ADDRESSES: Final = 8
MAX_ADDRESS_CHARS: Final = 260
MAX_RELAYS: Final = 4
MAX_TEXT_CHARS: Final = 64
"""Longest arch, os, runtime or WASI version string."""
MAX_RECORD_TTL: Final = 24 * 3600.0
"""A record may not claim to live longer than this past its creation."""
CLOCK_SKEW: Final = 300.0
"""Tolerated difference between the signer's clock and ours, in seconds."""
DEFAULT_WASI_VERSION: Final = "preview1"
MEMORY_TIERS: Final = tuple(64 * MIB * 4**i for i in range(6))
"""Capability class memory tiers: 64 MiB, 256 MiB, 1 GiB, 4 GiB, 16 GiB, 64 GiB."""
_PROVIDER_KEY_DOMAIN: Final = b"plasm/capability-class/v1\x00"


class RecordError(PlasmError):
    """A record payload could not be decoded (raised by a `RecordCodec`)."""


class RecordRejectReason(enum.Enum):
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    FORGED = "forged"
    """The signature does not verify."""
    SPOOFED = "spoofed"
    """The record is not the sender's own, or not the node it claims to be."""
    EXPIRED = "expired"
    TOO_LONG_LIVED = "too_long_lived"
    STALE = "stale"
    """An equal or newer sequence number is already held."""
    CONFLICT = "conflict"
    """Same sequence number, different content (the signer equivocates)."""
    NOT_A_PROVIDER = "not_a_provider"
    """The record's capabilities do not qualify for the provider key."""
    STORE_FULL = "store_full"


class RecordRejectedError(PlasmError):
    def __init__(self, reason: RecordRejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a node offers (proto `plasm.v1.Capabilities`)."""

    arch: str = ""
    os: str = ""
    cores: int = 0
    memory_bytes: int = 0
    runtime_name: str = ""
    runtime_version: str = ""
    wasi_version: str = DEFAULT_WASI_VERSION
    max_limits: ResourceLimits = field(default_factory=ResourceLimits)
    free_job_slots: int = 0
    total_job_slots: int = 0

    def __post_init__(self) -> None:
        for name in ("arch", "os", "runtime_name", "runtime_version", "wasi_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
                raise RecordError(
                    f"capabilities.{name} is a string of at most {MAX_TEXT_CHARS} characters"
                )
        for name in ("cores", "memory_bytes", "free_job_slots", "total_job_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RecordError(f"capabilities.{name} is a non-negative integer")
        if not isinstance(self.max_limits, ResourceLimits):
            raise RecordError("capabilities.max_limits is not a ResourceLimits")


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayAddress:
    """A relay through which a node that cannot be dialled is reached."""

    relay_node_id: str
    address: str  # the relay's overlay "host:port"

    def __post_init__(self) -> None:
        try:
            check_hex64(self.relay_node_id, "relay_node_id")
        except ValueError as err:
            raise RecordError(str(err)) from None
        if not isinstance(self.address, str) or not 0 < len(self.address) <= MAX_ADDRESS_CHARS:
            raise RecordError(f"a relay address is 1 to {MAX_ADDRESS_CHARS} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordContent:
    """What a peer record payload says."""

    addresses: tuple[str, ...]
    capabilities: Capabilities
    seq: int
    created_at: float
    """Unix seconds."""
    expires_at: float
    """Unix seconds."""
    relays: tuple[RelayAddress, ...] = ()

    def __post_init__(self) -> None:
        if len(self.relays) > MAX_RELAYS:
            raise RecordError(f"a record lists at most {MAX_RELAYS} relays")
        if len(self.addresses) > MAX_ADDRESSES:
            raise RecordError(f"a record lists at most {MAX_ADDRESSES} addresses")
        for address in self.addresses:
            if not isinstance(address, str) or not address or len(address) > MAX_ADDRESS_CHARS:
                raise RecordError(f"an address is 1 to {MAX_ADDRESS_CHARS} characters")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise RecordError("seq is a non-negative integer")
        for name in ("created_at", "expires_at"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise RecordError(f"{name} is a finite number of seconds")


class RecordCodec(Protocol):
    """Turns `RecordContent` into payload bytes and back (never used to verify)."""

    def encode(self, content: RecordContent) -> bytes: ...

    def decode(self, payload: bytes) -> RecordContent:
        """Raises RecordError on anything it cannot decode."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRecord:
    """A record that passed `open_record`: content decoded from `envelope.payload`."""

    node_id: str
    content: RecordContent
    envelope: SignedEnvelope

    @property
    def key(self) -> Key:
        return Key.from_hex(self.node_id)

    @property
    def seq(self) -> int:
        return self.content.seq

    @property
    def capabilities(self) -> Capabilities:
        return self.content.capabilities


def make_record(key: NodeKey, content: RecordContent, codec: RecordCodec) -> PeerRecord:
    """Sign `content` as `key`'s peer record."""
    envelope = sign(key, PEER_RECORD_DOMAIN, codec.encode(content))
    return PeerRecord(node_id=key.node_id, content=content, envelope=envelope)


def open_record(
    envelope: SignedEnvelope,
    *,
    codec: RecordCodec,
    now: float,
    sender: str | None = None,
    expected_node_id: str | None = None,
) -> PeerRecord:
    """Check a received record and decode it; raise `RecordRejectedError` with why not.

    `sender` is the authenticated peer that sent the record where it must be
    its own (PUT_RECORD, ADD_PROVIDER, a ping answer); `expected_node_id` is
    the node a GET_RECORD asked for. Cheap checks run first.
    """
    if len(envelope.payload) > MAX_RECORD_BYTES:
        raise RecordRejectedError(
            RecordRejectReason.OVERSIZED,
            f"{len(envelope.payload)} payload bytes, the limit is {MAX_RECORD_BYTES}",
        )
    if len(envelope.signer_public_key) != 32 or len(envelope.signature) != 64:
        raise RecordRejectedError(
            RecordRejectReason.MALFORMED, "bad public key or signature length"
        )
    node_id = node_id_from_public_key(envelope.signer_public_key)
    if sender is not None and node_id != sender:
        raise RecordRejectedError(
            RecordRejectReason.SPOOFED,
            f"signed by {node_id}, sent by {check_hex64(sender, 'sender')}",
        )
    if expected_node_id is not None and node_id != expected_node_id:
        raise RecordRejectedError(
            RecordRejectReason.SPOOFED, f"signed by {node_id}, asked for {expected_node_id}"
        )
    if not verify_signature(
        envelope.signer_public_key,
        envelope.signature,
        signing_input(PEER_RECORD_DOMAIN, envelope.payload),
    ):
        raise RecordRejectedError(
            RecordRejectReason.FORGED, f"signature does not verify under {PEER_RECORD_DOMAIN!r}"
        )
    try:
        content = codec.decode(envelope.payload)
    except RecordError as err:
        raise RecordRejectedError(RecordRejectReason.MALFORMED, str(err)) from err
    if content.expires_at <= now:
        raise RecordRejectedError(
            RecordRejectReason.EXPIRED, f"expired {now - content.expires_at:.0f} s ago"
        )
    # Bounded from now as well as from its creation: a creation time in the
    # future must not buy a record a longer life.
    if (
        content.expires_at - now > MAX_RECORD_TTL + CLOCK_SKEW
        or content.expires_at - content.created_at > MAX_RECORD_TTL + CLOCK_SKEW
    ):
        raise RecordRejectedError(
            RecordRejectReason.TOO_LONG_LIVED,
            f"expires {content.expires_at - now:.0f} s from now and"
            f" {content.expires_at - content.created_at:.0f} s after its creation,"
            f" the limit is {MAX_RECORD_TTL:.0f}",
        )
    return PeerRecord(node_id=node_id, content=content, envelope=envelope)


# -- capability classes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRequirements:
    """What a job needs of a worker; empty strings mean "any"."""

    wasi_version: str = DEFAULT_WASI_VERSION
    min_memory_bytes: int = 0
    arch: str = ""
    min_free_slots: int = 0

    def __post_init__(self) -> None:
        if self.min_memory_bytes < 0 or self.min_free_slots < 0:
            raise RecordError("requirements must be non-negative")
        if self.min_memory_bytes > MEMORY_TIERS[-1]:
            raise RecordError(
                f"no capability class covers {self.min_memory_bytes} bytes of memory"
                f" (the largest tier is {MEMORY_TIERS[-1] // MIB} MiB)"
            )


def capability_class(wasi_version: str, tier: int) -> str:
    return f"wasi={wasi_version or DEFAULT_WASI_VERSION};memory>={tier // MIB}MiB"


def class_key(name: str) -> Key:
    return Key.from_bytes(hashlib.sha256(_PROVIDER_KEY_DOMAIN + name.encode()).digest())


def provider_classes(capabilities: Capabilities) -> list[str]:
    """The classes a node with `capabilities` provides: one per tier it covers."""
    memory = capabilities.max_limits.max_memory_bytes
    return [capability_class(capabilities.wasi_version, t) for t in MEMORY_TIERS if t <= memory]


def provider_keys(capabilities: Capabilities) -> list[Key]:
    return [class_key(name) for name in provider_classes(capabilities)]


def requirement_class(requirements: WorkerRequirements) -> str:
    """The class whose providers can all meet `requirements`' memory need."""
    tier = next(t for t in MEMORY_TIERS if t >= requirements.min_memory_bytes)
    return capability_class(requirements.wasi_version, tier)


def meets(capabilities: Capabilities, requirements: WorkerRequirements) -> bool:
    return (
        (not requirements.wasi_version or capabilities.wasi_version == requirements.wasi_version)
        and capabilities.max_limits.max_memory_bytes >= requirements.min_memory_bytes
        and (not requirements.arch or capabilities.arch == requirements.arch)
        and capabilities.free_job_slots >= requirements.min_free_slots
    )
