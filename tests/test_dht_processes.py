"""Twenty real plasmd processes on loopback, started from one bootstrap node.

They discover each other through the DHT (every routing table fills up with the
other nineteen), find capability providers (FindWorkers returns exactly the
nodes whose signed records qualify), and resolve each other's records by id.
"""

from __future__ import annotations

import json
import random
import threading

import grpc
import pytest
from conftest import Daemon, DaemonFactory, rpc_error, wait_until
from plasm.v1 import service_pb2
from test_daemon_lifecycle import run_cli

NODES = 20
MIB = 1024 * 1024
BIG = 1024 * MIB  # the default limits.max.max_memory_bytes
SMALL = 256 * MIB
# Every node shares 127.0.0.1: lift the per-IP inbound connection limit (16).
OVERLAY = "[overlay]\nmax_connections_per_ip = 256\n"


def _start_all(daemons: list[Daemon]) -> None:
    errors: list[BaseException] = []

    def start(d: Daemon) -> None:
        try:
            d.start(timeout=90)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=start, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


def _known(d: Daemon) -> set[str]:
    peers = d.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10).peers
    return {p.node_id for p in peers}


def _workers(d: Daemon, memory: int) -> set[str]:
    response = d.stub.FindWorkers(
        service_pb2.FindWorkersRequest(min_memory_bytes=memory, limit=100), timeout=20
    )
    return {w.node_id for w in response.workers}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Daemon], dict[str, int]]:
    factory = DaemonFactory(tmp_path_factory.mktemp("dht20"))
    try:
        seed = factory(OVERLAY)
        bootstrap = f"{seed.node_id}@{seed.node_info().overlay_address}"
        memory: dict[str, int] = {seed.node_id: BIG}
        others = [
            factory(
                OVERLAY + f'bootstrap = ["{bootstrap}"]\nreconnect_interval_s = 0.5\n'
                f"[limits.max]\nmax_memory_bytes = {BIG if i % 2 else SMALL}\n"
                f"[limits.default]\nmax_memory_bytes = {64 * MIB}\n",
                start=False,
            )
            for i in range(NODES - 1)
        ]
        _start_all(others)
        for i, d in enumerate(others):
            memory[d.node_id] = BIG if i % 2 else SMALL
        yield [seed, *others], memory
    finally:
        factory.close()


def test_twenty_processes_discover_each_other(
    network: tuple[list[Daemon], dict[str, int]],
) -> None:
    daemons, _ = network
    everyone = {d.node_id for d in daemons}
    for d in daemons:
        wait_until(
            lambda d=d: _known(d) >= everyone - {d.node_id},
            timeout=60,
            interval=0.5,
            what=f"{d.node_id[:12]} knowing all {NODES - 1} other nodes",
        )
    sample = daemons[-1]
    assert sample.events("dht_peer_added")
    assert sample.events("dht_lookup_finished")
    # Records (capabilities) arrive for the peers in the table.
    wait_until(
        lambda: all(
            p.HasField("record_content")
            for p in sample.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10).peers
        ),
        timeout=60,
        interval=0.5,
        what="peer records for every peer in the table",
    )


def test_twenty_processes_find_capability_providers(
    network: tuple[list[Daemon], dict[str, int]],
) -> None:
    daemons, memory = network
    big = {n for n, m in memory.items() if m >= 512 * MIB}
    everyone = set(memory)
    rng = random.Random(4)
    for d in rng.sample(daemons, 4):
        wait_until(
            lambda d=d: _workers(d, 512 * MIB) == big,
            timeout=60,
            interval=0.5,
            what=f"{d.node_id[:12]} finding the {len(big)} nodes with 1 GiB jobs",
        )
        assert _workers(d, 0) == everyone
    # More memory than any node offers: a lookup that finds nobody, not an error.
    assert _workers(daemons[3], 2048 * MIB) == set()
    proc = run_cli("--addr", daemons[5].addr, "workers", "--memory", "512MiB", "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert {w["nodeId"] for w in found["workers"]} == big
    assert found["capabilityClass"] == "wasi=preview1;memory>=1024MiB"


def test_twenty_processes_resolve_each_other_by_id(
    network: tuple[list[Daemon], dict[str, int]],
) -> None:
    daemons, memory = network
    asker, target = daemons[7], daemons[12]
    response = asker.stub.FindPeer(service_pb2.FindPeerRequest(node_id=target.node_id), timeout=20)
    assert response.peer.node_id == target.node_id
    assert response.peer.address == target.node_info().overlay_address
    caps = response.peer.record_content.capabilities
    assert caps.max_limits.max_memory_bytes == memory[target.node_id]
    assert response.rpcs >= 1
    proc = run_cli("--addr", asker.addr, "peer", target.node_id, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["peer"]["nodeId"] == target.node_id
    # A well-formed id nobody has: NOT_FOUND with a reason, after a real lookup.
    code, reason, _ = rpc_error(
        lambda: asker.stub.FindPeer(service_pb2.FindPeerRequest(node_id="ab" * 32), timeout=20)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert reason == "ERROR_REASON_PEER_NOT_FOUND"
    code, reason, _ = rpc_error(
        lambda: asker.stub.FindPeer(service_pb2.FindPeerRequest(node_id="xyz"), timeout=20)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_dht_calls_without_an_overlay_are_refused_with_a_reason(plasmd: DaemonFactory) -> None:
    d = plasmd(extra_args=["--overlay-listen", ""])
    for call in (
        lambda: d.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10),
        lambda: d.stub.FindWorkers(service_pb2.FindWorkersRequest(), timeout=10),
        lambda: d.stub.FindPeer(service_pb2.FindPeerRequest(node_id="ab" * 32), timeout=10),
    ):
        code, reason, details = rpc_error(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert reason == "ERROR_REASON_DHT_UNAVAILABLE"
        assert "overlay" in details
    proc = run_cli("--addr", d.addr, "workers")
    assert proc.returncode == 1
    assert "DHT_UNAVAILABLE" in proc.stderr
    code, reason, _ = rpc_error(
        lambda: d.stub.FindWorkers(
            service_pb2.FindWorkersRequest(min_memory_bytes=2**50), timeout=10
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # no DHT is checked first
