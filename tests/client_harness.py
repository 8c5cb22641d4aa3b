"""What the PHP and TypeScript client tests share: the tools they need (a
missing one fails the test, it never skips it), running a client program
with only the PLASM_* variables a test gives it, a node's Unix socket, and a
two-node network whose requester sends every job to its peer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import Daemon, DaemonFactory, wait_until
from plasm.v1 import service_pb2


def require_tool(name: str, install_hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed; run scripts/install-deps.sh ({install_hint})", pytrace=False
        )
    return found


def client_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PLASM_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLASM_")}
    env.update(extra)
    return env


def run_client(
    args: Sequence[str], env: dict[str, str], *, cwd: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def unix_target(daemon: Daemon) -> str:
    targets = [a for a in daemon.addresses if a.startswith("unix:")]
    assert targets, f"plasmd did not report a Unix socket: {daemon.addresses}"
    return targets[0]


def requester_and_worker(plasmd_module: DaemonFactory) -> tuple[Daemon, Daemon]:
    """A, which never runs jobs itself, and B, a worker A has found in the DHT."""
    overlay = "[overlay]\nmax_connections_per_ip = 256\nreconnect_interval_s = 0.5\n"
    a = plasmd_module(overlay + "[remote]\nfallback_local = false\n")
    bootstrap = f'bootstrap = ["{a.node_id}@{a.node_info().overlay_address}"]\n'
    b = plasmd_module(overlay + bootstrap)

    def b_is_a_worker() -> bool:
        found = a.stub.FindWorkers(service_pb2.FindWorkersRequest(), timeout=20).workers
        return b.node_id in {w.node_id for w in found}

    wait_until(b_is_a_worker, timeout=60, interval=0.2, what="A finding B in the DHT")
    return a, b


def assert_example_ran_on_the_peer(
    proc: subprocess.CompletedProcess[str], a: Daemon, b: Daemon
) -> None:
    """What remote_test (PHP or TypeScript) prints for a job A placed on B."""
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"executor   {b.node_id} (a peer of the node we asked)" in out
    assert f"requester  {a.node_id}" in out
    assert re.search(r"^  expected_executor +ok ", out, re.M), out
    assert "receipt    VALID" in out
    assert "tampered   REJECTED" in out
