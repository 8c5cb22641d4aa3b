"""Start the web console (plasm_grpc.console) from the [console] configuration."""

from __future__ import annotations

import stat
from pathlib import Path

from plasm_grpc.api.service import PlasmServicer
from plasm_grpc.console import ConsoleApp, ConsoleServer, ConsoleSettings, HealthCheck
from plasm_grpc.daemon.config import Config, is_loopback, parse_host_port
from plasm_grpc.daemon.errors import StartupError
from plasm_grpc.logs import EventLog


class ConsoleStartError(StartupError):
    """The console cannot listen, or its token cannot be read (plasmd does not start)."""


def read_token(path: Path, log: EventLog) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as err:
        raise ConsoleStartError(f"cannot read console.token_file {path}: {err}") from err
    if len(token) < 16:
        raise ConsoleStartError(
            f"console.token_file {path} must hold a token of at least 16 characters "
            "(for example: openssl rand -hex 32)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("console_token_file_readable", path=str(path), mode=oct(mode & 0o777))
    return token


async def start_console(
    config: Config, servicer: PlasmServicer, health: HealthCheck, log: EventLog
) -> ConsoleServer:
    settings = config.console
    host, port = parse_host_port(settings.listen, "console.listen")
    token = read_token(Path(settings.token_file), log) if settings.token_file else None
    app = ConsoleApp(
        servicer,
        health,
        ConsoleSettings(
            allow_actions=settings.allow_actions,
            token=token,
            events_backlog=settings.events_backlog,
            loopback_hosts_only=is_loopback(host),
        ),
        log,
    )
    server = ConsoleServer(
        app,
        log=log,
        request_timeout_s=settings.request_timeout_s,
        max_connections=settings.max_connections,
        max_body_bytes=settings.max_body_bytes,
    )
    try:
        await server.start(host, port)
    except OSError as err:
        raise ConsoleStartError(
            f"cannot listen for the console on {settings.listen}: {err.strerror or err}"
        ) from err
    return server
