"""A 200-node seeded network of real DhtNodes: joins via one bootstrap node, lookups and
records against an oracle."""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass

import pytest

from plasm_grpc.core.dht import Key
from plasm_grpc.core.dht.sim import SimNetwork

NODES = 200
TARGETS = 50
K = 20


@dataclass(frozen=True)
class Outcome:
    overlap: float
    hops: float
    digest: str


def build(seed: int, nodes: int = NODES) -> SimNetwork:
    net = SimNetwork(seed)
    bootstrap = net.add_node()
    for _ in range(nodes - 1):
        node = net.add_node()
        op = net.join(node, bootstrap.contact)
        net.run()
        assert op in node.results, f"seed {seed}: join lookup did not finish"
    return net


def run(seed: int, *, kill: int = 0) -> Outcome:
    net = build(seed)
    ids = sorted(net.nodes)
    for victim in net.rng.sample(ids[1:], kill):
        net.kill(victim)
    live = net.live_ids()
    overlaps: list[float] = []
    hops: list[int] = []
    for _ in range(TARGETS):
        origin = net.nodes[net.rng.choice(live)]
        target = Key.from_bytes(net.rng.randbytes(32))
        op = net.call(origin, lambda d, now, t=target: d.find_node(t, now))
        net.run()
        result = origin.results[op]
        got = {c.node_id for c in result.closest}
        want = set(net.oracle(target, K, exclude=origin.node_id))
        overlaps.append(len(got & want) / K)
        hops.append(result.hops)
    return Outcome(statistics.mean(overlaps), statistics.mean(hops), net.trace_digest())


cached_run = functools.cache(run)


@pytest.mark.parametrize("seed", [1, 2])
def test_lookups_find_the_true_k_closest(seed: int) -> None:
    outcome = cached_run(seed)
    assert outcome.overlap >= 0.95, f"seed {seed}: mean overlap {outcome.overlap:.3f}"


def test_lookups_survive_churn() -> None:
    seed = 3
    outcome = run(seed, kill=NODES // 10)
    assert outcome.overlap >= 0.9, f"seed {seed}: mean overlap {outcome.overlap:.3f}"


def test_same_seed_same_trace() -> None:
    seed = 1
    first, second = cached_run(seed), run(seed)
    assert first.digest == second.digest, f"seed {seed}: traces differ"
    assert cached_run(seed + 1).digest != first.digest
