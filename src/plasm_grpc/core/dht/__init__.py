"""A hand-written, sans-I/O Kademlia DHT (DESIGN.md item 6; issue 4).

One module per idea of the paper (Maymounkov and Mazières, "Kademlia: A
Peer-to-peer Information System Based on the XOR Metric", 2002):

- `keys`: the 256-bit key space and the XOR metric (section 2.1).
- `routing`: k-buckets, LRU order, ping-before-evict, replacement caches and
  address diversity limits (sections 2.2, 2.4, 4.1).
- `lookup`: the iterative FIND_NODE lookup state machine (section 2.3).
- `records`: signed peer records and capability classes (provider keys).
- `messages`: the RPCs as values.
- `ratelimit`: per-peer token buckets for inbound RPCs.
- `node`: `DhtNode`, one node's protocol (sections 2.3-2.5): answers RPCs,
  runs lookups, stores and republishes records, refreshes buckets.
- `sim`: a seeded, virtual-time network of many `DhtNode`s (tests, benchmarks).

Nothing here reads a clock, draws randomness or touches a socket: time and
random bytes come in as arguments and output is pulled by the caller.
"""

from plasm_grpc.core.dht.keys import KEY_BITS, Key, bucket_index, closest, distance
from plasm_grpc.core.dht.lookup import Lookup, LookupStats
from plasm_grpc.core.dht.routing import (
    MAX_PER_IP,
    MAX_PER_SUBNET,
    Contact,
    PingRequest,
    Rejected,
    RejectReason,
    RoutingTable,
)

__all__ = [
    "KEY_BITS",
    "MAX_PER_IP",
    "MAX_PER_SUBNET",
    "Contact",
    "Key",
    "Lookup",
    "LookupStats",
    "PingRequest",
    "RejectReason",
    "Rejected",
    "RoutingTable",
    "bucket_index",
    "closest",
    "distance",
]
