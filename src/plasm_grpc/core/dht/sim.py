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

`run_scenario` builds a network through the protocol itself (every node joins
through one of a few bootstrap contacts), publishes records and provider
entries, then applies a `Scenario`: silent deaths, adversaries, continuous
churn with node timers on (refresh, republish, expiry), message loss; and
measures lookups, record GETs and provider lookups against a brute-force
oracle. Tests and `benchmarks/dht.py` share it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import heapq
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

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
    MEMORY_TIERS,
    Capabilities,
    RecordContent,
    RecordError,
    provider_keys,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.errors import PlasmError
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits

PORT: Final = 4000
_EPOCH: Final = 1_700_000_000.0
"""Virtual Unix time at which every simulation starts."""


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
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, PlasmError) as err:
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
    deadline: float
    """When the requester gives up (its RPC timeout)."""
    client: bool = False


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


@dataclass(frozen=True, slots=True)
class _Action:
    """A scheduled call into the simulation (a churn step, a measured operation)."""

    label: str
    fn: Callable[[], None] = field(compare=False, repr=False)


_SimEvent = _Deliver | _Reply | _Timeout | _Timer | _Action


def _trace_line(when: float, seq: int, event: _SimEvent) -> bytes:
    """What the trace digest hashes for one event: cheap, but it names every
    message's endpoints, rpc number and type, so any divergence shows."""
    match event:
        case _Deliver(src=src, dest=dest, rpc=rpc, request=request):
            what = f"D {src} {dest} {rpc} {type(request).__name__}"
        case _Reply(dest=dest, rpc=rpc, response=response):
            what = f"R {dest} {rpc} {type(response).__name__}"
        case _Timeout(dest=dest, rpc=rpc):
            what = f"T {dest} {rpc}"
        case _Timer(dest=dest):
            what = f"M {dest}"
        case _Action(label=label):
            what = f"A {label}"
    return f"{when:.6f}|{seq}|{what}\n".encode()


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
        self.now = _EPOCH  # virtual Unix time: records carry absolute expiry
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
        self._busy = 0
        """Queued events that are not node timers."""
        self._timed: set[str] = set()
        """Nodes with a timer event queued."""
        self.delivered = 0
        self.messages = 0
        self.on_finished: Callable[[SimNode, OperationFinished], None] | None = None
        """Called for every operation a node finishes (after `results` is updated)."""

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
            self._start_timer(node)
        return node

    def fork(self) -> SimNetwork:
        """An independent copy of the whole network (nodes, tables, stores, queue,
        random state, trace so far), so several scenarios can start from one
        build; each continues exactly as the original would have."""
        if self.on_finished is not None:
            raise ValueError("fork a network between operations, not during one")
        memo: dict[int, object] = {id(n.key): n.key for n in self.nodes.values()}
        memo[id(self._trace)] = self._trace.copy()  # hashlib objects cannot be deep-copied
        memo[id(self.settings)] = self.settings
        memo[id(self.codec)] = self.codec
        return copy.deepcopy(self, memo)

    def enable_timers(self) -> None:
        """Fire node timers from now on (refresh, republish, expiry), for every node."""
        self.timers = True
        for node in self.nodes.values():
            if node.alive:
                self._start_timer(node)

    def _start_timer(self, node: SimNode) -> None:
        if node.node_id not in self._timed:
            self._timed.add(node.node_id)
            self._schedule(node.dht.get_timer() - self.now, _Timer(dest=node.node_id))

    def at(self, delay: float, label: str, fn: Callable[[], None]) -> None:
        """Call `fn` after `delay` virtual seconds; `label` goes into the trace."""
        self._schedule(delay, _Action(label=label, fn=fn))

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
        if not isinstance(event, _Timer):
            self._busy += 1
        heapq.heappush(self._queue, (self.now + max(0.0, delay), self._seq, event))

    def run(self, until: Callable[[], bool] | None = None, max_events: int = 50_000_000) -> None:
        """Deliver events in time order until only timers remain, or `until()`."""
        for _ in range(max_events):
            if until is not None and until():
                return
            if not self._busy:
                return
            self._step()
        raise RuntimeError(f"seed {self.seed}: event budget exhausted")

    def run_for(self, seconds: float) -> None:
        """Advance virtual time by `seconds`, timers included."""
        end = self.now + seconds
        for _ in range(50_000_000):
            if not self._queue or self._queue[0][0] > end:
                self.now = end
                return
            self._step()
        raise RuntimeError(f"seed {self.seed}: event budget exhausted")

    def _step(self) -> None:
        when, seq, event = heapq.heappop(self._queue)
        if not isinstance(event, _Timer):
            self._busy -= 1
        self.now = when
        self.delivered += 1
        self._trace.update(_trace_line(when, seq, event))
        self._deliver(event)

    def trace_digest(self) -> str:
        return self._trace.copy().hexdigest()

    def _deliver(self, event: _SimEvent) -> None:
        match event:
            case _Deliver(
                src=src, dest=dest, rpc=rpc, request=request, deadline=deadline, client=client
            ):
                node = self.nodes.get(dest)
                if node is None or not node.alive:
                    self._time_out(src, rpc, deadline)
                    return
                sender = self.nodes[src].contact
                if node.adversary:
                    response = self._lie(request)
                else:
                    response = node.dht.handle_request(sender, request, self.now, client=client)
                    self._pump(node)
                delay = self._latency()
                if self.rng.random() < self.loss or self.now + delay >= deadline:
                    self._time_out(src, rpc, deadline)
                else:
                    self._schedule(delay, _Reply(dest=src, rpc=rpc, response=response))
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
                else:
                    self._timed.discard(dest)
            case _Action(fn=fn):
                fn()

    def _time_out(self, node_id: str, rpc: int, deadline: float) -> None:
        """The request or its reply is lost, or nobody answers: the requester's
        transport reports a failure at `deadline`. (A timeout is only queued
        for RPCs that will not be answered, a third fewer events to run.)"""
        self._schedule(deadline - self.now, _Timeout(dest=node_id, rpc=rpc))

    def _latency(self) -> float:
        return self.rng.uniform(*self.latency)

    def _pump(self, node: SimNode) -> None:
        for out in node.dht.requests_to_send():
            self.messages += 1
            self._pending.add((node.node_id, out.rpc))
            deadline = self.now + self.rpc_timeout
            delay = self._latency()
            if self.rng.random() < self.loss or self.now + delay >= deadline:
                self._time_out(node.node_id, out.rpc, deadline)
            else:
                self._schedule(
                    delay,
                    _Deliver(
                        src=node.node_id,
                        dest=out.contact.node_id,
                        rpc=out.rpc,
                        request=out.request,
                        deadline=deadline,
                        client=out.client,
                    ),
                )
        while (event := node.dht.next_event()) is not None:
            if isinstance(event, OperationFinished):
                node.results[event.operation] = event
                if self.on_finished is not None:
                    self.on_finished(node, event)
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


