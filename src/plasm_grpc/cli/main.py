"""`plasm`: run WebAssembly jobs on a Plasm node and verify their signed receipts.

This module is only the argument parser and the dispatch. Each command lives
in its own module (submit, receipts, nodes, status, devnet), imported when
that command runs: `plasm --help` loads no gRPC, protobuf or rich, and
`plasm submit` loads the client and the verifier and nothing to draw unless
stderr is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import sys
from importlib import import_module
from typing import Any, NoReturn

from plasm_grpc import __version__
from plasm_grpc.cli.output import DEFAULT_ADDR, CliError, is_terminal

PLACEMENT_MODES = ("auto", "local", "peer")  # JobManifest placement modes, as cli.submit reads them


def _nonneg(value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {value!r}"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return n


def _job_id(value: str) -> str:
    from plasm_grpc.core.errors import InvalidIdError
    from plasm_grpc.core.ids import check_job_id  # hashlib: only when an id is given

    try:
        return check_job_id(value)
    except InvalidIdError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}


def _size(value: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 536870912, 512MiB or 1GiB, got {value!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


class _Skipped:
    """Stands in for the subparser of a command that is not running: its
    arguments are not built (argparse looks up translations for each one)."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        pass

    def set_defaults(self, **kwargs: object) -> None:
        pass


class _Commands:
    """`add_subparsers()`, building in full only the command that runs (all of
    them when `only` is None); the others get their name and one-line help,
    all that `plasm --help` and argparse's "invalid choice" need."""

    def __init__(self, sub: Any, only: str | None) -> None:
        self._sub = sub
        self._only = only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._only is None or name == self._only:
            return self._sub.add_parser(name, **kwargs)
        self._sub.add_parser(name, help=kwargs.get("help"), add_help=False)
        return _Skipped()


COMMANDS = frozenset(
    {
        *("submit", "watch", "cancel", "verify", "receipts", "receipt"),
        *("status", "info", "peers", "peer", "workers", "devnet"),
    }
)
_GLOBAL_WITH_VALUE = ("--addr", "--timeout")


def command_in(argv: list[str]) -> str | None:
    """The command `argv` runs, or None when it is not plain (help, a typo, an
    abbreviated option): then every command is built and argparse decides."""
    tokens = iter(argv)
    for token in tokens:
        if token in _GLOBAL_WITH_VALUE:
            next(tokens, None)
        elif token.startswith(tuple(f"{o}=" for o in _GLOBAL_WITH_VALUE)):
            continue
        elif token.startswith("-"):
            return None
        else:
            return token if token in COMMANDS else None
    return None


