"""Relays and hole punching between real plasmd processes behind real NATs.

The topology (tests/netns.py): a public namespace with a bootstrap node and a
relay node, and two private namespaces each behind its own NAT namespace
(nftables masquerade). A job submitted on the node behind NAT A runs on the
node behind NAT B:

* with two port-preserving ("cone") NATs the nodes hole punch and the job
  runs over a direct QUIC connection;
* when NAT B is symmetric (a new external port per destination) the punch
  fails and the job runs through the relay.

A packet sniffer in the public namespace sees every datagram that crosses it
(both legs through the relay) and never the job's plaintext. A relay with a
small byte limit closes the circuit and the job fails with that reason.

Needs root, iproute2 and nftables (scripts/install-deps.sh); CI runs as root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    Daemon,
    DaemonFactory,
    WasmModules,
    make_request,
    verify_result,
    wait_until,
)
from netns import Topology, missing_tools, namespaces, nat_topology, popen_in
from plasm.v1 import reachability_pb2, service_pb2
from test_daemon_lifecycle import run_cli
from test_nat_topology import ns_daemon

pytestmark = pytest.mark.slow

if os.geteuid() != 0 or missing_tools():
    pytest.fail(
        "the NAT tests need root, iproute2 and nftables (scripts/install-deps.sh)",
        pytrace=False,
    )

SEED_PORT = 9700
RELAY_PORT = 9710
WAIT_S = 60.0

# Captures every frame on every interface of its namespace until stdin closes;
# prints "frames N matches M" (M: frames containing the marker, argv[1]).
SNIFF = """
import select, socket, sys
marker = bytes.fromhex(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))  # ETH_P_ALL
print("ready", flush=True)
frames = matches = 0
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [], 30)
    if not ready or sys.stdin in ready:
        break
    data = s.recv(65535)
    frames += 1
    matches += marker in data
print(f"frames {frames} matches {matches}", flush=True)
"""


# A requester: it takes no jobs and never runs one itself, so a job it is
# given runs on a peer or fails.
REQUESTER_CONFIG = "[remote]\nfallback_local = false\naccept_jobs = false\n"


def start_public_nodes(
    factory: DaemonFactory, topo: Topology, relay_config: str = ""
) -> tuple[Daemon, Daemon, str]:
    """(bootstrap node, relay node, the config of a node joining through them).

    The public nodes take no jobs, so a job can only run on a private node;
    the bootstrap node does not relay, so the relay node does (logging its
    circuits at debug level).
    """
    seed = ns_daemon(
        factory,
        topo.public,
        f"{topo.public_ip}:{SEED_PORT}",
        "[remote]\naccept_jobs = false\n[relay]\nserve = false\n",
    )
    joined = (
        f'[overlay]\nbootstrap = ["{seed.node_id}@{topo.public_ip}:{SEED_PORT}"]\n'
        "reconnect_interval_s = 0.5\n"
    )
    relay = ns_daemon(
        factory,
        topo.public,
        f"{topo.public_ip}:{RELAY_PORT}",
        joined
        + '[log]\nlevel = "debug"\n[remote]\naccept_jobs = false\n'
        + f"[relay]\n{relay_config}",
    )
    return seed, relay, joined


def wait_for_relays(worker: Daemon) -> dict[str, Any]:
    """`worker` finds itself private and advertises a reservation: the event."""
    advertised = worker.wait_for_event(
        "relays_advertised", timeout=WAIT_S, predicate=lambda e: bool(e["relays"])
    )
    assert advertised is not None, worker.lines()
    return advertised


@dataclass
class Network:
    topo: Topology
    seed: Daemon
    relay: Daemon
    a: Daemon  # behind NAT 1: submits
    b: Daemon  # behind NAT 2: the only node that takes jobs


@contextlib.contextmanager
def relay_network(
    tmp_path: Path, *, symmetric: Collection[int] = (), relay_config: str = ""
) -> Iterator[Network]:
    before = namespaces()
    with nat_topology(2, symmetric=symmetric) as topo:
        factory = DaemonFactory(tmp_path)
        try:
            nat_a, nat_b = topo.nats
            seed, relay, joined = start_public_nodes(factory, topo, relay_config)
            a = ns_daemon(
                factory, nat_a.private, f"{nat_a.private_ip}:9701", joined + REQUESTER_CONFIG
            )
            # B starts once A is a DHT client: B never learns A's address, so
            # the two cannot meet by dialling each other at once (which opens
            # cone NATs too) and any direct path comes from the hole punch.
            wait_until(
                lambda: a.node_info().reachability == reachability_pb2.REACHABILITY_PRIVATE,
                timeout=WAIT_S,
                interval=0.2,
                what="the node behind NAT A finding itself private",
            )
            b = ns_daemon(factory, nat_b.private, f"{nat_b.private_ip}:9702", joined)
            network = Network(topo=topo, seed=seed, relay=relay, a=a, b=b)
            check_relays(network)
            yield network
        finally:
            for n, daemon in enumerate(factory.daemons):  # for a failure's post-mortem
                (tmp_path / f"node{n}.log").write_text("\n".join(daemon.lines(all_runs=True)))
            factory.close()
    assert namespaces() == before, "the topology left namespaces behind"


def check_relays(network: Network) -> None:
    """B advertises a reservation at the relay, and GetNodeInfo says so."""
    advertised = wait_for_relays(network.b)
    assert advertised["relays"] == [
        f"{network.relay.node_id[:16]}@{network.topo.public_ip}:{RELAY_PORT}"
    ]
    relay = f"{network.relay.node_id}@{network.topo.public_ip}:{RELAY_PORT}"
    assert list(network.b.node_info().relays) == [relay]


def run_job_on_b(network: Network, wasm: WasmModules, marker: str) -> service_pb2.SubmitResponse:
    """Submit args_env with `marker` as an argument on A until B runs it (B's
    new record, naming its relay, may take a moment to reach the DHT)."""
    request_args = ["args_env", marker]
    last: Exception | None = None
    for _ in range(10):
        try:
            response = network.a.stub.Submit(
                _request(wasm.bytes("args_env"), request_args), timeout=WAIT_S
            )
        except grpc.RpcError as err:
            last = err
            time.sleep(1.0)
            continue
        assert response.executor_node_id == network.b.node_id
        result = response.result
        assert f"argv[1]={marker}".encode() in result.stdout
        verify_result(
            result, module=wasm.bytes("args_env"), args=request_args, node_id=network.b.node_id
        )
        return response
    raise AssertionError(f"the job never ran on B: {last}")


def _request(module: bytes, args: list[str]) -> service_pb2.SubmitRequest:
    return make_request(module, args=args)


@contextlib.contextmanager
def sniffer(ns: str, marker: bytes) -> Iterator[list[str]]:
    """Yields a list that holds "frames N matches M" once the block ends."""
    proc = popen_in(
        ns,
        [sys.executable, "-c", SNIFF, marker.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    result: list[str] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield result
        out, _ = proc.communicate(timeout=30)  # closes stdin: the sniffer reports
        result.append(out.decode().strip())
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def counts(report: list[str]) -> tuple[int, int]:
    _, frames, _, matches = report[0].split()
    return int(frames), int(matches)


def peer_address(d: Daemon, node_id: str) -> str:
    """The address of `d`'s connection to `node_id` (GetNodeInfo lists connections)."""
    return {p.node_id: p.address for p in d.node_info().peers}.get(node_id, "")


