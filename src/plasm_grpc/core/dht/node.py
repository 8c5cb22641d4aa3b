"""One Kademlia node as a sans-I/O state machine (the paper's sections 2.3-2.5).

`DhtNode` owns a routing table, the records and provider entries it holds,
its own signed peer record and the operations (lookups, stores) it runs. Like
aioquic's `QuicConnection` it has three kinds of input and pulled output:

- API calls: `bootstrap`, `find_node`, `get_record`, `get_providers`,
  `advertise`, each taking `now` and returning an operation id;
- `handle_request(sender, request, now)` for an RPC a peer sent (answered at
  once, synchronously), `handle_response(rpc, response, now)` and
  `handle_failure(rpc, now)` for the RPCs this node sent, and
  `handle_timer(now)` at or after `get_timer()`;
- output: `requests_to_send()` (each must be answered by exactly one
  `handle_response` or `handle_failure`: the transport owns RPC timeouts) and
  `next_event()` (peers added and evicted, operations finished, records stored
  and rejected, rate limiting), for logs and callers.

`now` is Unix time in seconds (records carry absolute expiry times) and
randomness comes from the `randbytes` callable given at construction.

Defences (issue 4): only contacts that answered this node enter its table
(a requester is pinged back first); address diversity limits (see
`routing`); per-peer token buckets on inbound RPCs; every record is checked
by `records.open_record` before it is stored or used, a record or provider
entry can only be stored by the node it describes, and the newest sequence
number wins; stores are capped in count.
"""

from __future__ import annotations

import enum
import functools
import heapq
import ipaddress
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.dht.keys import KEY_BITS, KEY_BYTES, Key, bucket_index, distance
from plasm_grpc.core.dht.lookup import ALPHA, Lookup
from plasm_grpc.core.dht.messages import (
    MAX_CONTACTS,
    MAX_PROVIDERS_PER_REPLY,
    AddProvider,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersReply,
    PutRecord,
    RecordReply,
    Refused,
    Request,
    Response,
    StoreReply,
)
from plasm_grpc.core.dht.ratelimit import RateLimiter
from plasm_grpc.core.dht.records import (
    Capabilities,
    PeerRecord,
    RecordCodec,
    RecordContent,
    RecordRejectedError,
    RecordRejectReason,
    RelayAddress,
    make_record,
    open_record,
    provider_keys,
)
from plasm_grpc.core.dht.routing import MAX_PER_IP, Contact, K, PingRequest, Rejected, RoutingTable
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import sha256_hex
from plasm_grpc.core.keys import NodeKey

_LEARN_PING_BACKOFF: Final = 60.0
"""Seconds before an unknown requester is pinged back again."""
_MAX_LEARN_PINGS: Final = 64
"""Most ping-backs to unknown requesters in flight at once."""
_MAX_PEER_RECORDS: Final = 4096
"""Most peer records remembered for peers (from pings and lookups)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtSettings:
    k: int = K
    alpha: int = ALPHA
    record_ttl: float = 2 * 3600.0
    """Lifetime of this node's own record when it signs one."""
    republish_interval: float = 1800.0
    """How often the own record and provider entries are stored again."""
    refresh_interval: float = 3600.0
    """A bucket with no lookup or answer for this long is refreshed (section 2.3)."""
    maintenance_interval: float = 60.0
    """How often expiry, refresh and republish are checked."""
    get_quorum: int = 2
    """A record lookup stops after this many holders answered with a record."""
    providers_wanted: int = 20
    """A provider lookup stops after collecting this many distinct providers."""
    max_records: int = 4096
    max_providers_per_key: int = 64
    max_provider_entries: int = 16384
    rate: float = 50.0
    """Inbound RPCs per second allowed per peer, after `burst`."""
    burst: int = 100
    learn_peer_records: bool = True
    """Ping new table entries once to learn their peer records (capabilities)."""
    exempt_loopback: bool = True
    evict_ping_grace: float = 300.0
    """A full bucket's least-recently seen contact is pinged before a newcomer
    may replace it only if it has not answered for this long (see
    `RoutingTable`), and an unknown requester is pinged back only if it could
    then enter the table or prompt such a ping; 0 pings every time. A node
    that answered in the last five minutes is very likely still up (sessions
    last hours), and one that died meanwhile is dropped at its first failed
    RPC. In a 1,500-node simulated build this cut the messages per join from
    about 460 to about 270."""
    lookup_retries: int = 0
    """Times a lookup asks a contact again after a failed query (see `Lookup`)."""
    max_failures: int = 3
    """Failed RPCs in a row after which a contact leaves the table even with
    no replacement waiting (with one waiting, it is replaced at the first)."""
    refresh_on_join: bool = True
    """After the own-id lookup of `bootstrap`, refresh every bucket farther
    than the nearest neighbour found (section 2.3), so a new node's far
    buckets are filled at once rather than at the first refresh."""

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.evict_ping_grace < 0 or self.lookup_retries < 0:
            raise ValueError(
                "max_failures must be positive, evict_ping_grace and lookup_retries non-negative"
            )
        if self.k < 1 or self.alpha < 1 or self.get_quorum < 1 or self.providers_wanted < 1:
            raise ValueError("k, alpha, get_quorum and providers_wanted must be positive")
        if min(self.record_ttl, self.republish_interval, self.refresh_interval) <= 0:
            raise ValueError("intervals must be positive")
        if self.republish_interval >= self.record_ttl:
            raise ValueError("republish_interval must be shorter than record_ttl")
        if min(self.max_records, self.max_providers_per_key, self.max_provider_entries) < 1:
            raise ValueError("store limits must be positive")


