"""`plasm devnet`: N real plasmd on loopback from one command, stopped cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from conftest import wait_until
from plasm.v1 import service_pb2, service_pb2_grpc
from test_daemon_lifecycle import run_cli


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_devnet_starts_a_network_that_discovers_itself_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    root = tmp_path / "net"
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasm_grpc.cli.main", "devnet", "--nodes", "4", "--dir", str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    manifest = root / "devnet.json"
    try:
        wait_until(manifest.exists, timeout=90, interval=0.1, what="devnet.json")
        nodes = json.loads(manifest.read_text())["nodes"]
        assert [n["index"] for n in nodes] == [0, 1, 2, 3]
        ids = {n["node_id"] for n in nodes}
        for n in nodes:
            with grpc.insecure_channel(n["grpc"]) as channel:
                stub = service_pb2_grpc.PlasmServiceStub(channel)

                def knows_all(
                    stub: service_pb2_grpc.PlasmServiceStub = stub, own: str = n["node_id"]
                ) -> bool:
                    peers = stub.ListPeers(service_pb2.ListPeersRequest(), timeout=10).peers
                    return {p.node_id for p in peers} | {own} == ids

                wait_until(knows_all, timeout=60, interval=0.3, what=f"node {n['index']} peers")
        listed = run_cli("--addr", nodes[2]["grpc"], "peers", "--json")
        assert listed.returncode == 0, listed.stderr
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "stopped 4 nodes" in err.decode()
    assert all(n["node_id"][:16] in out.decode() for n in nodes)
    deadline = time.monotonic() + 10
    while any(_alive(n["pid"]) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(n["pid"]) for n in nodes)
    assert not manifest.exists()
    for n in nodes:  # kept with --dir: logs of a clean stop
        events = [json.loads(line)["event"] for line in Path(n["log"]).read_text().splitlines()]
        assert events[-1] == "stopped"


def test_devnet_refuses_a_bad_node_count() -> None:
    proc = run_cli("devnet", "--nodes", "0")
    assert proc.returncode == 2
    assert "--nodes must be between 1 and 200" in proc.stderr
