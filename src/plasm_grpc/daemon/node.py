"""Wire a node together: build and start its parts in order, and stop them in order.

The parts: sandbox engine, module cache, receipt store and executor; the
gRPC server (api/server.py) on its addresses (grpc_listen.py); the overlay,
the remote-job worker, the DHT and reachability following (peering.py,
reachability.py); the router and the servicer; the optional HTTP listeners
(listeners.py). What a reload changes is in reload_apply.py, signals and
systemd in runner.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from plasm_grpc.api import codec
from plasm_grpc.api.server import NodeServer
from plasm_grpc.api.service import PlasmServicer
from plasm_grpc.core.address import host_port
from plasm_grpc.daemon import grpc_listen, settings
from plasm_grpc.daemon.api_views import node_facts
from plasm_grpc.daemon.config import Config
from plasm_grpc.daemon.errors import StartupError
from plasm_grpc.daemon.identity import load_cache_mac_key, load_node_key, prepare_data_dir
from plasm_grpc.daemon.listeners import Listeners
from plasm_grpc.daemon.peering import (
    advertise,
    advertised_addresses,
    keep_connected,
    offered_capabilities,
    start_dht,
    start_overlay,
)
from plasm_grpc.daemon.reachability import ReachabilityFollower, follow_reachability
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.jobs.executor import JobExecutor
from plasm_grpc.logs import EventLog
from plasm_grpc.net import DhtService, OverlayEndpoint, ReachabilityService
from plasm_grpc.remote.router import JobRouter
from plasm_grpc.remote.worker import JobWorker
from plasm_grpc.sandbox.cache import ModuleCache
from plasm_grpc.sandbox.engine import EngineError, SandboxEngine
from plasm_grpc.sandbox.runner import Sandbox
from plasm_grpc.store.receipts import ReceiptStore


@dataclass(slots=True, kw_only=True)
class Node:
    config: Config
    log: EventLog
    engine: SandboxEngine
    store: ReceiptStore
    executor: JobExecutor
    server: NodeServer
    addresses: tuple[str, ...]
    overlay: OverlayEndpoint | None
    tasks: list[asyncio.Task[None]]
    """Background work (advertising, bootstrap dials, reachability, reloads),
    cancelled when the node stops."""
    dht: DhtService | None = None
    router: JobRouter | None = None
    worker: JobWorker | None = None
    servicer: PlasmServicer | None = None
    reach: ReachabilityFollower | None = None
    listeners: Listeners = field(default_factory=Listeners)
    socket_inode: int | None = None

    @property
    def runtime(self) -> str:
        return f"wasmtime {self.engine.runtime.version}"

    async def stop(self) -> None:
        """Drain: refuse new jobs, finish admitted ones, then close everything."""
        self.log.event(
            "draining", jobs_running=self.executor.running, jobs_queued=self.executor.queued
        )
        self.server.set_serving(False)
        timeout = self.config.jobs.drain_timeout_s
        # Jobs placed on peers drain alongside local ones, while the overlay
        # is still up to bring their results back; those still out after the
        # timeout are cancelled at their workers.
        routed = (
            asyncio.ensure_future(self.router.drain(timeout)) if self.router is not None else None
        )
        drained = await self.executor.drain(timeout)
        if not drained:
            # Interrupt the guests still running: they end as CANCELLED, their
            # receipts are stored and their clients answered before we go.
            self.log.warning(
                "drain_timeout",
                jobs_running=self.executor.running,
                timeout_s=self.config.jobs.drain_timeout_s,
            )
            self.executor.sandbox.cancel_all()
            await self.executor.drain(self.config.grpc.shutdown_grace_s + 5)
        if routed is not None:
            await routed
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.worker is not None:
            self.worker.close()
        await self.listeners.close()
        if self.reach is not None:
            await self.reach.close()
        if self.dht is not None:
            await self.dht.close()  # saves the routing table; before the overlay goes
        if self.overlay is not None:
            await self.overlay.close()
        await self.server.stop(self.config.grpc.shutdown_grace_s)
        # Join the worker threads before the epoch ticker and the store go.
        await asyncio.to_thread(self.executor.close)
        self.store.close()
        self.engine.close()
        grpc_listen.remove_socket(self.config, self.socket_inode)
        self.log.event("stopped", jobs_completed=self.executor.completed)


async def start_node(config: Config, log: EventLog) -> Node:
    prepare_data_dir(config.data_dir)
    key, created = load_node_key(config.data_dir)
    log.event(
        "identity", node_id=key.node_id, created=created, key_file=str(config.data_dir / "node.key")
    )
    engine = _make_engine(config)
    cache = ModuleCache(
        engine, settings.cache_settings(config), load_cache_mac_key(config.data_dir)
    )
    store = ReceiptStore(config.data_dir / "receipts.sqlite3", sync=config.store.sync)
    executor = JobExecutor(
        key=key,
        sandbox=Sandbox(engine, cache),
        store=store,
        encode_receipt=codec.encode_receipt,
        encode_envelope=codec.encode_envelope,
        slots=config.effective_slots(),
        queue_limit=config.jobs.queue,
        default_limits=config.limits.default,
        max_limits=config.limits.max,
        input_limits=settings.input_limits(config),
        log=log,
    )
    server = NodeServer(
        max_message_bytes=config.grpc.max_message_bytes,
        max_concurrent_rpcs=config.effective_slots() + config.jobs.queue + 256,
    )
    listening = grpc_listen.bind_grpc(server, config)
    overlay: OverlayEndpoint | None = None
    dht: DhtService | None = None
    reachability: ReachabilityService | None = None
    reach: ReachabilityFollower | None = None
    worker: JobWorker | None = None
    listeners = Listeners()
    background: list[asyncio.Task[None]] = []
    try:
        try:
            overlay = await start_overlay(config, key, log)
            if overlay is not None:
                worker = JobWorker(
                    key=key,
                    executor=executor,
                    policy=settings.worker_policy(config, engine.runtime.wasi_version),
                    log=log,
                )
                worker.attach(overlay)
                reachability = ReachabilityService(overlay, key, events=log)
            dht = await start_dht(config, key, overlay, log) if overlay else None
            if overlay is not None and dht is not None and reachability is not None:
                reach = follow_reachability(
                    config,
                    log,
                    overlay=overlay,
                    dht=dht,
                    reachability=reachability,
                    capabilities=lambda: offered_capabilities(worker, executor),
                    tasks=background,
                )
            events = JobEventBus()
            router = JobRouter(
                key=key,
                executor=executor,
                events=events,
                overlay=overlay,
                dht=dht,
                settings=settings.router_settings(config),
                log=log,
            )
            router.relay = reach.relay if reach is not None else None
            if worker is not None:  # one job-id space: both store receipts here
                worker.job_id_in_use = router.has_job
                router.job_id_taken = worker.has_job
            facts = node_facts(
                config,
                addresses=listening.addresses,
                overlay=overlay,
                dht=dht,
                reachability=reachability,
                reach=reach,
                events=events,
                router=router,
            )
            servicer = PlasmServicer(executor, facts, log)
            await server.start(servicer)
        finally:
            listening.restore_umask()
        node = Node(
            config=config,
            log=log,
            engine=engine,
            store=store,
            executor=executor,
            server=server,
            addresses=tuple(listening.addresses),
            overlay=overlay,
            tasks=background,
            dht=dht,
            router=router,
            worker=worker,
            servicer=servicer,
            reach=reach,
            listeners=listeners,
        )
        await listeners.start(node)
        node.socket_inode = grpc_listen.own_socket(config)
        server.set_serving(True)
        log.event(
            "ready",
            overlay=host_port(overlay.host, overlay.port) if overlay else "",
            node_id=key.node_id,
            grpc=listening.addresses,
            data_dir=str(config.data_dir),
            job_slots=executor.slots,
            runtime=node.runtime,
            **listeners.ready_fields(),
        )
        if dht is not None and overlay is not None:
            background.append(
                asyncio.create_task(
                    advertise(
                        dht,
                        advertised_addresses(overlay),
                        lambda: offered_capabilities(worker, executor),
                    )
                )
            )
        elif overlay is not None:  # the DHT is off: just keep the bootstrap peers connected
            background.extend(
                asyncio.create_task(keep_connected(overlay, entry, config, log))
                for entry in config.overlay.bootstrap
            )
        if reachability is not None:
            background.append(asyncio.create_task(reachability.run()))
    except BaseException:
        await _undo_start(
            log,
            background=background,
            listeners=listeners,
            dht=dht,
            overlay=overlay,
            server=server,
            executor=executor,
            store=store,
            engine=engine,
        )
        raise
    return node


async def _undo_start(
    log: EventLog,
    *,
    background: list[asyncio.Task[None]],
    listeners: Listeners,
    dht: DhtService | None,
    overlay: OverlayEndpoint | None,
    server: NodeServer,
    executor: JobExecutor,
    store: ReceiptStore,
    engine: SandboxEngine,
) -> None:
    """Close what a failed `start_node` had started, in `Node.stop`'s order.

    Each step runs even if one before it fails (logged): the startup error is
    the one the caller sees.
    """
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [*listeners.closers()]
    if dht is not None:
        steps.append(("dht", dht.close))
    if overlay is not None:
        steps.append(("overlay", overlay.close))
    steps.append(("grpc", lambda: server.stop(None)))
    steps.append(("executor", lambda: asyncio.to_thread(executor.close)))
    for what, step in steps:
        try:
            await step()
        except Exception as err:  # noqa: BLE001 - logged; the startup error goes on
            log.warning("startup_cleanup_failed", step=what, error=repr(err))
    for what, close in (("store", store.close), ("engine", engine.close)):
        try:
            close()
        except Exception as err:  # noqa: BLE001 - logged; the startup error goes on
            log.warning("startup_cleanup_failed", step=what, error=repr(err))


def _make_engine(config: Config) -> SandboxEngine:
    try:
        return SandboxEngine(settings.engine_settings(config))
    except EngineError as err:
        raise StartupError(str(err)) from err
