"""The NAT test topology (tests/netns.py) behaves like home routers, and real
plasmd processes run in it: a bootstrap node on the public network, a node
behind NAT A that joins through it.

Needs root, iproute2 and nftables (scripts/install-deps.sh); CI runs as root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, DaemonFactory, WasmModules, wait_until
from netns import Topology, missing_tools, namespaces, nat_topology, ns_argv, popen_in, run_in
from plasm.v1 import reachability_pb2, service_pb2
from test_daemon_lifecycle import run_cli

pytestmark = pytest.mark.slow

if os.geteuid() != 0 or missing_tools():
    pytest.fail(
        "the NAT tests need root, iproute2 and nftables (scripts/install-deps.sh)",
        pytrace=False,
    )

ECHO_PORT = 7777
# Answers every datagram with "host:port" of the sender as it saw it.
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
"""
# Sends one datagram and prints the answer, or "timeout" (bounded).
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
try:
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
except OSError as err:  # ENETUNREACH: no route at all
    print("unreachable")
    sys.exit(0)
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""
# From ONE socket, asks the echo servers on each of the ports in argv[2:] in turn
# and prints what each saw ("host:port"), one a line, or "timeout" (bounded).
SEND_FROM_ONE_SOCKET = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
for port in sys.argv[2:]:
    s.sendto(b"hello", (sys.argv[1], int(port)))
    try:
        print(s.recvfrom(2048)[0].decode())
    except TimeoutError:
        print("timeout")
"""
# UDP hole punching from one socket: learns its public "ip:port" from the echo
# server at argv[1]:argv[2] and prints it, reads the peer's public "ip:port"
# from stdin, then sends argv[4] to the peer up to argv[3] times 100 ms apart
# (and a last 100 ms after the last send) and prints "got <the peer's payload>"
# or "timeout".
PUNCH = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
s.sendto(b"whoami", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(2048)[0].decode(), flush=True)
except TimeoutError:
    print("timeout", flush=True)
    sys.exit(0)
host, port = sys.stdin.readline().strip().rsplit(":", 1)
peer = (host, int(port))
s.settimeout(0.1)
got = None
for _ in range(int(sys.argv[3])):
    s.sendto(sys.argv[4].encode(), peer)
    try:
        while got is None:
            data, addr = s.recvfrom(2048)
            if addr == peer:
                got = data.decode()
    except TimeoutError:
        pass
print("timeout" if got is None else f"got {got}", flush=True)
"""


@contextlib.contextmanager
def checked_topology(nats: int = 2, symmetric: Collection[int] = ()) -> Iterator[Topology]:
    before = namespaces()
    with nat_topology(nats, symmetric=symmetric) as topology:
        yield topology
    assert namespaces() == before, "the topology left namespaces behind"


@pytest.fixture
def topo() -> Iterator[Topology]:
    with checked_topology(2) as topology:
        yield topology


