"""A seeded, virtual-time network of `DhtNode`s (STYLE.md habit 6).

Each simulated node is the real sans-I/O `DhtNode`; the simulator is only its
transport: it carries requests and responses after a latency drawn from one
seeded `random.Random`, drops messages with probability `loss`, lets a
request to a dead (or non-existent) node time out after `rpc_timeout`, and
fires node timers, all in virtual time through one event queue. Nothing
sleeps and nothing binds a port, so a run is fast and fully determined by its
seed: `trace_digest()` hashes every delivered event, and two runs with one
seed give one digest.

Adversarial nodes answer lookups with made-up contacts near the target
(which never answer, like an eclipse attempt with unreachable addresses) and
never return a record or provider, but claim to store everything.

Peer records are really signed (Ed25519) and checked; their payload uses
`JsonRecordCodec`, the simulator's stand-in for the daemon's protobuf codec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from plasm_grpc.core.dht.keys import Key
from plasm_grpc.core.dht.messages import (
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersReply,
    RecordReply,
    Request,
    Response,
    StoreReply,
)
from plasm_grpc.core.dht.node import DhtNode, DhtSettings, Event, OperationFinished
from plasm_grpc.core.dht.records import (
    Capabilities,
    RecordContent,
    RecordError,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits

PORT: Final = 4000


class JsonRecordCodec:
    """Record payloads as canonical JSON (the simulator has no protobuf)."""

    def encode(self, content: RecordContent) -> bytes:
        return json.dumps(dataclasses.asdict(content), sort_keys=True).encode()

    def decode(self, payload: bytes) -> RecordContent:
        try:
            raw = json.loads(payload)
            caps = raw["capabilities"]
            return RecordContent(
                addresses=tuple(raw["addresses"]),
                capabilities=Capabilities(
                    **{**caps, "max_limits": ResourceLimits(**caps["max_limits"])}
                ),
                seq=raw["seq"],
                created_at=raw["created_at"],
                expires_at=raw["expires_at"],
            )
        except (ValueError, KeyError, TypeError) as err:
            raise RecordError(f"not a record: {err}") from err


@dataclass(slots=True)
class SimNode:
    dht: DhtNode
    key: NodeKey
    alive: bool = True
    adversary: bool = False
    results: dict[int, OperationFinished] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def contact(self) -> Contact:
        return self.dht.contact

    @property
    def node_id(self) -> str:
        return self.dht.node_id


@dataclass(frozen=True, slots=True)
class _Deliver:
    src: str
    dest: str
    rpc: int
    request: Request


@dataclass(frozen=True, slots=True)
class _Reply:
    dest: str
    rpc: int
    response: Response


@dataclass(frozen=True, slots=True)
class _Timeout:
    dest: str
    rpc: int


@dataclass(frozen=True, slots=True)
class _Timer:
    dest: str


_SimEvent = _Deliver | _Reply | _Timeout | _Timer


class SimNetwork:
    def __init__(
        self,
        seed: int,
        *,
        settings: DhtSettings | None = None,
        latency: tuple[float, float] = (0.01, 0.1),
        loss: float = 0.0,
        rpc_timeout: float = 1.0,
        timers: bool = False,
        keep_events: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulation, reproducible by design
        self.now = 1_700_000_000.0  # virtual Unix time: records carry absolute expiry
        self.settings = settings or DhtSettings(learn_peer_records=False)
        self.latency = latency
        self.loss = loss
        self.rpc_timeout = rpc_timeout
        self.timers = timers
        self.keep_events = keep_events
        self.codec = JsonRecordCodec()
        self.nodes: dict[str, SimNode] = {}
        self._queue: list[tuple[float, int, _SimEvent]] = []
        self._pending: set[tuple[str, int]] = set()
        self._seq = 0
        self._trace = hashlib.sha256()
        self.delivered = 0
        self.messages = 0

    # -- nodes ---------------------------------------------------------------------------

    def add_node(self, *, adversary: bool = False) -> SimNode:
        """A node with a fresh key and a random 10.0.0.0/8 address."""
        key = NodeKey.from_seed(self.rng.randbytes(32))
        host = f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(256)}"
        dht = DhtNode(
            Contact(node_id=key.node_id, host=host, port=PORT),
            key=key,
            codec=self.codec,
            randbytes=self.rng.randbytes,
            now=self.now,
            settings=self.settings,
        )
        node = SimNode(dht=dht, key=key, adversary=adversary)
        self.nodes[key.node_id] = node
        if self.timers:
            self._schedule(dht.get_timer() - self.now, _Timer(dest=key.node_id))
        return node

    def live_ids(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive]

    def honest_live_ids(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive and not node.adversary]

    def kill(self, node_id: str) -> None:
        """The node stops answering, silently (no goodbye)."""
        self.nodes[node_id].alive = False

    def join(self, node: SimNode, bootstrap: Contact) -> int:
        """Join through `bootstrap` with the protocol itself (section 2.3)."""
        op = node.dht.bootstrap([bootstrap], self.now)
        self._pump(node)
        return op

    def call(self, node: SimNode, start: Callable[[DhtNode, float], int]) -> int:
        """Start an operation on `node`, e.g. `lambda d, now: d.find_node(key, now)`."""
        op = start(node.dht, self.now)
        self._pump(node)
        return op

    def advertise(self, node: SimNode, capabilities: Capabilities) -> list[int]:
        ops = node.dht.advertise([f"{node.contact.host}:{PORT}"], capabilities, self.now)
        self._pump(node)
        return ops

    def oracle(self, target: Key, count: int, exclude: str | None = None) -> list[str]:
        """Brute force: the `count` live honest ids nearest `target`."""
        ids = [n for n in self.honest_live_ids() if n != exclude]
        return sorted(ids, key=lambda n: int(n, 16) ^ target.value)[:count]

    # -- the event loop ------------------------------------------------------------------

    def _schedule(self, delay: float, event: _SimEvent) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + max(0.0, delay), self._seq, event))

    def run(self, until: Callable[[], bool] | None = None, max_events: int = 50_000_000) -> None:
        """Deliver events in time order until only timers remain, or `until()`."""
        for _ in range(max_events):
            if until is not None and until():
                return
            if not self._queue or (not self._pending and self._only_timers()):
                return
            when, seq, event = heapq.heappop(self._queue)
            self.now = when
            self.delivered += 1
            self._trace.update(f"{when:.6f}|{seq}|{event!r}\n".encode())
            self._deliver(event)
        raise RuntimeError(f"seed {self.seed}: event budget exhausted")

    def run_for(self, seconds: float) -> None:
        """Advance virtual time by `seconds`, timers included."""
        end = self.now + seconds
        for _ in range(50_000_000):
            if not self._queue or self._queue[0][0] > end:
                self.now = end
                return
            when, seq, event = heapq.heappop(self._queue)
            self.now = when
            self.delivered += 1
            self._trace.update(f"{when:.6f}|{seq}|{event!r}\n".encode())
            self._deliver(event)
        raise RuntimeError(f"seed {self.seed}: event budget exhausted")

    def _only_timers(self) -> bool:
        return all(isinstance(e, _Timer) for _, _, e in self._queue)

    def trace_digest(self) -> str:
        return self._trace.copy().hexdigest()

    def _deliver(self, event: _SimEvent) -> None:
        match event:
            case _Deliver(src=src, dest=dest, rpc=rpc, request=request):
                node = self.nodes.get(dest)
                if node is None or not node.alive:
                    return  # the requester's timeout fires
                sender = self.nodes[src].contact
                if node.adversary:
                    response = self._lie(request)
                else:
                    response = node.dht.handle_request(sender, request, self.now)
                    self._pump(node)
                if self.rng.random() >= self.loss:
                    self._schedule(self._latency(), _Reply(dest=src, rpc=rpc, response=response))
            case _Reply(dest=dest, rpc=rpc, response=response):
                if (dest, rpc) not in self._pending:
                    return
                self._pending.discard((dest, rpc))
                node = self.nodes[dest]
                if node.alive:
                    node.dht.handle_response(rpc, response, self.now)
                    self._pump(node)
            case _Timeout(dest=dest, rpc=rpc):
                if (dest, rpc) not in self._pending:
                    return
                self._pending.discard((dest, rpc))
                node = self.nodes[dest]
                if node.alive:
                    node.dht.handle_failure(rpc, self.now)
                    self._pump(node)
            case _Timer(dest=dest):
                node = self.nodes[dest]
                if node.alive:
                    node.dht.handle_timer(self.now)
                    self._pump(node)
                    self._schedule(node.dht.get_timer() - self.now, _Timer(dest=dest))

    def _latency(self) -> float:
        return self.rng.uniform(*self.latency)

    def _pump(self, node: SimNode) -> None:
        for out in node.dht.requests_to_send():
            self.messages += 1
            self._pending.add((node.node_id, out.rpc))
            if self.rng.random() >= self.loss:
                self._schedule(
                    self._latency(),
                    _Deliver(
                        src=node.node_id, dest=out.contact.node_id, rpc=out.rpc, request=out.request
                    ),
                )
            self._schedule(self.rpc_timeout, _Timeout(dest=node.node_id, rpc=out.rpc))
        while (event := node.dht.next_event()) is not None:
            if isinstance(event, OperationFinished):
                node.results[event.operation] = event
            elif self.keep_events:
                node.events.append(event)

    def _lie(self, request: Request) -> Response:
        """An adversary's answer: unreachable made-up contacts close to the target."""
        match request:
            case Ping():
                return Pong()
            case FindNode(target=key) | GetRecord(key=key) | GetProviders(key=key):
                fakes = tuple(self._fake_near(key) for _ in range(self.settings.k))
                if isinstance(request, GetRecord):
                    return RecordReply(record=None, closer=fakes)
                if isinstance(request, GetProviders):
                    return ProvidersReply(providers=(), closer=fakes)
                return Nodes(closer=fakes)
            case _:
                return StoreReply(stored=True)  # a lie: nothing is kept

    def _fake_near(self, key: Key) -> Contact:
        node_id = f"{key.value ^ self.rng.getrandbits(200):064x}"
        host = f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(256)}"
        return Contact(node_id=node_id, host=host, port=PORT)
