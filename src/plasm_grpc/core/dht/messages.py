"""The DHT's RPCs as values (proto `plasm.v1.Dht*` messages; the net adapter converts).

Every request gets exactly one response of the matching type, or a `Refused`
with a reason (rate limited), or the caller's transport reports a failure.
Records travel as the exact `SignedEnvelope` the signer produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.envelope import SignedEnvelope

MAX_CONTACTS: Final = 20
"""Most contacts in one reply (k); a reply with more is cut to this many."""
MAX_PROVIDERS_PER_REPLY: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    target: Key


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRecord:
    key: Key


@dataclass(frozen=True, slots=True, kw_only=True)
class PutRecord:
    record: SignedEnvelope


@dataclass(frozen=True, slots=True, kw_only=True)
class AddProvider:
    key: Key
    record: SignedEnvelope


@dataclass(frozen=True, slots=True, kw_only=True)
class GetProviders:
    key: Key


Request = Ping | FindNode | GetRecord | PutRecord | AddProvider | GetProviders


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    record: SignedEnvelope | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Nodes:
    closer: tuple[Contact, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordReply:
    record: SignedEnvelope | None
    closer: tuple[Contact, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreReply:
    stored: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvidersReply:
    providers: tuple[SignedEnvelope, ...]
    closer: tuple[Contact, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The request was not served (e.g. the sender is over its rate limit)."""

    reason: str


Response = Pong | Nodes | RecordReply | StoreReply | ProvidersReply | Refused

METHODS: Final[dict[type[Request], str]] = {
    Ping: "plasm.v1.Dht/Ping",
    FindNode: "plasm.v1.Dht/FindNode",
    GetRecord: "plasm.v1.Dht/GetRecord",
    PutRecord: "plasm.v1.Dht/PutRecord",
    AddProvider: "plasm.v1.Dht/AddProvider",
    GetProviders: "plasm.v1.Dht/GetProviders",
}
"""Overlay method name of each request."""