class OperationKind(enum.Enum):
    BOOTSTRAP = "bootstrap"
    FIND_NODE = "find_node"
    GET_RECORD = "get_record"
    GET_PROVIDERS = "get_providers"
    PUT_RECORD = "put_record"
    ADD_PROVIDER = "add_provider"
    REFRESH = "refresh"


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAdded:
    contact: Contact


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerEvicted:
    contact: Contact
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRejected:
    contact: Contact
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationFinished:
    operation: int
    kind: OperationKind
    target: Key
    started: float
    finished: float
    hops: int
    rpcs: int
    failed_rpcs: int
    closest: tuple[Contact, ...]
    record: PeerRecord | None = None
    providers: tuple[PeerRecord, ...] = ()
    stored: int = 0
    """PUT_RECORD / ADD_PROVIDER: how many nodes acknowledged the store."""

    @property
    def duration(self) -> float:
        return self.finished - self.started

    @property
    def found(self) -> bool:
        if self.kind is OperationKind.GET_RECORD:
            return self.record is not None
        if self.kind is OperationKind.GET_PROVIDERS:
            return bool(self.providers)
        if self.kind in (OperationKind.PUT_RECORD, OperationKind.ADD_PROVIDER):
            return self.stored > 0
        return bool(self.closest)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordStored:
    key: Key
    node_id: str
    seq: int
    provider: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordRejectedEvent:
    sender: str
    reason: RecordRejectReason
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimited:
    peer: str
    refused: int
    """Requests refused to this peer so far (reported at 1, 100, 200, ...)."""


