"""plasmd under Type=notify: READY, STOPPING and WATCHDOG on a real NOTIFY_SOCKET.

A Unix datagram socket stands in for systemd's; the daemon is a real process.
(tests/test_debian_package.py runs the unit under real systemd.)
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from conftest import DaemonFactory

from plasm_grpc.daemon.notify import Notifier


def _messages(sock: socket.socket, until: str, limit: int = 50) -> list[dict[str, str]]:
    """Datagrams as KEY=VALUE maps, up to and including the first carrying `until`."""
    seen = []
    for _ in range(limit):
        data = sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        seen.append(fields)
        if until in fields:
            return seen
    raise AssertionError(f"no {until} in {seen}")


def test_ready_once_serving_watchdog_while_running_stopping_on_sigterm(
    plasmd: DaemonFactory, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        # WATCHDOG_PID unset: the watchdog applies to whichever process reads it.
        node = plasmd(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        ready = _messages(sock, "READY")[-1]
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(node.proc.pid if node.proc else 0)
        assert node.addr in ready["STATUS"]
        # Ready means serving: the node answers at once.
        assert node.node_info().node_id == node.node_id
        assert _messages(sock, "WATCHDOG")[-1]["WATCHDOG"] == "1"
        assert _messages(sock, "WATCHDOG")[-1]["WATCHDOG"] == "1"  # and again
        node.send_signal(signal.SIGTERM)
        stopping = _messages(sock, "STOPPING")[-1]
        assert stopping["STOPPING"] == "1"
        assert node.wait(timeout=60) == 0


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False


def test_abstract_socket_and_watchdog_rules(tmp_path: Path) -> None:
    name = f"plasm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert notifier.watchdog_interval == 1.5
        assert notifier.status("working")
        assert sock.recv(100) == b"STATUS=working"
    # A watchdog meant for another process, or garbage, is off.
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    # A socket nobody listens on: the send fails quietly.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert gone.enabled
    assert gone.ready("x") is False
