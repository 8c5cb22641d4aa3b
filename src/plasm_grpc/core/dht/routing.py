"""k-buckets and the routing table (Kademlia paper, sections 2.2, 2.4 and 4.1).

The table keeps, for each bucket index i in [0, 256), up to k contacts whose
distance from the own id lies in [2**i, 2**(i+1)), least-recently seen first.

Only contacts that have *answered* this node enter the table: the caller calls
`observe` when a response (a FIND_NODE reply, a pong, ...) arrives from a
contact, never for a contact merely named in someone else's reply, and never
for the sender of an unsolicited request (ping it first and observe the pong).
That closes the cheapest way to fill a table with addresses nobody controls.

Section 2.2 eviction policy: when a bucket is full, the least-recently seen
contact is pinged before anything is evicted; if it answers it moves to the
tail and the newcomer waits in the bucket's replacement cache, otherwise it is
dropped and the freshest cached contact takes its place (section 4.1). Long-
lived nodes are preferred because they are likely to stay up. The table never
sends the ping itself: `observe` returns a `PingRequest` and the caller later
reports `ping_result`.

Address diversity: a bucket holds at most `MAX_PER_IP` contacts sharing one IP
address and at most `MAX_PER_SUBNET` sharing one subnet (an IPv4 /24 or an IPv6
/48), and the whole table at most `MAX_PER_IP_TABLE` and `MAX_PER_SUBNET_TABLE`,
so one host or one cheap address block cannot take over a bucket or the table
(an eclipse attack). Contacts over a limit are rejected with a `RejectReason`.
Loopback addresses are exempt by default: every node of a local test network
shares 127.0.0.1, and whoever controls them controls the machine anyway.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.dht.keys import KEY_BITS, KEY_BYTES, Key, bucket_index
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import check_hex64

K: Final = 20
"""Bucket size and replication parameter (section 2.2; DESIGN.md item 6)."""
MAX_PER_IP: Final = 2
"""Most contacts in one bucket that share an IP address (several ports may be
legitimate, e.g. two nodes behind one NAT, but not a whole bucket)."""
MAX_PER_SUBNET: Final = 4
"""Most contacts in one bucket that share an IPv4 /24 or IPv6 /48."""
MAX_PER_IP_TABLE: Final = 8
"""Most contacts in the whole table that share an IP address."""
MAX_PER_SUBNET_TABLE: Final = 24
"""Most contacts in the whole table that share an IPv4 /24 or IPv6 /48."""
REPLACEMENT_CACHE_SIZE: Final = K
"""Most contacts waiting in one bucket's replacement cache (section 4.1)."""
_IPV4_PREFIX: Final = 24
_IPV6_PREFIX: Final = 48
_MAX_PORT: Final = 65535


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """A node as a routing table knows it: its id and where it answered from."""

    node_id: str
    host: str
    port: int

    def __post_init__(self) -> None:
        check_hex64(self.node_id, "node id")
        if not self.host or len(self.host) > 253:
            raise InvalidIdError("a contact's host must be 1 to 253 characters")
        if not 0 < self.port <= _MAX_PORT:
            raise InvalidIdError(f"a contact's port must be in 1..{_MAX_PORT}, got {self.port}")

    @property
    def key(self) -> Key:
        return Key.from_hex(self.node_id)

    def __deepcopy__(self, memo: dict[int, object]) -> Contact:
        return self  # immutable: a copied table shares its contacts


class RejectReason(enum.Enum):
    SELF = "the contact is this node"
    IP_LIMIT = f"the bucket already holds {MAX_PER_IP} contacts at this IP address"
    SUBNET_LIMIT = f"the bucket already holds {MAX_PER_SUBNET} contacts in this subnet"
    TABLE_IP_LIMIT = f"the table already holds {MAX_PER_IP_TABLE} contacts at this IP address"
    TABLE_SUBNET_LIMIT = f"the table already holds {MAX_PER_SUBNET_TABLE} contacts in this subnet"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """`observe` refused a contact; the table is unchanged."""

    contact: Contact
    reason: RejectReason


@dataclass(frozen=True, slots=True, kw_only=True)
class PingRequest:
    """Ping `contact` (the least-recently seen of a full bucket) and report the
    outcome through `RoutingTable.ping_result`."""

    contact: Contact
    bucket: int

    def __post_init__(self) -> None:
        if not 0 <= self.bucket < KEY_BITS:
            raise InvalidIdError(f"bucket index must be in [0, {KEY_BITS})")