def test_a_job_runs_between_two_natted_nodes_directly_after_hole_punching(
    tmp_path: Path, wasm: WasmModules
) -> None:
    with relay_network(tmp_path) as network:
        marker = "PLAIN-" + os.urandom(6).hex()
        with sniffer(network.topo.public, marker.encode()) as report:
            run_job_on_b(network, wasm, marker)
        punch = network.a.wait_for_event("hole_punch", timeout=WAIT_S)
        assert punch is not None, network.a.lines()
        assert punch["direct"] is True, punch
        nat_b = network.topo.nats[1]
        assert punch["address"].split(":")[0] == nat_b.public_ip
        # The job went over the direct connection: A names B at NAT B's address.
        assert peer_address(network.a, network.b.node_id).split(":")[0] == nat_b.public_ip
        frames, matches = counts(report)
        assert frames > 0
        assert matches == 0  # nothing on the wire carries the plaintext
        info = run_cli("--addr", network.b.addresses[0], "info")
        assert info.returncode == 0, info.stderr
        assert f"{network.relay.node_id[:16]}@{network.topo.public_ip}:{RELAY_PORT}" in info.stdout


def test_a_job_runs_through_the_relay_when_a_nat_is_symmetric_and_the_relay_sees_no_plaintext(
    tmp_path: Path, wasm: WasmModules
) -> None:
    with relay_network(tmp_path, symmetric={2}) as network:
        marker = "PLAIN-" + os.urandom(6).hex()
        with sniffer(network.topo.public, marker.encode()) as report:
            run_job_on_b(network, wasm, marker)
        punch = network.a.wait_for_event("hole_punch", timeout=WAIT_S)
        assert punch is not None, network.a.lines()
        assert punch["direct"] is False, punch
        # A reaches B through the relay: the connection's address names it.
        assert peer_address(network.a, network.b.node_id).startswith(
            f"relay/{network.relay.node_id}"
        )
        opened = network.relay.events("relay_circuit_opened")
        assert any(
            e["requester"] == network.a.node_id and e["target"] == network.b.node_id for e in opened
        ), opened
        frames, matches = counts(report)
        assert frames > 0
        assert matches == 0  # the relay forwarded only ciphertext
        # The sniffer does see plaintext when there is some (a control).
        with sniffer(network.topo.public, marker.encode()) as control:
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    network.topo.nats[0].private,
                    sys.executable,
                    "-c",
                    "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    ".sendto(sys.argv[1].encode(), (sys.argv[2], 9))",
                    marker,
                    network.topo.public_ip,
                ],
                check=True,
                timeout=20,
            )
            time.sleep(0.5)
        assert counts(control)[1] >= 1


def test_the_relay_byte_limit_holds_for_a_job_through_it(tmp_path: Path, wasm: WasmModules) -> None:
    # 64 KiB per term: less than the module and its input.
    with relay_network(tmp_path, symmetric={2}, relay_config="max_bytes = 65536\n") as network:
        request = _request(wasm.bytes("args_env"), ["args_env", "x" * 60_000])
        with pytest.raises(grpc.RpcError) as info:
            network.a.stub.Submit(request, timeout=WAIT_S)
        assert info.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), info.value
        closed = network.relay.wait_for_event(
            "relay_circuit_closed",
            timeout=WAIT_S,
            predicate=lambda e: e["reason"] == "byte limit reached",
        )
        assert closed is not None, network.relay.lines()
        assert closed["target"] == network.b.node_id