# -- scenarios ---------------------------------------------------------------------------

HOUR: Final = 3600.0
_SIM_MEMORY_TIERS: Final = MEMORY_TIERS[:4]
"""Publishers' maximum job memory is drawn from these (64 MiB to 4 GiB)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One simulated network and what happens to it while it is measured.

    The network is built by joins through the protocol, `bootstraps` well-known
    contacts, `join_wave` nodes joining at a time; `adversaries` of the nodes
    lie (see `SimNetwork._lie`). Then `records` honest nodes advertise a
    signed record and provider entries, `dead` of the nodes stop answering
    without a word, and `lookups` FIND_NODE lookups, `record_gets` GET_RECORDs
    and `provider_gets` GET_PROVIDERS run from random live honest nodes,
    `concurrency` at a time.

    With `churn_per_hour` > 0 the measurement is spread over `window` virtual
    seconds with node timers on, while nodes leave silently and as many new
    ones join through a bootstrap contact, each at that rate (a fraction of
    the network size per hour).
    """

    name: str
    nodes: int
    dead: float = 0.0
    adversaries: float = 0.0
    churn_per_hour: float = 0.0
    window: float = 1.5 * HOUR
    loss: float = 0.0
    lookups: int = 200
    records: int = 40
    record_gets: int = 200
    provider_gets: int = 40
    bootstraps: int = 3
    join_wave: int = 20
    concurrency: int = 20
    """Operations measured at once, without churn."""
    settings: DhtSettings | None = None

    @property
    def build_key(self) -> tuple[object, ...]:
        """Scenarios with equal keys start from the same built network."""
        return (
            self.nodes,
            self.adversaries,
            self.loss,
            self.bootstraps,
            self.join_wave,
            self.settings,
        )

    def __post_init__(self) -> None:
        if self.nodes < self.bootstraps + self.records + 2:
            raise ValueError("too few nodes for the bootstraps and the publishers")
        for name in ("dead", "adversaries", "loss"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1)")
        if self.concurrency < 1 or self.join_wave < 1 or self.bootstraps < 1:
            raise ValueError("concurrency, join_wave and bootstraps must be positive")
        if self.churn_per_hour < 0 or self.window <= 0:
            raise ValueError("churn_per_hour must be non-negative, window positive")


