"""The CLI's layout as a user feels it: `plasm` starts without loading gRPC,
protobuf or rich, each command loads only what it needs, every command the
parser names exists, and tables fit 80 columns without cutting a node's
address."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import import_module

import pytest
from conftest import Daemon, DaemonFactory, WasmModules, join_network, submit
from test_daemon_lifecycle import run_cli

from plasm_grpc.cli.main import COMMANDS, command_in, parser

# What `import plasm_grpc.cli.main` (and `plasm --help`) must not load: the gRPC
# runtime, protobuf and the generated code, rich, the typed client and the
# command modules, which load when their command runs.
HEAVY = ("grpc", "google.protobuf", "plasm.", "rich", "jsonschema", "plasm_grpc.api")
NODE_PARTS = ("plasm_grpc.daemon", "plasm_grpc.remote", "plasm_grpc.net", "plasm_grpc.jobs")
NODE_PARTS += ("plasm_grpc.sandbox", "plasm_grpc.store", "plasm_grpc.console", "wasmtime")


def _loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"{code}\nimport json, sys\nprint()\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


def _matching(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p.rstrip(".") or m.startswith(p) for p in prefixes)]


def test_importing_the_cli_loads_no_grpc_protobuf_rich_or_command() -> None:
    loaded = _loaded_after("import plasm_grpc.cli.main")
    assert _matching(loaded, HEAVY + NODE_PARTS) == []
    commands = [m for m in loaded if m.startswith("plasm_grpc.cli.")]
    assert sorted(commands) == ["plasm_grpc.cli.main", "plasm_grpc.cli.output"]


@pytest.mark.parametrize("command", [[], ["submit"], ["status"], ["peers"], ["verify"]])
def test_help_loads_no_grpc_protobuf_or_rich(command: list[str]) -> None:
    loaded = _loaded_after(
        "from plasm_grpc.cli.main import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert _matching(loaded, HEAVY + NODE_PARTS) == []


def _commands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def test_every_command_names_a_function_that_exists() -> None:
    commands = _commands()
    assert set(commands) == {
        "submit",
        "watch",
        "cancel",
        "verify",
        "status",
        "info",
        "peers",
        "peer",
        "workers",
        "devnet",
        "receipts",
        "receipt",
    }
    for name, sub in commands.items():
        target = sub.get_default("func")
        module, _, function = str(target).partition(":")
        assert callable(getattr(import_module(f"plasm_grpc.cli.{module}"), function)), name


def test_a_local_submit_loads_the_client_but_nothing_to_draw_or_of_the_node(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    node = plasmd()
    args = ["--addr", node.addr, "submit", "--local", str(wasm.path("hello")), "--stdin", "hi"]
    loaded = _loaded_after(
        "import sys\n"
        "from plasm_grpc.cli.main import main\n"
        f"code = main({args!r})\n"
        "sys.stdout.flush()\n"
        "assert code == 0, code"
    )
    assert "plasm_grpc.api.client" in loaded
    assert "plasm_grpc.cli.submit" in loaded
    assert _matching(loaded, ("rich", "plasm_grpc.cli.nodes", "plasm_grpc.cli.status")) == []
    assert _matching(loaded, NODE_PARTS) == []


# -- 80 columns ----------------------------------------------------------------------------


@pytest.fixture
def network(plasmd: DaemonFactory, wasm: WasmModules) -> tuple[Daemon, list[Daemon]]:
    seed = plasmd()
    peers = join_network(plasmd, seed, 2)
    submit(seed.stub, wasm.bytes("hello"), stdin=b"eighty")
    return seed, peers


def test_tables_fit_80_columns_and_show_whole_addresses(
    network: tuple[Daemon, list[Daemon]],
) -> None:
    seed, peers = network
    overlay = {p.node_id: p.node_info().overlay_address for p in peers}
    shown: dict[str, str] = {}
    for args in (
        ("peers",),
        ("peers", "--connections"),
        ("workers",),
        ("peer", peers[0].node_id),
        ("receipts",),
        ("info",),
        ("status",),
    ):
        proc = run_cli("--addr", seed.addr, *args, columns=80)
        assert proc.returncode == 0, (args, proc.stderr)
        for line in (proc.stdout + proc.stderr).splitlines():
            assert len(line) <= 80, (args, line)
        shown[" ".join(args[:2] if args[0] != "peer" else args[:1])] = proc.stdout
    for node_id, address in overlay.items():
        for table in ("peers", "peers --connections", "workers"):
            assert address in shown[table], (table, address)
            assert node_id[:12] in shown[table], (table, node_id)
    assert overlay[peers[0].node_id] in shown["peer"]
    # The node's own id is never folded in info and status: one line holds it.
    for command in ("info", "status"):
        assert any(seed.node_id in line for line in shown[command].splitlines()), command
    receipts = shown["receipts"].splitlines()
    assert any(len(word) == 32 for line in receipts for word in line.split()), "whole job id"


def test_a_table_on_a_wide_terminal_keeps_what_a_peer_runs_on_one_line(
    network: tuple[Daemon, list[Daemon]],
) -> None:
    seed, peers = network
    proc = run_cli("--addr", seed.addr, "peers", columns=160)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "127.0.0.1:" in line]
    assert len(rows) == len(peers)
    assert all("(preview1)" in row for row in rows), rows


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "m.wasm", "--local", "--arg", "x", "--env", "A=b", "--json"],
        ["--addr", "127.0.0.1:9", "--timeout", "3", "watch", "0" * 32, "--json"],
        ["--addr=unix:/run/plasm/plasmd.sock", "verify", "r.json", "--input-arg", "a"],
        ["--timeout=2", "workers", "--memory", "512MiB", "--limit", "5"],
        ["status", "--metrics", "127.0.0.1:9090"],
        ["devnet", "--nodes", "2", "--once"],
        ["receipt", "abc", "--out", "r.json"],
    ],
)
def test_parsing_only_the_command_that_runs_reads_argv_as_the_full_parser(
    argv: list[str],
) -> None:
    assert command_in(argv) == next(a for a in argv if a in COMMANDS)
    assert parser(command_in(argv)).parse_args(argv) == parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["--version"], ["--ad", "x", "info"], ["nosuch"], ["-q", "submit"]]
)
def test_anything_but_a_plain_command_builds_every_command(argv: list[str]) -> None:
    assert command_in(argv) is None
