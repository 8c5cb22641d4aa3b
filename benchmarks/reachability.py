#!/usr/bin/env python3
"""Plasm reachability benchmark: hole punching and relayed vs direct jobs behind NATs.

Needs root (it builds network namespaces, like tests/test_nat_relay.py, with
tests/netns.py). Per topology - two "cone" (port-preserving) NATs, then NAT B
symmetric (a new external port per destination) - it starts a public
bootstrap node, a public relay, and a worker B behind NAT B that reserves at
the relay. Then, per trial, a fresh requester A behind NAT A (new node id, new
port, so fresh NAT mappings) submits jobs that can only run on B:

* hole punch: whether A's first job got a direct path to B (A's `hole_punch`
  log event) and how long the relay connect plus punch took;
* first job: Submit to verified result, relay and punch included;
* warm jobs: Submit latency once A holds its connection to B: direct after a
  successful punch, relayed otherwise. In the cone topology one more
  requester runs with `relay.hole_punch = false`, so relayed and direct
  latency are compared over the same NATs in the same run.

Figures only: target misses are printed, never asserted; exit 0 whenever it
could measure, 1 when it could not.

Usage:
    sudo .venv/bin/python benchmarks/reachability.py           # 8 trials per topology
    sudo .venv/bin/python benchmarks/reachability.py --quick   # 2 trials (CI)
    ... --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # netns.py and the test daemons

HELLO: Final = ROOT / "examples" / "build" / "hello.wasm"
WAIT_S: Final = 60.0


@dataclass
class Trial:
    direct: bool
    punch_ms: float
    first_job_ms: float
    warm_p50_ms: float


@dataclass
class TopologyResult:
    name: str
    trials: list[Trial] = field(default_factory=list)
    relayed_only_p50_ms: float | None = None  # hole_punch = false, same NATs

    @property
    def punch_success(self) -> str:
        return f"{sum(t.direct for t in self.trials)}/{len(self.trials)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 trials per topology (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("reachability.py needs root (network namespaces)", file=sys.stderr)
        return 1
    if not HELLO.exists():
        print(f"{HELLO} is missing: run scripts/build-examples.sh", file=sys.stderr)
        return 1
    trials = 2 if args.quick else 8
    jobs = 10 if args.quick else 40
    results = [
        measure("cone NAT A, cone NAT B", (), trials, jobs, relayed_baseline=True),
        measure("cone NAT A, symmetric NAT B", {2}, trials, jobs, relayed_baseline=False),
    ]
    if args.json:
        print(json.dumps([asdict(r) | {"punch_success": r.punch_success} for r in results]))
    else:
        report(results)
    return 0


def measure(
    name: str, symmetric: Collection[int], trials: int, jobs: int, *, relayed_baseline: bool
) -> TopologyResult:
    from conftest import DaemonFactory
    from netns import nat_topology
    from test_nat_relay import REQUESTER_CONFIG, start_public_nodes, wait_for_relays
    from test_nat_topology import ns_daemon

    result = TopologyResult(name=name)
    print(f"== {name}: setting up", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp, nat_topology(2, symmetric=symmetric) as topo:
        factory = DaemonFactory(Path(tmp))
        try:
            nat_a, nat_b = topo.nats
            _, _, joined = start_public_nodes(factory, topo)
            b = ns_daemon(factory, nat_b.private, f"{nat_b.private_ip}:9702", joined)
            wait_for_relays(b)  # the worker behind NAT B holds a reservation at the relay
            hello = HELLO.read_bytes()
            runs = [(i, True) for i in range(trials)]
            if relayed_baseline:
                runs.append((trials, False))
            for index, punch in runs:
                a = ns_daemon(
                    factory,
                    nat_a.private,
                    f"{nat_a.private_ip}:{9720 + index}",
                    joined
                    + REQUESTER_CONFIG
                    # Earlier requesters linger in the seed's table until it
                    # finds them gone: lookups may wait on them at first.
                    + "search_timeout_s = 20.0\n"
                    + f"[relay]\nhole_punch = {'true' if punch else 'false'}\n",
                )
                first_ms = first_job(a, b.node_id, hello)
                warm = [job_ms(a, b.node_id, hello) for _ in range(jobs)]
                warm_p50 = statistics.median(warm)
                if punch:
                    event = a.wait_for_event("hole_punch", WAIT_S)
                    if event is None:
                        raise SystemExit(f"{name}: no hole_punch event on trial {index}")
                    trial = Trial(
                        direct=bool(event["direct"]),
                        punch_ms=float(event["ms"]),
                        first_job_ms=first_ms,
                        warm_p50_ms=warm_p50,
                    )
                    result.trials.append(trial)
                    print(f"   trial {index}: {trial}", file=sys.stderr, flush=True)
                else:
                    result.relayed_only_p50_ms = warm_p50
                a.close()
        finally:
            factory.close()
    return result


def first_job(a: Any, worker: str, hello: bytes) -> float:
    """The first job that runs (the time of that Submit alone), retried (bounded)
    while the requester's DHT lookups wait on stale contacts."""
    import grpc

    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return job_ms(a, worker, hello)
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def job_ms(a: Any, worker: str, hello: bytes) -> float:
    from conftest import make_request

    started = time.perf_counter()
    response = a.stub.Submit(make_request(hello, stdin=b"Hello, World"), timeout=WAIT_S)
    elapsed = (time.perf_counter() - started) * 1000
    if response.executor_node_id != worker or response.result.stdout != b"dlroW ,olleH":
        raise SystemExit(f"the job ran on {response.executor_node_id[:16]}, not on B")
    return elapsed


def report(results: list[TopologyResult]) -> None:
    print("\nPlasm reachability benchmark (network namespaces, nftables NATs)")
    print(f"{'topology':32} {'punch ok':>9} {'punch ms':>9} {'1st job ms':>11} {'warm p50':>9}")
    direct_p50: list[float] = []
    relayed_p50: list[float] = []
    for r in results:
        punch_ms = statistics.median(t.punch_ms for t in r.trials) if r.trials else 0.0
        first = statistics.median(t.first_job_ms for t in r.trials) if r.trials else 0.0
        warm = statistics.median(t.warm_p50_ms for t in r.trials) if r.trials else 0.0
        print(f"{r.name:32} {r.punch_success:>9} {punch_ms:9.1f} {first:11.1f} {warm:9.2f}")
        direct_p50 += [t.warm_p50_ms for t in r.trials if t.direct]
        relayed_p50 += [t.warm_p50_ms for t in r.trials if not t.direct]
        if r.relayed_only_p50_ms is not None:
            relayed_p50.append(r.relayed_only_p50_ms)
            print(
                f"{'... same NATs, no hole punch':32} {'-':>9} {'-':>9} {'-':>11} "
                f"{r.relayed_only_p50_ms:9.2f}"
            )
    if direct_p50 and relayed_p50:
        d, rel = statistics.median(direct_p50), statistics.median(relayed_p50)
        print(
            f"\nwarm job p50: direct {d:.2f} ms, relayed {rel:.2f} ms "
            f"(relayed/direct {rel / d:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