@dataclass(slots=True)
class ScenarioResult:
    """What `run_scenario` measured; the properties are the headline figures."""

    scenario: Scenario
    seed: int
    lookup_found: list[bool] = field(default_factory=list)
    """Per lookup: the live honest node nearest the target is in the result."""
    overlaps: list[float] = field(default_factory=list)
    """Per lookup: the share of the honest nodes among the k nearest live
    nodes (the oracle) that the result holds."""
    hops: list[int] = field(default_factory=list)
    rpcs: list[int] = field(default_factory=list)
    record_found: list[bool] = field(default_factory=list)
    provider_found: list[bool] = field(default_factory=list)
    joined: int = 0
    left: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    """Operations finished by kind after the publishing phase (refresh and
    put_record count the timers' bucket refreshes and republishes)."""
    messages: int = 0
    events: int = 0
    virtual_seconds: float = 0.0
    digest: str = ""

    @property
    def success(self) -> float:
        return _share(self.lookup_found)

    @property
    def overlap(self) -> float:
        return sum(self.overlaps) / len(self.overlaps) if self.overlaps else 0.0

    @property
    def record_success(self) -> float:
        return _share(self.record_found)

    @property
    def provider_success(self) -> float:
        return _share(self.provider_found)

    def describe(self) -> str:
        s = self.scenario
        return (
            f"seed {self.seed}, {s.name} ({s.nodes} nodes): lookups {self.success:.4f}"
            f" overlap {self.overlap:.4f}, record GET {self.record_success:.4f},"
            f" providers {self.provider_success:.4f}"
        )


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def percentile(samples: list[int] | list[float], q: float) -> float:
    """The nearest-rank `q` quantile (q in [0, 1]) of `samples`."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def build_network(scenario: Scenario, seed: int) -> tuple[SimNetwork, list[SimNode]]:
    """Grow the scenario's network by joins; returns it and its bootstrap nodes."""
    net = SimNetwork(
        seed,
        settings=scenario.settings,
        loss=scenario.loss,
    )
    bootstraps = [net.add_node()]
    for _ in range(scenario.bootstraps - 1):
        node = net.add_node()
        net.join(node, bootstraps[0].contact)
        net.run()
        bootstraps.append(node)
    remaining = scenario.nodes - scenario.bootstraps
    adversaries = round(scenario.adversaries * scenario.nodes)
    kinds = [True] * adversaries + [False] * (remaining - adversaries)
    net.rng.shuffle(kinds)
    for start in range(0, remaining, scenario.join_wave):
        for adversary in kinds[start : start + scenario.join_wave]:
            node = net.add_node(adversary=adversary)
            net.join(node, net.rng.choice(bootstraps).contact)
        net.run()
    return net, bootstraps