Event = (
    PeerAdded
    | PeerEvicted
    | PeerRejected
    | OperationFinished
    | RecordStored
    | RecordRejectedEvent
    | RateLimited
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingRequest:
    rpc: int
    contact: Contact
    request: Request
    client: bool = False
    """Send with the wire's `client` flag: this node is in client mode."""


# -- internal state ----------------------------------------------------------------------


class _Purpose(enum.Enum):
    LOOKUP = "lookup"
    STORE = "store"
    EVICT_CHECK = "evict_check"
    LEARN = "learn"
    """Ping an unknown requester, or a new contact for its record."""
    ANNOUNCE = "announce"
    """Ping a table contact to tell it this node is now a client."""


@dataclass(slots=True)
class _Rpc:
    contact: Contact
    purpose: _Purpose
    operation: int = 0


@dataclass(slots=True)
class _Operation:
    id: int
    kind: OperationKind
    target: Key
    lookup: Lookup
    started: float
    store: Request | None = None
    storing: int = 0
    """Store RPCs in flight (phase 2 of PUT_RECORD / ADD_PROVIDER)."""
    stores_sent: bool = False
    stored: int = 0
    record: PeerRecord | None = None
    holders: int = 0
    providers: dict[str, PeerRecord] = field(default_factory=dict)
    failed: int = 0
    rpcs: int = 0
    flying: int = 0
    """RPCs of this operation in flight."""


class DhtNode:
    def __init__(
        self,
        contact: Contact,
        *,
        key: NodeKey | None,
        codec: RecordCodec,
        randbytes: Callable[[int], bytes],
        now: float,
        settings: DhtSettings | None = None,
    ) -> None:
        if key is not None and key.node_id != contact.node_id:
            raise ValueError("the contact's node id is not the key's")
        self.contact = contact
        self.settings = settings or DhtSettings()
        self._key = key
        self._codec = codec
        self._randbytes = randbytes
        self.table = RoutingTable(
            contact.node_id,
            k=self.settings.k,
            now=now,
            exempt_loopback=self.settings.exempt_loopback,
            ping_grace=self.settings.evict_ping_grace,
        )
        self._limiter = RateLimiter(rate=self.settings.rate, burst=self.settings.burst)
        self._records: dict[str, PeerRecord] = {}
        self._providers: dict[Key, dict[str, PeerRecord]] = {}
        self._provider_count = 0
        self._provided_by: dict[str, set[Key]] = {}
        self._peer_records: OrderedDict[str, PeerRecord] = OrderedDict()
        self._own: PeerRecord | None = None
        self._own_content: tuple[tuple[str, ...], tuple[RelayAddress, ...], Capabilities] | None = (
            None
        )
        self._next_republish: float | None = None
        self._next_maintenance = now + self.settings.maintenance_interval
        self._rpcs: dict[int, _Rpc] = {}
        self._operations: dict[int, _Operation] = {}
        self._outbox: list[OutgoingRequest] = []
        self._events: deque[Event] = deque()
        self._learning: dict[str, float] = {}
        self._learn_pings = 0
        """LEARN pings in flight."""
        self._next_rpc = 0
        self._next_operation = 0
        self._expiries: list[tuple[float, int, Key | None, str]] = []
        self._expiry_seq = 0
        self._client_mode = False

    # -- API -----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.contact.node_id

    @property
    def own_record(self) -> PeerRecord | None:
        return self._own

    def peer_record(self, node_id: str, now: float | None = None) -> PeerRecord | None:
        """The newest record known for `node_id` (from its pings, lookups or
        stores); with `now`, only one that has not expired."""
        record = self._peer_records.get(node_id) or self._records.get(node_id)
        if record is not None and now is not None and record.content.expires_at <= now:
            return None
        return record

    def stored_records(self) -> int:
        return len(self._records)

    def stored_providers(self) -> int:
        return self._provider_count

    def operations_running(self) -> int:
        return len(self._operations)

    @property
    def client_mode(self) -> bool:
        return self._client_mode

    def set_client_mode(self, client: bool) -> bool:
        """Act as a DHT client (this node is not reachable) or as a full node again.

        A client marks every request it sends (`OutgoingRequest.client`), so
        receivers answer it but never add it to their tables nor refer others
        to it, and it refuses to store records and provider entries for others
        (nobody should be sent to it to read them). It still looks things up
        and stores its own record and provider entries on full nodes.

        Switching to client mode pings every contact in the table once, so
        peers that added this node while it was a full node drop it now rather
        than at its next request. Returns whether the mode changed.
        """
        if client == self._client_mode:
            return False
        self._client_mode = client
        if client:
            for contact in self.table.contacts():
                self._send(contact, Ping(), _Purpose.ANNOUNCE)
        return True

    def bootstrap(self, seeds: Iterable[Contact], now: float) -> int:
        """Join through `seeds` by looking up our own id (section 2.3).

        Seeds enter the table only once they answer. Returns the operation id.
        """
        return self._start(OperationKind.BOOTSTRAP, self.contact.key, now, seeds=list(seeds))

    def find_node(self, target: Key, now: float) -> int:
        return self._start(OperationKind.FIND_NODE, target, now)

    def get_record(self, node_id: str, now: float) -> int:
        return self._start(OperationKind.GET_RECORD, Key.from_hex(node_id), now)

    def get_providers(self, key: Key, now: float) -> int:
        return self._start(OperationKind.GET_PROVIDERS, key, now)

    def advertise(
        self,
        addresses: Iterable[str],
        capabilities: Capabilities,
        now: float,
        relays: Iterable[RelayAddress] = (),
    ) -> list[int]:
        """Sign a new own record and store it, and provider entries, in the DHT.

        The record is re-signed and stored again every `republish_interval`.
        Returns the operation ids started.
        """
        if self._key is None:
            raise ValueError("a node without a key cannot advertise")
        self._own_content = (tuple(addresses), tuple(relays), capabilities)
        return self._publish(now)

    def update_capabilities(self, capabilities: Capabilities) -> None:
        """Use `capabilities` from the next republish on (e.g. free job slots).

        Nothing is signed or sent now: free slots change with every job, and a
        record is a hint between republishes, not a live view.
        """
        if self._own_content is not None:
            self._own_content = (*self._own_content[:2], capabilities)

    def _publish(self, now: float) -> list[int]:
        assert self._key is not None
        assert self._own_content is not None
        addresses, relays, capabilities = self._own_content
        # Milliseconds since the epoch, strictly increasing: a restarted node
        # needs no saved counter to outrank its previous records.
        seq = max(int(now * 1000), self._own.seq + 1 if self._own else 0)
        content = RecordContent(
            addresses=addresses,
            relays=relays,
            capabilities=capabilities,
            seq=seq,
            created_at=now,
            expires_at=now + self.settings.record_ttl,
        )
        self._own = make_record(self._key, content, self._codec)
        self._next_republish = now + self.settings.republish_interval
        ops = [
            self._start(
                OperationKind.PUT_RECORD,
                self.contact.key,
                now,
                store=PutRecord(record=self._own.envelope),
            )
        ]
        for key in provider_keys(capabilities):
            ops.append(
                self._start(
                    OperationKind.ADD_PROVIDER,
                    key,
                    now,
                    store=AddProvider(key=key, record=self._own.envelope),
                )
            )
        return ops

    # -- inbound requests ----------------------------------------------------------------

    def admit(self, peer: str, now: float) -> bool:
        """Charge one inbound request to `peer`'s token bucket; False when over.

        A transport calls this before decoding a request, so malformed ones
        count too, then passes `admitted=True` to `handle_request`.
        """
        if self._limiter.allow(peer, now):
            return True
        refused = self._limiter.refused(peer)
        if refused == 1 or refused % 100 == 0:  # the first, then every hundredth
            self._events.append(RateLimited(peer=peer, refused=refused))
        return False

    def handle_request(
        self,
        sender: Contact,
        request: Request,
        now: float,
        *,
        admitted: bool = False,
        client: bool = False,
    ) -> Response:
        """Answer an RPC from `sender`, whose node id the transport authenticated.

        `admitted` says the transport already charged it through `admit`.
        `client` is the request's client flag: the sender is answered, but
        leaves (or never enters) the routing table, so it is never referred.
        """
        if not admitted and not self.admit(sender.node_id, now):
            return Refused(reason="rate limited")
        if client:
            self._drop_client(sender)
        else:
            self._learn_requester(sender, now)
        match request:
            case Ping():
                return Pong(record=self._own.envelope if self._own else None)
            case FindNode(target=target):
                return Nodes(closer=self._closer(target, sender))
            case GetRecord(key=key):
                record = self._records.get(key.hex)
                if record is not None and record.content.expires_at <= now:
                    record = None
                if record is None and key.hex == self.node_id and self._own is not None:
                    record = self._own
                return RecordReply(
                    record=record.envelope if record else None, closer=self._closer(key, sender)
                )
            case GetProviders(key=key):
                held = [
                    r for r in self._providers.get(key, {}).values() if r.content.expires_at > now
                ]
                if len(held) > MAX_PROVIDERS_PER_REPLY:
                    # A random sample, not the longest-lived: a sybil cannot
                    # buy the front of every reply with 24-hour records.
                    held = self._random().sample(held, MAX_PROVIDERS_PER_REPLY)
                return ProvidersReply(
                    providers=tuple(r.envelope for r in held),
                    closer=self._closer(key, sender),
                )
            case PutRecord() | AddProvider() if self._client_mode:
                return StoreReply(stored=False, reason="client mode: not a storage node")
            case PutRecord(record=envelope):
                return self._store_record(sender, envelope, now)
            case AddProvider(key=key, record=envelope):
                return self._add_provider(sender, key, envelope, now)

    def _closer(self, target: Key, sender: Contact) -> tuple[Contact, ...]:
        contacts = self.table.closest(target, self.settings.k + 1)
        if sender.node_id in self.table:
            contacts = [c for c in contacts if c.node_id != sender.node_id]
        return tuple(contacts[: self.settings.k])

    def _drop_client(self, sender: Contact) -> None:
        """A requester in client mode: out of the table (and its replacement cache)."""
        known = sender.node_id in self.table
        promoted = self.table.remove(sender.node_id)
        if known:
            self._events.append(PeerEvicted(contact=sender, reason="client mode"))
        if promoted is not None:
            self._events.append(PeerAdded(contact=promoted))

    def _learn_requester(self, sender: Contact, now: float) -> None:
        """Ping an unknown requester; it enters the table only if it answers."""
        if not self.table.wants(sender.node_id, now):
            return  # known, or it could only wait in a full bucket's replacement cache
        if now - self._learning.get(sender.node_id, -_LEARN_PING_BACKOFF) < _LEARN_PING_BACKOFF:
            return
        if self._learn_pings >= _MAX_LEARN_PINGS:
            return
        self._learning[sender.node_id] = now
        if len(self._learning) > 4 * _MAX_LEARN_PINGS:
            cutoff = now - _LEARN_PING_BACKOFF
            self._learning = {n: t for n, t in self._learning.items() if t > cutoff}
        self._send(sender, Ping(), _Purpose.LEARN)

    def _reject(self, sender: str, err: RecordRejectedError) -> StoreReply:
        self._events.append(
            RecordRejectedEvent(sender=sender, reason=err.reason, detail=err.detail)
        )
        return StoreReply(stored=False, reason=str(err))

    def _store_record(self, sender: Contact, envelope: SignedEnvelope, now: float) -> StoreReply:
        held = self._records.get(sender.node_id)  # a record is stored only by its own node
        if held is not None and held.envelope == envelope and held.content.expires_at > now:
            return StoreReply(stored=True)  # the very bytes already checked: a republish
        try:
            record = open_record(envelope, codec=self._codec, now=now, sender=sender.node_id)
            if held is not None and held.content.expires_at > now:
                _check_newer(held, record)
            if held is None and len(self._records) >= self.settings.max_records:
                raise RecordRejectedError(
                    RecordRejectReason.STORE_FULL, f"{len(self._records)} records held"
                )
        except RecordRejectedError as err:
            return self._reject(sender.node_id, err)
        self._records[record.node_id] = record
        self._remember(record)
        self._expire_at(record.content.expires_at, None, record.node_id)
        self._events.append(
            RecordStored(key=record.key, node_id=record.node_id, seq=record.seq, provider=False)
        )
        return StoreReply(stored=True)

    def _add_provider(
        self, sender: Contact, key: Key, envelope: SignedEnvelope, now: float
    ) -> StoreReply:
        entries = self._providers.get(key, {})
        held = entries.get(sender.node_id)
        if held is not None and held.envelope == envelope and held.content.expires_at > now:
            return StoreReply(stored=True)  # the very bytes already checked: a republish
        try:
            record = open_record(envelope, codec=self._codec, now=now, sender=sender.node_id)
            if key not in provider_keys(record.capabilities):
                raise RecordRejectedError(
                    RecordRejectReason.NOT_A_PROVIDER,
                    f"the record's capabilities do not qualify for key {key.hex[:16]}",
                )
            if held is not None and held.content.expires_at > now:
                _check_newer(held, record)
            if held is None:
                if self._provider_count >= self.settings.max_provider_entries:
                    raise RecordRejectedError(
                        RecordRejectReason.STORE_FULL, f"{self._provider_count} provider entries"
                    )
                if len(entries) >= self.settings.max_providers_per_key:
                    # A full key drops a random entry: neither "first come"
                    # nor "longest-lived" can be bought by a sybil.
                    victim = self._random().choice(sorted(entries))
                    self._drop_provider(key, victim)
                    entries = self._providers.get(key, {})
        except RecordRejectedError as err:
            return self._reject(sender.node_id, err)
        if held is None:
            self._provider_count += 1
        self._providers.setdefault(key, entries)[record.node_id] = record
        self._forget_other_classes(record)
        self._remember(record)
        self._expire_at(record.content.expires_at, key, record.node_id)
        self._events.append(
            RecordStored(key=key, node_id=record.node_id, seq=record.seq, provider=True)
        )
        return StoreReply(stored=True)

    def _forget_other_classes(self, record: PeerRecord) -> None:
        """Drop the sender's older entries under keys its newest record does
        not qualify for, so one node holds at most one entry per memory tier
        (re-signing with another WASI version does not multiply its entries)."""
        keys = set(provider_keys(record.capabilities))
        provided = self._provided_by.setdefault(record.node_id, set())
        for key in list(provided - keys):
            held = self._providers.get(key, {}).get(record.node_id)
            if held is None or held.seq < record.seq:
                self._drop_provider(key, record.node_id)
        provided.update(k for k in keys if record.node_id in self._providers.get(k, {}))

    def _drop_provider(self, key: Key, node_id: str) -> None:
        entries = self._providers.get(key)
        if entries is None or entries.pop(node_id, None) is None:
            return
        self._provider_count -= 1
        if not entries:
            del self._providers[key]
        provided = self._provided_by.get(node_id)
        if provided is not None:
            provided.discard(key)
            if not provided:
                del self._provided_by[node_id]

    def _random(self) -> random.Random:
        """A generator seeded from the injected randomness (never the global one)."""
        return random.Random(int.from_bytes(self._randbytes(8), "big"))  # noqa: S311

    def _remember(self, record: PeerRecord) -> None:
        held = self._peer_records.get(record.node_id)
        if held is not None and held.seq >= record.seq:
            return
        self._peer_records[record.node_id] = record
        self._peer_records.move_to_end(record.node_id)
        while len(self._peer_records) > _MAX_PEER_RECORDS:
            self._peer_records.popitem(last=False)

    # -- outbound RPCs -------------------------------------------------------------------

    def requests_to_send(self) -> list[OutgoingRequest]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _send(
        self, contact: Contact, request: Request, purpose: _Purpose, operation: int = 0
    ) -> None:
        self._next_rpc += 1
        self._rpcs[self._next_rpc] = _Rpc(contact=contact, purpose=purpose, operation=operation)
        self._outbox.append(
            OutgoingRequest(
                rpc=self._next_rpc, contact=contact, request=request, client=self._client_mode
            )
        )
        if purpose is _Purpose.LEARN:
            self._learn_pings += 1
        if operation:
            self._operations[operation].flying += 1

    def _pop_rpc(self, rpc: int) -> _Rpc | None:
        pending = self._rpcs.pop(rpc, None)
        if pending is not None:
            if pending.purpose is _Purpose.LEARN:
                self._learn_pings -= 1
            operation = self._operations.get(pending.operation)
            if operation is not None:
                operation.flying -= 1
        return pending

    def handle_response(
        self,
        rpc: int,
        response: Response,
        now: float,
        *,
        answered_from: tuple[str, int] | None = None,
    ) -> None:
        """The answer to `rpc`. `answered_from` is the (host, port) it really
        came from, when the transport knows it: a transport may reuse a
        connection to the node id whatever address a referrer named, and the
        table must record where the node answered, not where it was said to be.
        """
        pending = self._pop_rpc(rpc)
        if pending is None:
            return
        if isinstance(response, Refused):
            self._failed(pending, now, evict=False)
            return
        contact = pending.contact
        if answered_from is not None and answered_from != (contact.host, contact.port):
            try:
                contact = Contact(
                    node_id=contact.node_id, host=answered_from[0], port=answered_from[1]
                )
            except InvalidIdError:
                contact = pending.contact
        if pending.purpose is _Purpose.EVICT_CHECK:
            self.table.ping_result(contact.node_id, alive=True, now=now)
        else:
            self._answered(contact, now)
        if isinstance(response, Pong) and response.record is not None:
            try:
                record = open_record(
                    response.record, codec=self._codec, now=now, sender=contact.node_id
                )
            except RecordRejectedError as err:
                self._events.append(
                    RecordRejectedEvent(
                        sender=contact.node_id, reason=err.reason, detail=err.detail
                    )
                )
            else:
                self._remember(record)
        operation = self._operations.get(pending.operation)
        if operation is None:
            return
        if pending.purpose is _Purpose.STORE:
            operation.storing -= 1
            if isinstance(response, StoreReply) and response.stored:
                operation.stored += 1
            self._advance(operation, now)
            return
        closer: tuple[Contact, ...] = ()
        match response:
            case Nodes(closer=closer):
                pass
            case RecordReply(record=envelope, closer=closer):
                if envelope is not None:
                    self._take_record(operation, contact, envelope, now)
            case ProvidersReply(providers=envelopes, closer=closer):
                for envelope in envelopes[:MAX_PROVIDERS_PER_REPLY]:
                    self._take_provider(operation, contact, envelope, now)
            case _:
                pass  # a reply of the wrong type answers nothing useful
        operation.lookup.on_response(contact, _plausible(contact.host, closer[:MAX_CONTACTS]), now)
        self._advance(operation, now)

    def handle_failure(self, rpc: int, now: float) -> None:
        """The transport gave up on `rpc` (timeout, refused connection, error)."""
        pending = self._pop_rpc(rpc)
        if pending is not None:
            self._failed(pending, now, evict=True)

    def _failed(self, pending: _Rpc, now: float, *, evict: bool) -> None:
        contact = pending.contact
        if pending.purpose is _Purpose.EVICT_CHECK:
            if evict:
                was_known = contact.node_id in self.table
                promoted = self.table.ping_result(contact.node_id, alive=False, now=now)
                if was_known and contact.node_id not in self.table:
                    self._events.append(
                        PeerEvicted(contact=contact, reason="did not answer a ping")
                    )
                if promoted is not None:
                    self._events.append(PeerAdded(contact=promoted))
            else:
                self.table.ping_result(contact.node_id, alive=True, now=now)
        elif evict:
            removed, promoted = self.table.failed(contact.node_id, self.settings.max_failures)
            if removed:
                self._events.append(PeerEvicted(contact=contact, reason="did not answer"))
            if promoted is not None:
                self._events.append(PeerAdded(contact=promoted))
        operation = self._operations.get(pending.operation)
        if operation is None:
            return
        operation.failed += 1
        if pending.purpose is _Purpose.STORE:
            operation.storing -= 1
        else:
            operation.lookup.on_failure(contact, now)
        self._advance(operation, now)

    def _answered(self, contact: Contact, now: float) -> None:
        known = contact.node_id in self.table
        outcome = self.table.observe(contact, now)
        if isinstance(outcome, PingRequest):
            self._send(outcome.contact, Ping(), _Purpose.EVICT_CHECK)
        elif isinstance(outcome, Rejected):
            if not known:
                self._events.append(PeerRejected(contact=contact, reason=outcome.reason.value))
        elif not known and contact.node_id in self.table:
            self._events.append(PeerAdded(contact=contact))
            if (
                self.settings.learn_peer_records
                and contact.node_id not in self._peer_records
                and contact.node_id not in self._learning
            ):
                self._learning[contact.node_id] = now
                self._send(contact, Ping(), _Purpose.LEARN)

    def _take_record(
        self, operation: _Operation, sender: Contact, envelope: SignedEnvelope, now: float
    ) -> None:
        if operation.record is not None and operation.record.envelope == envelope:
            operation.holders += 1  # another holder of the very bytes already checked
            return
        try:
            record = open_record(
                envelope, codec=self._codec, now=now, expected_node_id=operation.target.hex
            )
        except RecordRejectedError as err:
            self._events.append(
                RecordRejectedEvent(sender=sender.node_id, reason=err.reason, detail=err.detail)
            )
            return
        operation.holders += 1
        if operation.record is None or record.seq > operation.record.seq:
            operation.record = record
        self._remember(record)

    def _take_provider(
        self, operation: _Operation, sender: Contact, envelope: SignedEnvelope, now: float
    ) -> None:
        signer = envelope.signer_public_key
        known = operation.providers.get(sha256_hex(signer)) if len(signer) == 32 else None
        if known is not None and known.envelope == envelope:
            return  # the very bytes already checked (by this node, for this key)
        try:
            record = open_record(envelope, codec=self._codec, now=now)
            if operation.target not in provider_keys(record.capabilities):
                raise RecordRejectedError(
                    RecordRejectReason.NOT_A_PROVIDER,
                    "a returned provider does not qualify for the key looked up",
                )
        except RecordRejectedError as err:
            self._events.append(
                RecordRejectedEvent(sender=sender.node_id, reason=err.reason, detail=err.detail)
            )
            return
        held = operation.providers.get(record.node_id)
        if held is None or record.seq > held.seq:
            operation.providers[record.node_id] = record
        self._remember(record)

    # -- operations ----------------------------------------------------------------------

    def _start(
        self,
        kind: OperationKind,
        target: Key,
        now: float,
        *,
        seeds: list[Contact] | None = None,
        store: Request | None = None,
    ) -> int:
        self._next_operation += 1
        if seeds is None:
            seeds = self.table.closest(target, self.settings.k)
        lookup = Lookup(
            target,
            seeds,
            k=self.settings.k,
            alpha=self.settings.alpha,
            exclude=[self.node_id],
            retries=self.settings.lookup_retries,
        )
        operation = _Operation(
            id=self._next_operation,
            kind=kind,
            target=target,
            lookup=lookup,
            started=now,
            store=store,
        )
        if kind is OperationKind.GET_PROVIDERS:
            for record in self._providers.get(target, {}).values():
                if record.content.expires_at > now:
                    operation.providers[record.node_id] = record
        self._operations[operation.id] = operation
        self.table.touch_key(target, now)
        self._advance(operation, now)
        return operation.id

    def _request_for(self, operation: _Operation) -> Request:
        if operation.kind is OperationKind.GET_RECORD:
            return GetRecord(key=operation.target)
        if operation.kind is OperationKind.GET_PROVIDERS:
            return GetProviders(key=operation.target)
        return FindNode(target=operation.target)

    def _advance(self, operation: _Operation, now: float) -> None:
        if operation.stores_sent:
            # Phase 2 runs once: it ends when every store is answered, stored
            # or not (refused stores were once sent again, forever).
            if operation.storing == 0:
                self._finish(operation, now)
            return
        if self._satisfied(operation) or operation.lookup.done:
            if operation.store is not None and operation.lookup.result():
                operation.stores_sent = True
                for contact in operation.lookup.result():
                    operation.storing += 1
                    self._send(contact, operation.store, _Purpose.STORE, operation.id)
                operation.rpcs += operation.storing
                return
            self._finish(operation, now)
            return
        queries = operation.lookup.next_queries(now)
        operation.rpcs += len(queries)
        request = self._request_for(operation)
        for contact in queries:
            self._send(contact, request, _Purpose.LOOKUP, operation.id)
        if not queries and not operation.flying:
            self._finish(operation, now)  # nobody left to ask

    def _satisfied(self, operation: _Operation) -> bool:
        if operation.kind is OperationKind.GET_RECORD:
            return operation.holders >= self.settings.get_quorum
        if operation.kind is OperationKind.GET_PROVIDERS:
            return len(operation.providers) >= self.settings.providers_wanted
        return False

    def _finish(self, operation: _Operation, now: float) -> None:
        del self._operations[operation.id]
        # RPCs still in flight stay known so their answers update the table,
        # but no longer feed this operation.
        for rpc in self._rpcs.values():
            if rpc.operation == operation.id:
                rpc.operation = 0
        stats = operation.lookup.stats()
        record = operation.record
        if record is None and operation.kind is OperationKind.GET_RECORD:
            record = self._records.get(operation.target.hex)
            if record is not None and record.content.expires_at <= now:
                record = None
        self._events.append(
            OperationFinished(
                operation=operation.id,
                kind=operation.kind,
                target=operation.target,
                started=operation.started,
                finished=now,
                hops=stats.hops,
                rpcs=operation.rpcs,
                failed_rpcs=operation.failed,
                closest=tuple(operation.lookup.result()),
                record=record,
                providers=tuple(
                    sorted(
                        operation.providers.values(),
                        key=lambda r: distance(r.key, operation.target),
                    )
                ),
                stored=operation.stored,
            )
        )
        if operation.kind is OperationKind.BOOTSTRAP and self.settings.refresh_on_join:
            self._refresh_after_join(operation.lookup.result(), now)

    def _refresh_after_join(self, neighbours: list[Contact], now: float) -> None:
        """Section 2.3: "Finally, u refreshes all k-buckets further away than its
        closest neighbor." One lookup for a random key in each such bucket."""
        if not neighbours:
            return
        nearest = bucket_index(self.contact.key, neighbours[0].key)
        for index in range(nearest + 1, KEY_BITS):
            target = self.table.random_key_in_bucket(index, self._randbytes(KEY_BYTES))
            self._start(OperationKind.REFRESH, target, now)

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float:
        return self._next_maintenance

    def handle_timer(self, now: float) -> None:
        """Expire records, refresh stale buckets and republish the own record."""
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.settings.maintenance_interval
        self._expire(now)
        if self._next_republish is not None and now >= self._next_republish:
            self._publish(now)
        for index in self.table.stale_buckets(now, self.settings.refresh_interval):
            target = self.table.random_key_in_bucket(index, self._randbytes(KEY_BYTES))
            self._start(OperationKind.REFRESH, target, now)

    def _expire_at(self, when: float, key: Key | None, node_id: str) -> None:
        self._expiry_seq += 1
        heapq.heappush(self._expiries, (when, self._expiry_seq, key, node_id))
        # Replacing a held record leaves its old entry behind; a peer
        # re-signing its record in a loop must not grow the heap for a day.
        if len(self._expiries) > 2 * (len(self._records) + self._provider_count) + 64:
            held: list[tuple[float, Key | None, str]] = [
                (r.content.expires_at, None, n) for n, r in self._records.items()
            ]
            held += [
                (r.content.expires_at, k, n)
                for k, entries in self._providers.items()
                for n, r in entries.items()
            ]
            # Fresh sequence numbers: equal times must never compare keys.
            self._expiries = [
                (when, self._expiry_seq + i, key, node_id)
                for i, (when, key, node_id) in enumerate(held, start=1)
            ]
            self._expiry_seq += len(held)
            heapq.heapify(self._expiries)

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, _, key, node_id = heapq.heappop(self._expiries)
            if key is None:
                record = self._records.get(node_id)
                if record is not None and record.content.expires_at <= now:
                    del self._records[node_id]
                continue
            entries = self._providers.get(key)
            if entries is None:
                continue
            record = entries.get(node_id)
            if record is not None and record.content.expires_at <= now:
                self._drop_provider(key, node_id)
        cutoff = now - _LEARN_PING_BACKOFF
        self._learning = {n: t for n, t in self._learning.items() if t > cutoff}


@functools.lru_cache(maxsize=65536)
def _scope(host: str) -> str | None:
    """Where an address can be reached from; None for addresses nobody dials."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "name"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:  # 240/4 holds broadcast
        return None
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    return "global"


def _plausible(referrer_host: str, closer: Sequence[Contact]) -> list[Contact]:
    """The referrals worth dialling: each one costs a QUIC Initial to its address.

    A peer must not aim our packets at third parties or at services only we
    can reach: addresses nobody dials are dropped, loopback, link-local and
    private ones are kept only from a referrer in the same scope, and one
    reply names at most `MAX_PER_IP` contacts per IP address.
    """
    referrer_scope = _scope(referrer_host)
    per_ip: dict[str, int] = {}
    kept: list[Contact] = []
    for contact in closer:
        scope = _scope(contact.host)
        if scope is None or (scope not in ("global", "name") and scope != referrer_scope):
            continue
        seen = per_ip.get(contact.host, 0)
        if seen >= MAX_PER_IP and scope != "loopback":
            continue
        per_ip[contact.host] = seen + 1
        kept.append(contact)
    return kept


def _check_newer(held: PeerRecord, record: PeerRecord) -> None:
    if record.seq < held.seq or (record.seq == held.seq and record.envelope == held.envelope):
        raise RecordRejectedError(
            RecordRejectReason.STALE, f"seq {record.seq}, already holding seq {held.seq}"
        )
    if record.seq == held.seq:
        raise RecordRejectedError(
            RecordRejectReason.CONFLICT, f"a different record with the same seq {record.seq}"
        )


__all__ = [
    "DhtNode",
    "DhtSettings",
    "Event",
    "OperationFinished",
    "OperationKind",
    "OutgoingRequest",
    "PeerAdded",
    "PeerEvicted",
    "PeerRejected",
    "RateLimited",
    "RecordRejectedEvent",
    "RecordStored",
]