def parser(only: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plasm",
        description="Run WebAssembly jobs on a Plasm node and verify their signed receipts.",
        epilog="exit codes: 0 ok; 1 daemon error; 2 usage; 3 job did not succeed; "
        "4 receipt failed verification; for a job that exits non-zero, its exit code.",
    )
    p.add_argument(
        "--addr",
        default=os.environ.get("PLASM_ADDR", DEFAULT_ADDR),
        help="plasmd gRPC address: host:port or unix:/path "
        f"(default $PLASM_ADDR or {DEFAULT_ADDR})",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="RPC deadline in seconds")
    p.add_argument("--version", action="version", version=f"plasm {__version__}")
    sub = _Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), only)

    s = sub.add_parser(
        "submit",
        help="run a WASI module and verify its receipt",
        description="Submit a WASI module to the node, print its stdout, and "
        "verify the signed receipt against what was sent and received. Ctrl-C asks the "
        "node to cancel the job and waits up to 10 s for its cancelled receipt; a second "
        "Ctrl-C quits at once.",
    )
    s.add_argument("module", nargs="?", help="the .wasm file ('-' for standard input)")
    s.add_argument("--manifest", help="JSON JobManifest (validated against its JSON Schema)")
    s.add_argument("--stdin", help="text given to the guest on stdin")
    s.add_argument("--stdin-file", help="file given to the guest on stdin ('-' for ours)")
    s.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        help="argument for the guest (repeatable); argv[0] is the module name",
    )
    s.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the guest (repeatable); none are inherited",
    )
    s.add_argument("--memory", type=_nonneg, help="max linear memory in bytes")
    s.add_argument("--fuel", type=_nonneg, help="fuel budget (about one unit per instruction)")
    s.add_argument("--timeout-ms", type=_nonneg, help="wall-time budget in milliseconds")
    s.add_argument("--max-stdout", type=_nonneg, help="stdout cap in bytes")
    s.add_argument("--max-stderr", type=_nonneg, help="stderr cap in bytes")
    s.add_argument(
        "--placement",
        choices=PLACEMENT_MODES,
        help="where the job runs: auto (the node picks a capable peer; the default), "
        "local (this node) or peer (the node given with --peer)",
    )
    s.add_argument("--local", action="store_true", help="same as --placement local")
    s.add_argument("--peer", metavar="NODE_ID", help="run on this node id (implies peer)")
    s.add_argument(
        "--job-id",
        type=_job_id,
        help="the job's id (32 lowercase hex); default: a random one, chosen here so the "
        "job can be watched and cancelled while it runs",
    )
    s.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the job's events live on stderr: offers, declines, where it runs "
        "(default: when stderr is a terminal, without --quiet or --json)",
    )
    s.add_argument("--expect-node", help="fail verification unless this node id signed")
    s.add_argument("--receipt-out", help="write the receipt (SignedEnvelope JSON) here")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the job's output")
    s.add_argument("--json", action="store_true", help="one JSON object for scripts")
    s.set_defaults(func="submit:cmd_submit")

    wa = sub.add_parser(
        "watch",
        help="follow a job's events until it ends",
        description="Stream a job's events from the node it was submitted to: submitted, "
        "offered to a worker, declined (and why), accepted, running, finished or failed. "
        "Starts from the job's beginning and waits briefly for a job not submitted yet. "
        "Exits like `plasm submit`: 0 on success, the guest's code for a non-zero exit, "
        "3 when the job failed or ended otherwise.",
    )
    wa.add_argument("job_id", type=_job_id, help="32 lowercase hex")
    wa.add_argument("--json", action="store_true", help="one JSON object per event, per line")
    wa.set_defaults(func="submit:cmd_watch")

    ca = sub.add_parser(
        "cancel",
        help="cancel a job submitted to the node",
        description="Ask the node to cancel a job it is running or placing: the guest is "
        "stopped wherever it runs, and the job's Submit is answered with a receipt saying "
        "cancelled. Exits 0 whether it was cancelled or had already ended, 1 when the node "
        "does not know the job.",
    )
    ca.add_argument("job_id", type=_job_id, help="32 lowercase hex")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func="submit:cmd_cancel")

    v = sub.add_parser(
        "verify",
        help="verify a receipt offline (or via the daemon)",
        description="Check a receipt's Ed25519 signature under the receipt "
        "domain, that its signer is its executor, and optionally "
        "that output, module and input match its hashes. Offline "
        "unless --daemon or --job-id is given.",
    )
    v.add_argument("receipt", nargs="?", help="receipt file (JSON or binary SignedEnvelope)")
    v.add_argument("--job-id", help="fetch this job's receipt from the node, verify offline")
    v.add_argument("--stdout-file", help="check this file against the receipt's stdout hash")
    v.add_argument("--stderr-file", help="check this file against the receipt's stderr hash")
    v.add_argument("--module", help="check this module file against the receipt's module hash")
    v.add_argument("--stdin-text", help="input check: the stdin text that was sent")
    v.add_argument(
        "--input-arg",
        dest="input_args",
        action="append",
        default=[],
        help="input check: an argument that was sent, argv[0] included (repeatable)",
    )
    v.add_argument(
        "--input-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="input check: an env var that was sent (repeatable)",
    )
    v.add_argument("--expect-node", help="require this signer node id")
    v.add_argument("--daemon", action="store_true", help="ask the node's Verify RPC instead")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func="receipts:cmd_verify")

    st = sub.add_parser(
        "status",
        help="is the node healthy: health, uptime, jobs, peers, DHT, warnings",
        description="One screen on a node's health: the gRPC health check, node id, "
        "version, uptime, addresses, jobs, receipts, peers and the DHT, and warnings "
        "(no peers, overlay off, metrics not answering). Exits 0 when the node is "
        "SERVING, 1 when it is unreachable or not serving.",
    )
    st.add_argument(
        "--metrics",
        default=os.environ.get("PLASM_METRICS", ""),
        metavar="HOST:PORT",
        help="also check the node's /metrics endpoint (default $PLASM_METRICS)",
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func="status:cmd_status")

    i = sub.add_parser("info", help="node id, capabilities and state")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func="status:cmd_info")

    pe = sub.add_parser(
        "peers",
        help="peers in the node's DHT routing table, with their capabilities",
        description="List the peers this node's DHT knows (nearest first): address, "
        "round-trip time when connected, and what their signed peer records say "
        "they can run ('?' until a record is known).",
    )
    pe.add_argument(
        "--connections", action="store_true", help="show open overlay connections instead"
    )
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func="nodes:cmd_peers")

    pf = sub.add_parser(
        "peer",
        help="look one node up by id through the DHT",
        description="Find NODE_ID's signed peer record through the DHT and show "
        "its addresses and capabilities, with the lookup's hops, RPCs and time.",
    )
    pf.add_argument("node_id", help="64 lowercase hex")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func="nodes:cmd_peer")

    w = sub.add_parser(
        "workers",
        help="find workers that can run a job, through the DHT",
        description="Look up the DHT's capability provider key for the job's WASI "
        "version and memory, and list the workers whose signed records meet every "
        "requirement, best first (most free slots, then lowest round-trip time).",
    )
    w.add_argument(
        "--memory",
        type=_size,
        default=0,
        help="memory the job needs: bytes, or with a KiB/MiB/GiB suffix (e.g. 512MiB)",
    )
    w.add_argument("--wasi", help="WASI version (default preview1)")
    w.add_argument("--arch", help="host architecture, e.g. x86_64 (default any)")
    w.add_argument(
        "--min-free-slots", type=_nonneg, default=0, help="free job slots the worker advertised"
    )
    w.add_argument("--limit", type=_nonneg, default=20, help="most workers to list (max 100)")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func="nodes:cmd_workers")

    dn = sub.add_parser(
        "devnet",
        help="run a local network of N plasmd on loopback until Ctrl-C",
        description="Start N plasmd processes on 127.0.0.1 (node 0 is the seed, the "
        "others bootstrap from it through the DHT), each with its own data directory, "
        "log and kernel-chosen ports; print their addresses (also in DIR/devnet.json) "
        "and keep them running until Ctrl-C or SIGTERM, then stop them cleanly.",
    )
    dn.add_argument("--nodes", type=_nonneg, default=3, help="how many nodes (default 3)")
    dn.add_argument(
        "--dir", help="keep data directories and logs here (default: a temporary directory)"
    )
    dn.add_argument(
        "--once", action="store_true", help="start, print the addresses, then stop (a check)"
    )
    dn.set_defaults(func="devnet:cmd_devnet")

    r = sub.add_parser("receipts", help="list stored receipts, newest first")
    r.add_argument("--limit", type=_nonneg, default=20, help="receipts per page (max 1000)")
    r.add_argument("--page-token", help="from a previous page")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func="receipts:cmd_receipts")

    g = sub.add_parser("receipt", help="show one stored receipt")
    g.add_argument("job_id")
    g.add_argument("--out", help="write the receipt (SignedEnvelope JSON) to this file")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func="receipts:cmd_receipt")
    return p


