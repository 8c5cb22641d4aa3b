"""A 200-node seeded network: joins via one bootstrap node, lookups against an oracle."""

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


def run(seed: int, *, kill: int = 0) -> Outcome:
    net = SimNetwork(seed)
    bootstrap = net.add_node()
    for _ in range(NODES - 1):
        lookup = net.join(net.add_node(), bootstrap.contact)
        net.run()
        assert lookup is not None
        assert lookup.done, f"seed {seed}: join lookup did not finish"
    ids = sorted(net.nodes)
    for victim in net.rng.sample(ids[1:], kill):
        net.kill(victim)
    live = net.live_ids()
    overlaps: list[float] = []
    hops: list[int] = []
    for _ in range(TARGETS):
        origin = net.nodes[net.rng.choice(live)]
        target = Key.from_bytes(net.rng.randbytes(32))
        lookup = net.start_lookup(origin, target)
        net.run()
        assert lookup.done, f"seed {seed}: lookup did not finish"
        got = {c.node_id for c in lookup.result()}
        want = set(net.oracle(target, K, exclude=origin.contact.node_id))
        overlaps.append(len(got & want) / K)
        hops.append(lookup.stats().hops)
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
