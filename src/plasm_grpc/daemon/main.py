"""`plasmd`: the Plasm node daemon."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from plasm_grpc import __version__
from plasm_grpc.daemon.config import ConfigError, load_config, to_toml, validate
from plasm_grpc.daemon.identity import IdentityError
from plasm_grpc.logs import EventLog

DESCRIPTION = """\
Run a Plasm node: execute WebAssembly (WASI preview1) jobs in a wasmtime
sandbox and return each result with an Ed25519-signed receipt.

With no configuration, plasmd serves gRPC on 127.0.0.1:50151 and the
node-to-node overlay (QUIC + Noise) on udp 127.0.0.1:7946, keeps its key,
module cache and receipts under ~/.local/share/plasm, and runs jobs locally.
Logs are JSON, one event per line, on stderr. SIGTERM or Ctrl-C drains
running jobs, then exits.
"""

EPILOG = """\
examples:
  plasmd                                  # a working single node on loopback
  plasmd --config /etc/plasm/plasmd.toml
  plasmd --listen 127.0.0.1:0 --overlay-listen 127.0.0.1:0 --data-dir /tmp/node1
  plasmd --print-config > plasmd.toml     # every setting with its default

environment:
  PLASM_CONFIG   config file used when --config is not given

See docs/configuration.md for every key.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plasmd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML config file (default: none; $PLASM_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="state directory (overrides data_dir)")
    p.add_argument("--listen", help="gRPC host:port; '' disables TCP (overrides grpc.listen)")
    p.add_argument("--unix-socket", help="also serve gRPC on this Unix socket path")
    p.add_argument(
        "--overlay-listen",
        help="overlay UDP host:port; '' turns the overlay off (overrides overlay.listen)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML and exit",
    )
    p.add_argument("--version", action="version", version=f"plasmd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config_path = args.config or (
        Path(os.environ["PLASM_CONFIG"]) if os.environ.get("PLASM_CONFIG") else None
    )
    try:
        config = load_config(config_path)
        if args.data_dir is not None:
            config = dataclasses.replace(config, data_dir=args.data_dir)
        grpc_cfg = config.grpc
        if args.listen is not None:
            grpc_cfg = dataclasses.replace(grpc_cfg, listen=args.listen)
        if args.unix_socket is not None:
            grpc_cfg = dataclasses.replace(grpc_cfg, unix_socket=args.unix_socket)
        config = dataclasses.replace(config, grpc=grpc_cfg)
        if args.overlay_listen is not None:
            config = dataclasses.replace(
                config, overlay=dataclasses.replace(config.overlay, listen=args.overlay_listen)
            )
        if args.log_level:
            config = dataclasses.replace(
                config, log=dataclasses.replace(config.log, level=args.log_level)
            )
        config = validate(config)
    except ConfigError as err:
        print(f"plasmd: configuration error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(to_toml(config))
        return 0
    log = EventLog(level=config.log.level)
    log.event(
        "starting", version=__version__, config=str(config_path or "(defaults)"), pid=os.getpid()
    )
    from plasm_grpc.daemon.node import StartupError, run

    try:
        asyncio.run(run(config, log))
    except (StartupError, IdentityError, OSError) as err:
        log.error("startup_failed", error=str(err))
        print(f"plasmd: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