@contextlib.contextmanager
def echo_server(ns: str, port: int = ECHO_PORT) -> Iterator[None]:
    proc = popen_in(
        ns,
        [sys.executable, "-c", ECHO, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def send(ns: str, host: str, port: int = ECHO_PORT, timeout: float = 2.0) -> str:
    return run_in(ns, [sys.executable, "-c", SEND, host, str(port), str(timeout)]).strip()


def test_private_host_reaches_the_public_network_through_its_nat(topo: Topology) -> None:
    a, b = topo.nats
    with echo_server(topo.public):
        seen_a = send(a.private, topo.public_ip)
        seen_b = send(b.private, topo.public_ip)
    # The public side sees each NAT's public address, never a private one.
    assert seen_a.split(":")[0] == a.public_ip
    assert seen_b.split(":")[0] == b.public_ip
    assert a.public_ip != b.public_ip


def test_public_host_cannot_reach_a_private_host(topo: Topology) -> None:
    a, b = topo.nats
    with echo_server(a.private):
        # No route to the private LAN from the public network ...
        assert send(topo.public, a.private_ip, timeout=1.0) == "unreachable"
        # ... nor through the router's public address (nothing is forwarded) ...
        assert send(topo.public, a.public_ip, timeout=1.0) == "timeout"
        # ... nor from another NAT's private host (its router has no route either).
        assert send(b.private, a.private_ip, timeout=1.0) in ("timeout", "unreachable")
        # The private host itself is fine: it answers on its own LAN.
        assert send(a.router, a.private_ip).split(":")[0] == "10.78.1.1"


def seen_from_one_socket(ns: str, host: str, ports: list[int]) -> list[str]:
    argv = [sys.executable, "-c", SEND_FROM_ONE_SOCKET, host, *map(str, ports)]
    return run_in(ns, argv).split()


def test_symmetric_nat_maps_each_destination_to_its_own_port() -> None:
    with checked_topology(2, symmetric={1}) as topology:
        sym, cone = topology.nats
        assert sym.symmetric
        assert not cone.symmetric
        ports = [ECHO_PORT, ECHO_PORT + 1]
        with echo_server(topology.public, ports[0]), echo_server(topology.public, ports[1]):
            seen_sym = seen_from_one_socket(sym.private, topology.public_ip, ports)
            seen_cone = seen_from_one_socket(cone.private, topology.public_ip, ports)
    # Both NATs answered twice, from their own public address.
    assert [seen.split(":")[0] for seen in seen_sym] == [sym.public_ip] * 2
    assert [seen.split(":")[0] for seen in seen_cone] == [cone.public_ip] * 2
    # Symmetric: one external port per destination.
    assert seen_sym[0] != seen_sym[1]
    # Cone: the same public ip:port whoever asks.
    assert seen_cone[0] == seen_cone[1]


def hole_punch(topology: Topology, tries: int = 10) -> tuple[list[str], list[str]]:
    """Private hosts 1 and 2 punch towards each other: (public addresses they
    learned, what each received: "got <the other's private ns>" or "timeout")."""
    procs: list[subprocess.Popen[bytes]] = []
    with echo_server(topology.public):
        try:
            for nat in topology.nats:
                argv = [sys.executable, "-c", PUNCH, topology.public_ip, str(ECHO_PORT)]
                procs.append(
                    popen_in(
                        nat.private,
                        [*argv, str(tries), nat.private],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                    )
                )
            learned = []
            for proc in procs:
                assert proc.stdout is not None
                learned.append(proc.stdout.readline().decode().strip())
            assert "timeout" not in learned, learned
            # Each gets the other's address; both then punch at about the same time.
            for proc, peer in zip(procs, reversed(learned), strict=True):
                assert proc.stdin is not None
                proc.stdin.write(f"{peer}\n".encode())
                proc.stdin.flush()
            outcomes = []
            for proc in procs:
                out, _ = proc.communicate(timeout=30)
                outcomes.append(out.decode().strip())
            return learned, outcomes
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        pipe.close()


def test_udp_hole_punch_between_two_cone_nats_succeeds() -> None:
    with checked_topology(2) as topology:
        a, b = topology.nats
        learned, outcomes = hole_punch(topology)
    assert [addr.split(":")[0] for addr in learned] == [a.public_ip, b.public_ip]
    assert outcomes == [f"got {b.private}", f"got {a.private}"]


def test_udp_hole_punch_fails_when_one_nat_is_symmetric() -> None:
    with checked_topology(2, symmetric={2}) as topology:
        a, b = topology.nats
        learned, outcomes = hole_punch(topology)
    assert [addr.split(":")[0] for addr in learned] == [a.public_ip, b.public_ip]
    assert all(
        outcome in ("timeout", f"got {b.private}", f"got {a.private}") for outcome in outcomes
    )
    # B's NAT sends A's punches from a port nobody learned, and drops A's
    # punches to the port the echo server saw: the punch never works both ways.
    assert outcomes != [f"got {b.private}", f"got {a.private}"], outcomes


# -- plasmd in namespaces --------------------------------------------------------------------


class NsDaemon(Daemon):
    """plasmd run under ``ip netns exec NS`` (gRPC on a Unix socket in the test's tmp dir)."""

    def __init__(self, ns: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.ns = ns

    def command(self) -> list[str]:
        return ns_argv(self.ns, super().command())


def ns_daemon(
    factory: DaemonFactory, ns: str, overlay_listen: str, config: str = "", *, start: bool = True
) -> Daemon:
    """A plasmd in namespace `ns`, overlay on `overlay_listen`, gRPC on a Unix socket only."""
    root = factory.base / f"node{len(factory.daemons)}"
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "plasmd.toml"
    config_path.write_text(config, encoding="utf-8")
    daemon = NsDaemon(
        ns,
        data_dir=root / "data",
        config_path=config_path,
        unix_socket=root / "plasmd.sock",
        listen="",
    )
    daemon.overlay_listen = overlay_listen
    factory.daemons.append(daemon)
    if start:
        daemon.start()
    return daemon


def peers(d: Daemon) -> dict[str, str]:
    listed = d.stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10).peers
    return {p.node_id: p.address for p in listed}


def test_a_node_behind_nat_joins_through_a_public_bootstrap_node(
    topo: Topology, tmp_path: Path, wasm: WasmModules
) -> None:
    a = topo.nats[0]
    factory = DaemonFactory(tmp_path)
    try:
        seed = ns_daemon(factory, topo.public, f"{topo.public_ip}:9700")
        assert seed.node_info().overlay_address == f"{topo.public_ip}:9700"
        natted = ns_daemon(
            factory,
            a.private,
            f"{a.private_ip}:9701",
            f'[overlay]\nbootstrap = ["{seed.node_id}@{topo.public_ip}:9700"]\n'
            "reconnect_interval_s = 0.5\n",
        )
        wait_until(
            lambda: seed.node_id in peers(natted),
            timeout=30,
            interval=0.2,
            what="the NATed node knowing the bootstrap node",
        )
        # The public node sees it at the NAT's public address (outbound QUIC works).
        wait_until(
            lambda: natted.node_id in peers(seed),
            timeout=30,
            interval=0.2,
            what="the bootstrap node adding the NATed node",
        )
        assert peers(seed)[natted.node_id].split(":")[0] == a.public_ip
    finally:
        factory.close()


def _reachability(d: Daemon) -> str:
    return str(reachability_pb2.Reachability.Name(d.node_info().reachability))


def test_dial_back_finds_the_public_node_public_and_the_natted_node_private(
    topo: Topology, tmp_path: Path, wasm: WasmModules
) -> None:
    a = topo.nats[0]
    factory = DaemonFactory(tmp_path)
    try:
        seed = ns_daemon(factory, topo.public, f"{topo.public_ip}:9700")
        assert _reachability(seed) == "REACHABILITY_UNSPECIFIED"  # nobody to ask yet
        natted = ns_daemon(
            factory,
            a.private,
            f"{a.private_ip}:9701",
            f'[overlay]\nbootstrap = ["{seed.node_id}@{topo.public_ip}:9700"]\n'
            "reconnect_interval_s = 0.5\n",
        )
        # The NATed node asks the public one: its dial-back to the NAT's
        # address, from a fresh socket, does not get through.
        changed = natted.wait_for_event("reachability_changed", timeout=60)
        assert changed is not None, natted.lines()
        assert changed["new"] == "private"
        assert _reachability(natted) == "REACHABILITY_PRIVATE"
        # The public node asks the NATed one, which dials it back fine.
        changed = seed.wait_for_event("reachability_changed", timeout=60)
        assert changed is not None, seed.lines()
        assert changed["new"] == "public"
        assert _reachability(seed) == "REACHABILITY_PUBLIC"
        # The helper dialled the NAT's public address, the IP the request came from.
        dialled = seed.events("reachability_dialled_back")
        assert all(e["address"].split(":")[0] == a.public_ip for e in dialled)
        proc = run_cli("--addr", natted.addresses[0], "info")
        assert proc.returncode == 0, proc.stderr
        assert "private" in proc.stdout
    finally:
        factory.close()


def test_the_natted_node_becomes_a_dht_client(
    topo: Topology, tmp_path: Path, wasm: WasmModules
) -> None:
    """Unreachable nodes act as DHT clients: once the node behind NAT A finds
    itself private, the public node drops it from its routing table and a
    node joining later is never told about it, but it still looks things up."""
    a, b = topo.nats
    factory = DaemonFactory(tmp_path)
    try:
        seed = ns_daemon(factory, topo.public, f"{topo.public_ip}:9700")
        bootstrap = (
            f'[overlay]\nbootstrap = ["{seed.node_id}@{topo.public_ip}:9700"]\n'
            "reconnect_interval_s = 0.5\n"
        )
        natted = ns_daemon(factory, a.private, f"{a.private_ip}:9701", bootstrap)
        mode = natted.wait_for_event("dht_client_mode", timeout=60)
        assert mode is not None, natted.lines()
        assert mode["client"] is True
        assert "private" in mode["reason"]
        wait_until(
            lambda: natted.node_id not in peers(seed),
            timeout=30,
            interval=0.2,
            what="the public node dropping the DHT client",
        )
        later = ns_daemon(factory, b.private, f"{b.private_ip}:9702", bootstrap)
        wait_until(
            lambda: seed.node_id in peers(later),
            timeout=30,
            interval=0.2,
            what="the second NATed node knowing the bootstrap node",
        )
        assert natted.node_id not in peers(later)
        assert natted.node_id not in peers(seed)
        # The client still looks things up.
        found = natted.stub.FindPeer(service_pb2.FindPeerRequest(node_id=seed.node_id), timeout=30)
        assert found.peer.node_id == seed.node_id
        assert natted.node_id not in peers(seed)
    finally:
        factory.close()
