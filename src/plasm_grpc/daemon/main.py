"""`plasmd`: the Plasm node daemon."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plasm_grpc import __version__
from plasm_grpc.daemon.config import Config, ConfigError, load_config, to_toml, validate
from plasm_grpc.daemon.errors import NodeFailedError, StartupError
from plasm_grpc.daemon.identity import IdentityError
from plasm_grpc.logs import EventLog, capture_stray_output, format_exception, is_journal_stream

DESCRIPTION = """\
Run a Plasm node: execute WebAssembly (WASI preview1) jobs in a wasmtime
sandbox and return each result with an Ed25519-signed receipt.

With no configuration, plasmd serves gRPC on 127.0.0.1:50151 and the
node-to-node overlay (QUIC + Noise) on udp 127.0.0.1:7946, keeps its key,
module cache and receipts under ~/.local/share/plasm, and runs jobs locally.
Logs are JSON, one event per line, on stderr. SIGTERM or Ctrl-C drains
running jobs, then exits; SIGHUP re-reads the configuration file and applies
what can change while running (log level, [remote] settings, new bootstrap
peers), naming the keys that need a restart.
"""

EPILOG = """\
examples:
  plasmd                                  # a working single node on loopback
  plasmd --config /etc/plasm/plasmd.toml
  plasmd --listen 127.0.0.1:0 --overlay-listen 127.0.0.1:0 --data-dir /tmp/node1
  plasmd --print-config > plasmd.toml     # every setting with its default
  kill -HUP $(pidof -x plasmd)            # reload plasmd.toml (systemctl reload plasmd)

environment:
  PLASM_CONFIG   config file used when --config is not given
  GRPC_VERBOSITY gRPC's own diagnostics on stderr (default here: NONE)

exit codes: 0 stopped cleanly; 1 could not start (or failed); 2 configuration error.

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


def _loader(args: argparse.Namespace, path: Path | None) -> Callable[[], Config]:
    """Reads the configuration: the file (if any), then the command line's
    overrides. Called at start and again on every SIGHUP."""

    def load() -> Config:
        config = load_config(path)
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
        return validate(config)

    return load


def _fail(
    log: EventLog, message: str, code: int, event: str = "startup_failed", **fields: Any
) -> int:
    """Report why plasmd cannot start (or stopped): plain text on a terminal,
    else one JSON event (stderr goes to the journal or a log collector)."""
    if sys.stderr.isatty():
        print(f"plasmd: {message}", file=sys.stderr)
    else:
        log.error(event, error=message, exit_code=code, **fields)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config_path = args.config or (
        Path(os.environ["PLASM_CONFIG"]) if os.environ.get("PLASM_CONFIG") else None
    )
    journal = is_journal_stream(sys.stderr)
    load = _loader(args, config_path)
    try:
        config = load()
    except ConfigError as err:
        return _fail(EventLog(syslog_prefix=journal), f"configuration error: {err}", 2)
    if args.print_config:
        sys.stdout.write(to_toml(config))
        return 0
    log = EventLog(level=config.log.level, syslog_prefix=journal)
    capture_stray_output(log)
    # gRPC's C core logs errors as unstructured lines on stderr; plasmd reports
    # what it needs itself. GRPC_VERBOSITY=ERROR (or DEBUG) brings them back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    config_name = str(config_path or "(defaults)")
    log.event("starting", version=__version__, config=config_name, pid=os.getpid())
    try:
        from plasm_grpc.daemon import runner
    except Exception as err:  # noqa: BLE001 - a broken installation, reported as JSON
        return _fail(log, repr(err), 1, traceback=format_exception(err))
    try:
        asyncio.run(runner.run(config, log, reload=load, config_name=config_name))
    except (StartupError, IdentityError, OSError) as err:
        return _fail(log, str(err), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - a bug: one JSON event, not a traceback
        if isinstance(err, NodeFailedError):  # after "ready"
            cause = err.__cause__ or err
            return _fail(log, str(err), 1, event="failed", traceback=format_exception(cause))
        return _fail(log, repr(err), 1, traceback=format_exception(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