def _run(args: argparse.Namespace) -> int:
    module_name, _, function = str(args.func).partition(":")
    # Importing a command (gRPC, protobuf, the generated code) makes objects by
    # the hundred thousand and the collector would walk them over and over:
    # hold it off while importing, then freeze what the imports made.
    gc.disable()
    try:
        command = getattr(import_module(f"plasm_grpc.cli.{module_name}"), function)
    finally:
        gc.freeze()
        gc.enable()
    return int(command(args))


def _error(message: str) -> None:
    if is_terminal(sys.stderr):
        from rich.text import Text

        from plasm_grpc.cli.output import err_console

        err_console().print(Text.assemble(("plasm:", "red"), f" {message}"), soft_wrap=True)
    else:
        sys.stderr.write(f"plasm: {message}\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(command_in(argv)).parse_args(argv)
    try:
        return _run(args)
    except CliError as err:
        _error(str(err))
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run() -> NoReturn:
    """The `plasm` command: `main()`, then exit without tearing the interpreter
    down. Everything the CLI writes is closed or flushed by then; what is left
    is gRPC's and protobuf's teardown, about 30 ms of every run here for nothing."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away, or a closed stream: nothing more to write.
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)


__all__ = ["COMMANDS", "PLACEMENT_MODES", "command_in", "main", "parser", "run"]

if __name__ == "__main__":
    run()
