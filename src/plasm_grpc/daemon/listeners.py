"""The node's optional loopback HTTP listeners beside gRPC: /metrics and the console.

Each is off unless its `listen` key is set, starts after gRPC serves and
before "ready", and closes when the node stops. This is the one place that
knows them: a new listener is a field of `Listeners`,
a step in `start`, an entry in `closers` and, if it has an address to show,
in `ready_fields`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plasm_grpc import metrics
from plasm_grpc.console import ConsoleServer
from plasm_grpc.daemon.config import Config, parse_host_port
from plasm_grpc.daemon.console import start_console
from plasm_grpc.daemon.errors import StartupError
from plasm_grpc.daemon.metrics_http import METRICS_PATH, MetricsServer
from plasm_grpc.daemon.node_metrics import node_gauges, touch_series

if TYPE_CHECKING:
    from plasm_grpc.daemon.node import Node


@dataclass(slots=True)
class Listeners:
    metrics: MetricsServer | None = None
    console: ConsoleServer | None = None

    async def start(self, node: Node) -> None:
        """Start the configured listeners; those started are set here as they
        start, so a failure part-way leaves `closers` naming what to close."""
        config = node.config
        if config.metrics.listen:
            touch_series()
            gauges = node_gauges(node.executor, node.overlay, node.dht, node.runtime, node.reach)
            server = MetricsServer(
                lambda: metrics.REGISTRY.expose() + gauges.expose(),
                log=node.log,
                request_timeout_s=config.metrics.request_timeout_s,
            )
            host, port = parse_host_port(config.metrics.listen, "metrics.listen")
            try:
                await server.start(host, port)
            except OSError as err:
                raise StartupError(
                    f"cannot listen for /metrics on {config.metrics.listen}: {err.strerror or err}"
                ) from err
            self.metrics = server
        if config.console.listen and node.servicer is not None:
            self.console = await start_console(config, node.servicer, node.server.health, node.log)

    def ready_fields(self) -> dict[str, str]:
        """The listeners' URLs for the "ready" event ("" when off)."""
        return {
            "metrics": f"http://{self.metrics.address}{METRICS_PATH}" if self.metrics else "",
            "console": f"http://{self.console.address}/" if self.console else "",
        }

    def reload(self, config: Config) -> None:
        """Take the settings a SIGHUP may change (daemon/reload.py)."""
        if self.metrics is not None:
            self.metrics.request_timeout_s = config.metrics.request_timeout_s

    def closers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """(name, close) of each listener started, in the order to close them."""
        closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.metrics is not None:
            closers.append(("metrics", self.metrics.close))
        if self.console is not None:
            closers.append(("console", self.console.close))
        return closers

    async def close(self) -> None:
        for _, close in self.closers():
            await close()