def _capabilities(rng: random.Random) -> Capabilities:
    return Capabilities(
        arch="x86_64",
        os="linux",
        cores=rng.choice((2, 4, 8)),
        max_limits=ResourceLimits(max_memory_bytes=rng.choice(_SIM_MEMORY_TIERS)),
        free_job_slots=2,
        total_job_slots=2,
    )


def run_scenarios(scenarios: list[Scenario], seed: int) -> list[ScenarioResult]:
    """`run_scenario` for each, building each distinct network once (and forking
    it per scenario); the results are those of separate runs."""
    built: dict[tuple[object, ...], SimNetwork] = {}
    results = []
    for scenario in scenarios:
        key = scenario.build_key
        if key not in built:
            built[key], _ = build_network(scenario, seed)
        results.append(run_scenario(scenario, seed, network=built[key].fork()))
    return results


def run_scenario(
    scenario: Scenario, seed: int, *, network: SimNetwork | None = None
) -> ScenarioResult:
    """Build, publish, break and measure one scenario; fully determined by `seed`.

    `network`: the scenario's network as `build_network(scenario, seed)` left
    it (or a fork of it), to skip the build; it is consumed.
    """
    if network is None:
        network, _ = build_network(scenario, seed)
    net = network
    bootstraps = list(net.nodes.values())[: scenario.bootstraps]
    result = ScenarioResult(scenario=scenario, seed=seed)
    rng = net.rng
    protected = {b.node_id for b in bootstraps}
    k = net.settings.k

    # Publish: records and provider entries, before anything fails.
    honest = [n for n in net.honest_live_ids() if n not in protected]
    publishers = rng.sample(honest, scenario.records)
    classes: dict[Key, list[str]] = {}
    for node_id in publishers:
        caps = _capabilities(rng)
        net.advertise(net.nodes[node_id], caps)
        for key in provider_keys(caps):
            classes.setdefault(key, []).append(node_id)
    net.run()

    # Silent deaths, among every node but the bootstraps.
    candidates = [n for n in net.nodes if n not in protected]
    for victim in rng.sample(candidates, round(scenario.dead * scenario.nodes)):
        net.kill(victim)

    live_ints: dict[str, int] = {}

    def live_sorted(target: Key, exclude: str) -> list[str]:
        """Oracle: the k live nodes nearest target (honest and adversarial)."""
        for node_id, node in net.nodes.items():
            if node.alive and node_id not in live_ints:
                live_ints[node_id] = int(node_id, 16)
        for node_id in [n for n in live_ints if not net.nodes[n].alive]:
            del live_ints[node_id]
        return heapq.nsmallest(
            k, (n for n in live_ints if n != exclude), key=lambda n: live_ints[n] ^ target.value
        )

    def score_lookup(origin: SimNode, finished: OperationFinished) -> None:
        nearest = live_sorted(finished.target, origin.node_id)
        want = {n for n in nearest if not net.nodes[n].adversary}
        got = {c.node_id for c in finished.closest}
        honest_nearest = next((n for n in nearest if n in want), None)
        result.lookup_found.append(honest_nearest is None or honest_nearest in got)
        result.overlaps.append(len(got & want) / len(want) if want else 1.0)
        result.hops.append(finished.hops)
        result.rpcs.append(finished.rpcs)

    watched: dict[tuple[str, int], Callable[[SimNode, OperationFinished], None]] = {}

    def on_finished(node: SimNode, finished: OperationFinished) -> None:
        kind = finished.kind.value
        result.operations[kind] = result.operations.get(kind, 0) + 1
        callback = watched.pop((node.node_id, finished.operation), None)
        if callback is not None:
            callback(node, finished)

    net.on_finished = on_finished

    def random_origin(avoid: str = "") -> SimNode:
        while True:
            node = net.nodes[rng.choice(net.honest_live_ids())]
            if node.node_id != avoid:
                return node

    def start_lookup() -> None:
        origin = random_origin()
        target = Key.from_bytes(rng.randbytes(32))
        op = net.call(origin, lambda d, now: d.find_node(target, now))
        watched[(origin.node_id, op)] = score_lookup

    def start_get() -> None:
        publisher = rng.choice(publishers)
        origin = random_origin(avoid=publisher)

        def score(_: SimNode, finished: OperationFinished) -> None:
            record = finished.record
            result.record_found.append(record is not None and record.node_id == publisher)

        op = net.call(origin, lambda d, now: d.get_record(publisher, now))
        watched[(origin.node_id, op)] = score

    def start_providers() -> None:
        key = rng.choice(sorted(classes, key=lambda c: c.value))
        origin = random_origin()

        def score(_: SimNode, finished: OperationFinished) -> None:
            found = {r.node_id for r in finished.providers}
            result.provider_found.append(bool(found & set(classes[key])))

        op = net.call(origin, lambda d, now: d.get_providers(key, now))
        watched[(origin.node_id, op)] = score

    starts: list[tuple[str, Callable[[], None]]] = (
        [("lookup", start_lookup)] * scenario.lookups
        + [("get", start_get)] * scenario.record_gets
        + [("providers", start_providers)] * scenario.provider_gets
    )
    rng.shuffle(starts)

    if scenario.churn_per_hour <= 0:
        # A batch at a time, each batch to completion: one at a time would
        # stretch virtual time past the records' lifetime (no timers here
        # to republish them) when lookups wait on timeouts.
        for first in range(0, len(starts), scenario.concurrency):
            for _, start in starts[first : first + scenario.concurrency]:
                start()
            net.run()
    else:
        _churn(net, scenario, bootstraps, result, starts)

    net.on_finished = None
    result.messages = net.messages
    result.events = net.delivered
    result.virtual_seconds = net.now - _EPOCH
    result.digest = net.trace_digest()
    return result


