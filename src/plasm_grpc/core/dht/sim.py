"""A seeded, virtual-time network of Kademlia nodes for tests (STYLE.md habit 6).

Every node is a `RoutingTable` plus the lookups it is running; messages are
delivered after a latency drawn from one seeded `random.Random`, in virtual
time, through one event queue. Nothing sleeps and nothing binds a port, so a
run is fast and fully determined by its seed: `trace_digest()` hashes the
sequence of delivered events and two runs with one seed give one digest.

The protocol follows the paper: a joining node knows one bootstrap contact and
looks up its own id (section 2.3). A node receiving a request from a contact
it does not know pings it back and only adds it once the pong arrives (only
contacts that answered enter a table; see `routing`). Full buckets trigger the
ping-before-evict exchange (section 2.2), answered over the network too.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.lookup import ALPHA, Lookup
from plasm_grpc.core.dht.routing import Contact, K, PingRequest, RoutingTable
from plasm_grpc.core.ids import node_id_from_public_key

PORT: Final = 4000


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    rpc: int
    sender: Contact
    target: Key


@dataclass(frozen=True, slots=True, kw_only=True)
class Nodes:
    rpc: int
    sender: Contact
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    rpc: int
    sender: Contact


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    rpc: int
    sender: Contact


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    rpc: int


Message = FindNode | Nodes | Ping | Pong
Event = Message | Timeout


@dataclass(slots=True)
class _Pending:
    """An outstanding request: what to do when it is answered or times out."""

    peer: Contact
    lookup: Lookup | None = None
    evict_check: bool = False


@dataclass(slots=True)
class SimNode:
    contact: Contact
    table: RoutingTable
    alive: bool = True
    pending: dict[int, _Pending] = field(default_factory=dict)


class SimNetwork:
    def __init__(
        self,
        seed: int,
        *,
        k: int = K,
        alpha: int = ALPHA,
        latency: tuple[float, float] = (0.01, 0.1),
        timeout: float = 1.0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulation, reproducible by design
        self.now = 0.0
        self.k = k
        self.alpha = alpha
        self.latency = latency
        self.timeout = timeout
        self.nodes: dict[str, SimNode] = {}
        self._queue: list[tuple[float, int, str, Event]] = []
        self._seq = 0
        self._rpc = 0
        self._trace = hashlib.sha256()
        self.delivered = 0

    # -- nodes -------------------------------------------------------------

    def add_node(self) -> SimNode:
        """A fresh node with a random id and a random 10.0.0.0/8 address."""
        node_id = node_id_from_public_key(self.rng.randbytes(32))
        host = f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(256)}"
        contact = Contact(node_id=node_id, host=host, port=PORT)
        node = SimNode(contact=contact, table=RoutingTable(node_id, k=self.k, now=self.now))
        self.nodes[node_id] = node
        return node

    def live_ids(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive]

    def kill(self, node_id: str) -> None:
        self.nodes[node_id].alive = False

    def join(self, node: SimNode, bootstrap: Contact | None) -> Lookup | None:
        """Join through `bootstrap` by looking up the node's own id."""
        if bootstrap is None:
            return None
        return self.start_lookup(node, node.contact.key, seeds=[bootstrap])

    def start_lookup(
        self, node: SimNode, target: Key, seeds: list[Contact] | None = None
    ) -> Lookup:
        if seeds is None:
            seeds = node.table.closest(target, self.k)
        lookup = Lookup(
            target,
            seeds,
            k=self.k,
            alpha=self.alpha,
            timeout=self.timeout,
            exclude=[node.contact.node_id],
        )
        node.table.touch_key(target, self.now)
        self._pump_lookup(node, lookup)
        return lookup

    def oracle(self, target: Key, count: int, exclude: str | None = None) -> list[str]:
        """Brute force: the `count` live ids nearest `target`."""
        ids = [n for n in self.live_ids() if n != exclude]
        return sorted(ids, key=lambda n: int(n, 16) ^ target.value)[:count]

    # -- event loop ----------------------------------------------------------

    def _schedule(self, delay: float, dest: str, event: Event) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, dest, event))

    def _send(self, src: SimNode, dest: Contact, message: Message) -> None:
        self._schedule(self.rng.uniform(*self.latency), dest.node_id, message)

    def _request(self, src: SimNode, dest: Contact, message: Message, pending: _Pending) -> None:
        src.pending[message.rpc] = pending
        self._send(src, dest, message)
        self._schedule(self.timeout, src.contact.node_id, Timeout(rpc=message.rpc))

    def _next_rpc(self) -> int:
        self._rpc += 1
        return self._rpc

    def run(self, until: Callable[[], bool] | None = None, max_events: int = 10_000_000) -> None:
        """Deliver events in time order until the queue is empty or `until()`."""
        for _ in range(max_events):
            if not self._queue or (until is not None and until()):
                return
            when, seq, dest, event = heapq.heappop(self._queue)
            self.now = when
            self._trace.update(f"{when:.9f}|{seq}|{dest}|{event!r}\n".encode())
            self.delivered += 1
            node = self.nodes[dest]
            if node.alive:
                self._deliver(node, event)
        raise RuntimeError(f"seed {self.seed}: event budget exhausted")

    def trace_digest(self) -> str:
        return self._trace.copy().hexdigest()

    def _deliver(self, node: SimNode, event: Event) -> None:
        match event:
            case FindNode(rpc=rpc, sender=sender, target=target):
                closer = tuple(node.table.closest(target, self.k))
                self._send(node, sender, Nodes(rpc=rpc, sender=node.contact, contacts=closer))
                self._learn_requester(node, sender)
            case Ping(rpc=rpc, sender=sender):
                # No ping back: two nodes that cannot fit each other would
                # otherwise ping each other forever.
                self._send(node, sender, Pong(rpc=rpc, sender=node.contact))
            case Nodes(rpc=rpc, sender=sender, contacts=contacts):
                pending = node.pending.pop(rpc, None)
                if pending is None:
                    return
                self._answered(node, sender)
                if pending.lookup is not None:
                    pending.lookup.on_response(sender, contacts, self.now)
                    self._pump_lookup(node, pending.lookup)
            case Pong(rpc=rpc, sender=sender):
                pending = node.pending.pop(rpc, None)
                if pending is None:
                    return
                if pending.evict_check:
                    node.table.ping_result(sender.node_id, alive=True, now=self.now)
                else:
                    self._answered(node, sender)
            case Timeout(rpc=rpc):
                pending = node.pending.pop(rpc, None)
                if pending is None:
                    return
                if pending.evict_check:
                    node.table.ping_result(pending.peer.node_id, alive=False, now=self.now)
                else:
                    node.table.remove(pending.peer.node_id)
                if pending.lookup is not None:
                    pending.lookup.on_timer(self.now)
                    self._pump_lookup(node, pending.lookup)

    def _answered(self, node: SimNode, sender: Contact) -> None:
        outcome = node.table.observe(sender, self.now)
        if isinstance(outcome, PingRequest):
            ping = Ping(rpc=self._next_rpc(), sender=node.contact)
            self._request(node, outcome.contact, ping, _Pending(outcome.contact, evict_check=True))

    def _learn_requester(self, node: SimNode, sender: Contact) -> None:
        if sender.node_id in node.table or sender.node_id == node.contact.node_id:
            return
        if any(p.peer.node_id == sender.node_id for p in node.pending.values()):
            return
        ping = Ping(rpc=self._next_rpc(), sender=node.contact)
        self._request(node, sender, ping, _Pending(sender))

    def _pump_lookup(self, node: SimNode, lookup: Lookup) -> None:
        for peer in lookup.next_queries(self.now):
            request = FindNode(rpc=self._next_rpc(), sender=node.contact, target=lookup.target)
            self._request(node, peer, request, _Pending(peer, lookup=lookup))
