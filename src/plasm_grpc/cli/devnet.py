"""`plasm devnet`: a local network of plasmd processes on loopback.

Node 0 is the seed; every other node bootstraps from it through the DHT.
Each node gets its own data directory under `root` (`node0`, `node1`, ...)
with its config and its log (`plasmd.log`, JSON lines), gRPC and the overlay
on ports the kernel picks, and `devnet.json` in `root` lists every node's
id and addresses for scripts. Stopping sends SIGTERM to every node (they
drain and save their state) and SIGKILL to any still running after the grace
period.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

READY_TIMEOUT_S: Final = 60.0
STOP_GRACE_S: Final = 30.0
# Every node shares 127.0.0.1: the overlay's per-IP inbound limit (16) would
# refuse the DHT's connections in a network larger than that.
_OVERLAY: Final = "max_connections_per_ip = 4096\n"


class DevnetError(RuntimeError):
    pass


@dataclass(slots=True)
class DevNode:
    index: int
    directory: Path
    process: subprocess.Popen[bytes]
    node_id: str = ""
    grpc: str = ""
    overlay: str = ""

    @property
    def log(self) -> Path:
        return self.directory / "plasmd.log"


@dataclass(slots=True)
class DevNet:
    root: Path
    nodes: list[DevNode] = field(default_factory=list)

    def start(self, count: int, *, log_level: str = "info") -> None:
        """Start `count` nodes (the seed first) and wait until each is ready."""
        if count < 1:
            raise DevnetError("a devnet needs at least one node")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            seed = self._spawn(0, self._config(log_level, bootstrap=None))
            self._wait_ready(seed)
            bootstrap = f"{seed.node_id}@{seed.overlay}"
            rest = [self._spawn(i, self._config(log_level, bootstrap)) for i in range(1, count)]
            for node in rest:
                self._wait_ready(node)
        except BaseException:
            self.stop()
            raise
        self._write_manifest()

    def add(self, *, log_level: str = "info", accept_jobs: bool = True) -> DevNode:
        """Start one more node, bootstrapping from the seed, and wait until it is ready.

        `accept_jobs=False`: a node that only submits (it takes no jobs from peers).
        """
        if not self.nodes:
            raise DevnetError("start the devnet first")
        seed = self.nodes[0]
        config = self._config(log_level, f"{seed.node_id}@{seed.overlay}")
        if not accept_jobs:
            config += "[remote]\naccept_jobs = false\n"
        node = self._spawn(len(self.nodes), config)
        self._wait_ready(node)
        self._write_manifest()
        return node

    def _config(self, log_level: str, bootstrap: str | None) -> str:
        text = f'[log]\nlevel = "{log_level}"\n[overlay]\n{_OVERLAY}'
        if bootstrap is not None:
            text += f'bootstrap = ["{bootstrap}"]\nreconnect_interval_s = 1.0\n'
        return text

    def _spawn(self, index: int, config: str) -> DevNode:
        directory = self.root / f"node{index}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "plasmd.toml").write_text(config, encoding="utf-8")
        with (directory / "plasmd.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "plasm_grpc.daemon.main",
                    "--config",
                    str(directory / "plasmd.toml"),
                    "--data-dir",
                    str(directory / "data"),
                    "--listen",
                    "127.0.0.1:0",
                    "--overlay-listen",
                    "127.0.0.1:0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us; we stop the nodes in order
            )
        node = DevNode(index=index, directory=directory, process=process)
        self.nodes.append(node)
        return node

    def _wait_ready(self, node: DevNode) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        offset = 0
        while time.monotonic() < deadline:
            with node.log.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
            lines = chunk.split(b"\n")
            offset += len(chunk) - len(lines[-1])
            for line in lines[:-1]:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "ready":
                        node.node_id = str(event["node_id"])
                        node.grpc = str(event["grpc"][0])
                        node.overlay = str(event["overlay"])
                        return
            if node.process.poll() is not None:
                raise DevnetError(
                    f"node {node.index} exited with {node.process.returncode}; see {node.log}"
                )
            time.sleep(0.05)
        raise DevnetError(f"node {node.index} not ready in {READY_TIMEOUT_S:.0f} s; see {node.log}")

    def _write_manifest(self) -> None:
        manifest = {
            "nodes": [
                {
                    "index": n.index,
                    "node_id": n.node_id,
                    "grpc": n.grpc,
                    "overlay": n.overlay,
                    "data_dir": str(n.directory / "data"),
                    "log": str(n.log),
                    "pid": n.process.pid,
                }
                for n in self.nodes
            ]
        }
        path = self.root / "devnet.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def running(self) -> list[DevNode]:
        return [n for n in self.nodes if n.process.poll() is None]

    def stop(self, grace: float = STOP_GRACE_S) -> list[int]:
        """SIGTERM every node, SIGKILL what is left after `grace`; exit codes."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + grace
        for node in self.nodes:
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "devnet.json").unlink()
        return [node.process.returncode for node in self.nodes]


# -- the command ----------------------------------------------------------------------


def cmd_devnet(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    import threading

    from plasm_grpc.cli.output import EXIT_RPC, EXIT_USAGE, die, say, show_grid

    if not 1 <= args.nodes <= 200:
        die("--nodes must be between 1 and 200", EXIT_USAGE)
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="plasm-devnet-"))
    net = DevNet(root)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        say(f"starting {args.nodes} plasmd on loopback under {root} …")
        try:
            net.start(args.nodes)
        except DevnetError as err:
            die(str(err))
        show_grid(
            f"devnet: {args.nodes} nodes (node 0 is the seed)",
            ("node", "node id", "gRPC", "overlay (udp)"),
            [(str(n.index), n.node_id[:16] + "…", n.grpc, n.overlay) for n in net.nodes],
        )
        say(
            f"addresses in {root / 'devnet.json'}, logs in {root}/node*/plasmd.log\n"
            f"try: plasm --addr {net.nodes[0].grpc} peers\n"
            "Ctrl-C stops every node."
        )
        if args.once:
            stop.set()
        while not stop.wait(0.5):
            dead = [n for n in net.nodes if n.process.poll() is not None]
            if dead:
                say(
                    f"node {dead[0].index} exited with {dead[0].process.returncode} "
                    f"(see {dead[0].log}); stopping the devnet"
                )
                net.stop()
                return EXIT_RPC
        say("stopping …")
        codes = net.stop()
        bad = [i for i, code in enumerate(codes) if code != 0]
        if bad:
            say(f"nodes {bad} did not stop cleanly")
            return EXIT_RPC
        say(f"stopped {len(codes)} nodes")
        return 0
    finally:
        net.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