def _churn(
    net: SimNetwork,
    scenario: Scenario,
    bootstraps: list[SimNode],
    result: ScenarioResult,
    starts: list[tuple[str, Callable[[], None]]],
) -> None:
    """Run `starts` at random times over the window while nodes leave and join."""
    rng = net.rng
    net.enable_timers()
    protected = {b.node_id for b in bootstraps}
    rate = scenario.churn_per_hour * scenario.nodes / HOUR  # leaves (and joins) per second

    def leave() -> None:
        live = [n for n in net.live_ids() if n not in protected]
        net.kill(rng.choice(live))
        result.left += 1

    def join() -> None:
        node = net.add_node(adversary=rng.random() < scenario.adversaries)
        net.join(node, rng.choice(bootstraps).contact)
        result.joined += 1

    for label, fn in (("leave", leave), ("join", join)):
        when = rng.expovariate(rate)
        while when < scenario.window:
            net.at(when, label, fn)
            when += rng.expovariate(rate)
    # Measurements start after a tenth of the window, so churn is under way.
    for label, start in starts:
        net.at(rng.uniform(0.1, 1.0) * scenario.window, label, start)
    net.run_for(scenario.window + 4 * net.rpc_timeout + 10.0)


def standard_scenarios(nodes: int, **overrides: Any) -> list[Scenario]:
    """The four scenarios of benchmarks/dht.py at one network size."""
    return [
        Scenario(name="no churn", nodes=nodes, **overrides),
        Scenario(name="25% dead", nodes=nodes, dead=0.25, **overrides),
        Scenario(name="churn", nodes=nodes, churn_per_hour=0.2, **overrides),
        Scenario(name="20% adversarial", nodes=nodes, adversaries=0.2, **overrides),
    ]