@functools.lru_cache(maxsize=65536)
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@functools.lru_cache(maxsize=65536)
def _address_groups(host: str) -> tuple[str, str]:
    """(ip, subnet) used for diversity limits; a host name is its own group."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, host
    prefix = _IPV4_PREFIX if ip.version == 4 else _IPV6_PREFIX
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return str(ip), str(network)


@dataclass(slots=True)
class _Bucket:
    last_touched: float
    contacts: dict[str, Contact] = field(default_factory=dict)
    """Least-recently seen first (a plain dict keeps insertion order and
    iterates faster than an OrderedDict; moving to the end is pop + insert)."""
    seen: dict[str, float] = field(default_factory=dict)
    """When each contact last answered."""
    replacements: OrderedDict[str, Contact] = field(default_factory=OrderedDict)
    """Oldest first; the freshest is promoted."""
    pending_ping: str | None = None
    failures: dict[str, int] = field(default_factory=dict)
    """Consecutive failed RPCs of contacts that have failed since they last answered."""
    ips: Counter[str] = field(default_factory=Counter)
    subnets: Counter[str] = field(default_factory=Counter)


class RoutingTable:
    """256 k-buckets around `own_id`. See the module docstring for the rules.

    `ping_grace`: when a bucket is full and its least-recently seen contact
    answered less than this many seconds ago, the newcomer goes straight to
    the replacement cache without a ping, which is the outcome a ping would
    almost surely have (section 4.1 suggests cutting such traffic); a dead
    contact is still found and replaced when an RPC to it fails (`remove`).
    """

    def __init__(
        self,
        own_id: str,
        *,
        k: int = K,
        now: float,
        exempt_loopback: bool = True,
        ping_grace: float = 0.0,
    ) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        if ping_grace < 0:
            raise ValueError("ping_grace must be non-negative")
        self._own = Key.from_hex(own_id)
        self._own_hex = self._own.hex
        self._k = k
        self._exempt_loopback = exempt_loopback
        self._ping_grace = ping_grace
        self._created = now
        self._buckets: dict[int, _Bucket] = {}
        """Created on first use: most of the 256 are never needed."""
        self._where: dict[str, int] = {}
        """The bucket index of every contact in the table."""
        self._values: dict[str, int] = {}
        """The id of every contact in the table as an integer."""
        self._nonempty_desc: list[int] | None = None
        """Indices of the non-empty buckets, highest first (None: recompute)."""
        self._ips: Counter[str] = Counter()
        self._subnets: Counter[str] = Counter()

    @property
    def own_id(self) -> str:
        return self._own_hex

    @property
    def k(self) -> int:
        return self._k

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._where

    def contacts(self) -> list[Contact]:
        return [c for i in sorted(self._nonempty()) for c in self._buckets[i].contacts.values()]

    def bucket(self, index: int) -> list[Contact]:
        """Contacts of bucket `index`, least-recently seen first."""
        bucket = self._buckets.get(index)
        return list(bucket.contacts.values()) if bucket else []

    def replacements(self, index: int) -> list[Contact]:
        bucket = self._buckets.get(index)
        return list(bucket.replacements.values()) if bucket else []

    def _nonempty(self) -> list[int]:
        """Indices of the non-empty buckets, highest first."""
        if self._nonempty_desc is None:
            self._nonempty_desc = sorted(
                (i for i, b in self._buckets.items() if b.contacts), reverse=True
            )
        return self._nonempty_desc

    def wants(self, node_id: str, now: float) -> bool:
        """Whether `node_id`, if it answered now, could enter the table at once or
        prompt an eviction ping: False when it is in the table already or its
        bucket is full of contacts heard from within `ping_grace` (it would
        only wait in the replacement cache). Used to skip pinging back
        requesters that could not be added anyway."""
        if node_id in self._where or node_id == self._own_hex:
            return False
        try:
            index = (int(node_id, 16) ^ self._own.value).bit_length() - 1
        except ValueError:
            return False
        bucket = self._buckets.get(index)
        if bucket is None or len(bucket.contacts) < self._k:
            return True
        if bucket.pending_ping is not None:
            return False
        oldest = next(iter(bucket.contacts))
        return now - bucket.seen[oldest] >= self._ping_grace

    def _index(self, node_id: str) -> int:
        index = self._where.get(node_id)
        if index is not None:
            return index
        return bucket_index(self._own, Key.from_hex(node_id))

    def _bucket(self, index: int) -> _Bucket:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket(last_touched=self._created)
        return bucket

    def _last_touched(self, index: int) -> float:
        bucket = self._buckets.get(index)
        return self._created if bucket is None else bucket.last_touched

    def _diversity(self, bucket: _Bucket, contact: Contact) -> RejectReason | None:
        if self._exempt_loopback and _is_loopback(contact.host):
            return None
        ip, subnet = _address_groups(contact.host)
        known = bucket.contacts.get(contact.node_id)
        known_ip, known_subnet = _address_groups(known.host) if known is not None else ("", "")
        if self._ips[ip] - (known_ip == ip) >= MAX_PER_IP_TABLE:
            return RejectReason.TABLE_IP_LIMIT
        if self._subnets[subnet] - (known_subnet == subnet) >= MAX_PER_SUBNET_TABLE:
            return RejectReason.TABLE_SUBNET_LIMIT
        if bucket.ips[ip] - (known_ip == ip) >= MAX_PER_IP:
            return RejectReason.IP_LIMIT
        if bucket.subnets[subnet] - (known_subnet == subnet) >= MAX_PER_SUBNET:
            return RejectReason.SUBNET_LIMIT
        return None

    def observe(self, contact: Contact, now: float) -> PingRequest | Rejected | None:
        """Record that `contact` has just answered us (section 2.2).

        Returns a `PingRequest` when the contact's bucket is full and its
        least-recently seen entry must be checked (the newcomer waits in the
        replacement cache meanwhile), a `Rejected` when the contact is this
        node or breaks a diversity limit, and None otherwise.
        """
        node_id = contact.node_id
        index = self._where.get(node_id)
        if index is not None:
            bucket = self._buckets[index]
            known = bucket.contacts[node_id]
            if known.host != contact.host or known.port != contact.port:
                # It answered from another address: check that one's limits.
                reason = self._diversity(bucket, contact)
                if reason is not None:
                    return Rejected(contact=contact, reason=reason)
                self._take(bucket, node_id)
                self._put(bucket, index, contact, now)
            else:  # the common case: move to the tail (most recently seen)
                bucket.contacts[node_id] = bucket.contacts.pop(node_id)
                bucket.seen[node_id] = now
                bucket.failures.pop(node_id, None)
            bucket.last_touched = now
            return None
        if node_id == self._own_hex:
            return Rejected(contact=contact, reason=RejectReason.SELF)
        index = bucket_index(self._own, contact.key)
        bucket = self._bucket(index)
        reason = self._diversity(bucket, contact)
        if reason is not None:
            return Rejected(contact=contact, reason=reason)
        bucket.last_touched = now
        bucket.replacements.pop(node_id, None)
        if len(bucket.contacts) < self._k:
            self._put(bucket, index, contact, now)
            return None
        bucket.replacements[node_id] = contact
        while len(bucket.replacements) > REPLACEMENT_CACHE_SIZE:
            bucket.replacements.popitem(last=False)
        if bucket.pending_ping is not None:
            return None
        oldest = next(iter(bucket.contacts.values()))
        if now - bucket.seen[oldest.node_id] < self._ping_grace:
            return None  # heard from recently enough: the newcomer waits in the cache
        bucket.pending_ping = oldest.node_id
        return PingRequest(contact=oldest, bucket=index)

    def ping_result(self, node_id: str, alive: bool, now: float) -> Contact | None:
        """Report the outcome of a `PingRequest` (or of any ping to `node_id`).

        Returns the replacement promoted when a dead contact was dropped.
        """
        if node_id == self._own_hex:
            return None
        bucket = self._buckets.get(self._index(node_id))
        if bucket is None:
            return None
        if bucket.pending_ping == node_id:
            bucket.pending_ping = None
        if node_id not in bucket.contacts:
            return None
        if alive:
            bucket.contacts[node_id] = bucket.contacts.pop(node_id)
            bucket.seen[node_id] = now
            bucket.failures.pop(node_id, None)
            bucket.last_touched = now
            return None
        return self._drop(bucket, node_id, now)

    def remove(self, node_id: str) -> Contact | None:
        """Forget `node_id` (e.g. it stopped answering) and promote a replacement.

        Returns the replacement promoted, if any.
        """
        if node_id == self._own_hex:
            return None
        bucket = self._buckets.get(self._index(node_id))
        if bucket is None:
            return None
        bucket.replacements.pop(node_id, None)
        if bucket.pending_ping == node_id:
            bucket.pending_ping = None
        if node_id in bucket.contacts:
            return self._drop(bucket, node_id, bucket.seen[node_id])
        return None

    def failed(self, node_id: str, max_failures: int) -> tuple[bool, Contact | None]:
        """An RPC to `node_id` failed: is it removed, and who replaced it?

        Section 4.1: a contact whose bucket has a replacement waiting is
        replaced at once (the replacement answered more recently); otherwise
        it stays, flagged, until `max_failures` RPCs in a row have failed, so
        one lost message does not shrink a bucket nobody can refill.
        """
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        index = self._where.get(node_id)
        if index is None:
            return False, None
        bucket = self._buckets[index]
        failures = bucket.failures.get(node_id, 0) + 1
        if failures < max_failures and not bucket.replacements:
            bucket.failures[node_id] = failures
            return False, None
        return True, self.remove(node_id)

    def _put(self, bucket: _Bucket, index: int, contact: Contact, now: float) -> None:
        if not bucket.contacts:
            self._nonempty_desc = None
        bucket.contacts[contact.node_id] = contact
        bucket.seen[contact.node_id] = now
        self._where[contact.node_id] = index
        self._values[contact.node_id] = int(contact.node_id, 16)
        ip, subnet = _address_groups(contact.host)
        self._ips[ip] += 1
        self._subnets[subnet] += 1
        bucket.ips[ip] += 1
        bucket.subnets[subnet] += 1

    def _take(self, bucket: _Bucket, node_id: str) -> None:
        contact = bucket.contacts.pop(node_id)
        if not bucket.contacts:
            self._nonempty_desc = None
        del bucket.seen[node_id]
        bucket.failures.pop(node_id, None)
        del self._where[node_id]
        del self._values[node_id]
        ip, subnet = _address_groups(contact.host)
        for counter, group in (
            (self._ips, ip),
            (self._subnets, subnet),
            (bucket.ips, ip),
            (bucket.subnets, subnet),
        ):
            counter[group] -= 1
            if counter[group] <= 0:
                del counter[group]

    def _drop(self, bucket: _Bucket, node_id: str, now: float) -> Contact | None:
        """Remove `node_id`; return the replacement promoted in its place, if any.

        `now` becomes the promoted contact's last-seen time (it is not known
        when it last answered, only that it did after the dropped one)."""
        index = self._where[node_id]
        self._take(bucket, node_id)
        # Section 4.1: the most recently seen cached contact replaces it.
        for candidate_id in reversed(bucket.replacements):
            candidate = bucket.replacements[candidate_id]
            if self._diversity(bucket, candidate) is None:
                del bucket.replacements[candidate_id]
                self._put(bucket, index, candidate, now)
                return candidate
        return None

    def closest(self, target: Key, count: int) -> list[Contact]:
        """The `count` known contacts nearest `target` by XOR, nearest first.

        With d = own XOR target, every contact of a bucket whose bit is set
        in d is nearer than any contact of a bucket whose bit is clear; among
        the set ones a higher bucket is nearer, among the clear ones a lower
        one. Walking buckets in that order, whole buckets come out in
        distance order, so only the first few are read and sorted.
        """
        if count < 0:
            raise ValueError("count must be non-negative")
        if count == 0:
            return []
        d = self._own.value ^ target.value
        t = target.value
        # Buckets whose range shares target's bit pattern come first (higher
        # bits of d set, the higher the nearer), then the rest from nearest
        # to farthest. Only non-empty buckets are visited.
        desc = self._nonempty()
        order = [i for i in desc if d >> i & 1]
        order.extend(i for i in reversed(desc) if not d >> i & 1)
        ids: list[str] = []
        buckets = self._buckets
        for i in order:
            ids.extend(buckets[i].contacts)
            if len(ids) >= count:
                break
        # Distances are distinct (so are ids): sorting (distance, id) pairs never
        # compares ids, and the whole sort runs without a Python-level key.
        pairs = sorted(zip(map(t.__xor__, map(self._values.__getitem__, ids)), ids, strict=True))
        where = self._where
        return [buckets[where[node_id]].contacts[node_id] for _, node_id in pairs[:count]]

    def touch(self, index: int, now: float) -> None:
        """Mark bucket `index` refreshed, e.g. after a lookup in its range."""
        self._bucket(index).last_touched = now

    def touch_key(self, target: Key, now: float) -> None:
        if target != self._own:
            self.touch(bucket_index(self._own, target), now)

    def stale_buckets(self, now: float, refresh_interval: float) -> list[int]:
        """Buckets with no lookup or answer for `refresh_interval` (section 2.3).

        Buckets nearer than the nearest non-empty one are skipped: they cover
        exponentially small parts of the space and are almost surely empty;
        the own-id lookup at join and refreshes of the others cover them.
        """
        lowest = min(self._nonempty(), default=0)
        return [
            i for i in range(lowest, KEY_BITS) if now - self._last_touched(i) >= refresh_interval
        ]

    def random_key_in_bucket(self, index: int, random_bytes: bytes) -> Key:
        """A key in bucket `index`'s range, drawn from caller-supplied bytes."""
        if not 0 <= index < KEY_BITS:
            raise ValueError(f"bucket index must be in [0, {KEY_BITS})")
        if len(random_bytes) != KEY_BYTES:
            raise ValueError(f"need {KEY_BYTES} random bytes")
        low = int.from_bytes(random_bytes, "big") & ((1 << index) - 1)
        return Key(self._own.value ^ ((1 << index) | low))
