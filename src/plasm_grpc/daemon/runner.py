"""Running a node under a supervisor: signals and systemd notifications.

SIGTERM and SIGINT drain the node and stop it; SIGHUP reloads the
configuration (daemon/reload_apply.py). systemd (Type=notify) hears READY=1
once the node serves, RELOADING=1 around each reload, STOPPING=1 before the
drain, and WATCHDOG=1 while the event loop turns.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from plasm_grpc.daemon.config import Config
from plasm_grpc.daemon.errors import NodeFailedError
from plasm_grpc.daemon.node import start_node
from plasm_grpc.daemon.notify import Notifier
from plasm_grpc.daemon.reload_apply import reload_node
from plasm_grpc.logs import EventLog


async def run(
    config: Config,
    log: EventLog,
    notifier: Notifier | None = None,
    reload: Callable[[], Config] | None = None,
    config_name: str = "(defaults)",
) -> None:
    """Run a node until SIGTERM or SIGINT; SIGHUP reloads (`reload()` reads
    the configuration again: the file given at start, with the same
    command-line overrides)."""
    # Handlers first: a supervisor may signal as soon as "ready" is logged. A
    # signal that comes while the node starts waits its turn in the queue.
    signals: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, "stop")
    loop.add_signal_handler(signal.SIGHUP, signals.put_nowait, "reload")
    notify = notifier if notifier is not None else Notifier()
    node = await start_node(config, log)
    # gRPC listens and the overlay is bound: tell systemd (Type=notify).
    status = f"serving gRPC on {', '.join(node.addresses)}"
    notify.ready(status)
    watchdog = (
        asyncio.create_task(_watchdog(notify, interval))
        if (interval := notify.watchdog_interval) is not None
        else None
    )
    try:
        while await signals.get() == "reload":
            # systemd's reload protocol (Type=notify-reload, and ExecReload
            # with Type=notify): RELOADING=1 with the time, then READY=1.
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notify.send(RELOADING="1", MONOTONIC_USEC=str(usec), STATUS="reloading configuration")
            reload_node(node, reload or (lambda: node.config), config_name)
            notify.ready(status)
        log.event("signal", action="shutdown")
        notify.stopping("draining jobs, then stopping")
        await node.stop()
    except Exception as err:
        raise NodeFailedError(repr(err)) from err
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _watchdog(notify: Notifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop: a loop that stops turning stops the pings."""
    while True:
        notify.watchdog()
        await asyncio.sleep(interval)
