"""Wire a node together and run it until a signal asks it to stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import platform
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from plasm.v1 import service_pb2, service_pb2_grpc

from plasm_grpc.api import codec
from plasm_grpc.api.facts import local_capabilities
from plasm_grpc.api.service import (
    DhtPeer,
    DhtUnavailableError,
    NodeFacts,
    PeerLookup,
    PeerView,
    PlasmServicer,
)
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.node import DhtSettings
from plasm_grpc.core.dht.records import (
    Capabilities,
    PeerRecord,
    WorkerRequirements,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.jobs.admission import WorkerPolicy
from plasm_grpc.core.jobs.session import SessionSettings
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.daemon.config import Config, parse_bootstrap, parse_host_port
from plasm_grpc.daemon.identity import load_cache_mac_key, load_node_key, prepare_data_dir
from plasm_grpc.daemon.notify import Notifier
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.jobs.executor import InputLimits, JobExecutor
from plasm_grpc.logs import EventLog
from plasm_grpc.net import (
    DhtClosedError,
    DhtService,
    DhtServiceSettings,
    OverlayEndpoint,
    OverlaySettings,
)
from plasm_grpc.remote.router import JobRouter, RouterSettings
from plasm_grpc.remote.worker import JobWorker
from plasm_grpc.sandbox.cache import CacheSettings, ModuleCache
from plasm_grpc.sandbox.engine import EngineError, EngineSettings, SandboxEngine
from plasm_grpc.sandbox.runner import Sandbox
from plasm_grpc.store.receipts import ReceiptStore

_CAPABILITIES_REFRESH_S = 60.0
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["PlasmService"].full_name


class StartupError(RuntimeError):
    pass


@dataclass(slots=True)
class Node:
    config: Config
    log: EventLog
    engine: SandboxEngine
    store: ReceiptStore
    executor: JobExecutor
    server: grpc.aio.Server
    health: health.HealthServicer
    addresses: tuple[str, ...]
    socket_inode: int | None
    overlay: OverlayEndpoint | None
    bootstrap_tasks: list[asyncio.Task[None]]
    dht: DhtService | None = None
    router: JobRouter | None = None
    worker: JobWorker | None = None

    async def stop(self) -> None:
        """Drain: refuse new jobs, finish admitted ones, then close everything."""
        self.log.event(
            "draining", jobs_running=self.executor.running, jobs_queued=self.executor.queued
        )
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
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
        for task in self.bootstrap_tasks:
            task.cancel()
        await asyncio.gather(*self.bootstrap_tasks, return_exceptions=True)
        if self.worker is not None:
            self.worker.close()
        if self.dht is not None:
            await self.dht.close()  # saves the routing table; before the overlay goes
        if self.overlay is not None:
            await self.overlay.close()
        await self.server.stop(self.config.grpc.shutdown_grace_s)
        # Join the worker threads before the epoch ticker and the store go.
        await asyncio.to_thread(self.executor.close)
        self.store.close()
        self.engine.close()
        if self.config.grpc.unix_socket:
            sock = Path(self.config.grpc.unix_socket)
            with contextlib.suppress(FileNotFoundError):
                if sock.lstat().st_ino == self.socket_inode:  # ours, not a successor's
                    sock.unlink()
        self.log.event("stopped", jobs_completed=self.executor.completed)


async def start_node(config: Config, log: EventLog) -> Node:
    prepare_data_dir(config.data_dir)
    key, created = load_node_key(config.data_dir)
    log.event(
        "identity", node_id=key.node_id, created=created, key_file=str(config.data_dir / "node.key")
    )
    engine = _make_engine(config)
    cache = ModuleCache(
        engine,
        CacheSettings(
            directory=config.data_dir,
            max_module_bytes=config.jobs.max_module_bytes,
            max_compiled_bytes=config.sandbox.max_compiled_bytes,
            max_cached_modules=config.sandbox.max_cached_modules,
        ),
        load_cache_mac_key(config.data_dir),
    )
    store = ReceiptStore(config.data_dir / "receipts.sqlite3", sync=config.store.sync)
    executor = JobExecutor(
        key=key,
        sandbox=Sandbox(engine, cache),
        store=store,
        encode_receipt=codec.encode_receipt,
        encode_envelope=lambda env: codec.envelope_to_pb(env).SerializeToString(),
        slots=config.effective_slots(),
        queue_limit=config.jobs.queue,
        default_limits=config.limits.default,
        max_limits=config.limits.max,
        input_limits=InputLimits(
            max_module_bytes=config.jobs.max_module_bytes,
            max_stdin_bytes=config.jobs.max_stdin_bytes,
            max_args=config.jobs.max_args,
            max_env=config.jobs.max_env,
            max_arg_env_bytes=config.jobs.max_arg_env_bytes,
        ),
        log=log,
    )
    limit = config.grpc.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.effective_slots() + config.jobs.queue + 256,
    )
    addresses: list[str] = []
    if config.grpc.listen:
        host, port = parse_host_port(config.grpc.listen)
        bound = _bind(server, f"{config.grpc.listen}")
        addresses.append(f"{host}:{bound}" if port == 0 else config.grpc.listen)
    old_umask = None
    if config.grpc.unix_socket:
        sock = Path(config.grpc.unix_socket)
        _claim_socket_path(sock)
        # Created 0660 from the start (owner and group: local clients), no window.
        old_umask = os.umask(0o117)
        try:
            _bind(server, f"unix:{sock}")
        except BaseException:
            os.umask(old_umask)
            raise
        addresses.append(f"unix:{sock}")
    overlay: OverlayEndpoint | None = None
    dht: DhtService | None = None
    worker: JobWorker | None = None
    router: JobRouter | None = None
    background: list[asyncio.Task[None]] = []
    try:
        try:
            overlay = await _start_overlay(config, key, log)
            if overlay is not None:
                worker = JobWorker(
                    key=key, executor=executor, policy=_worker_policy(config, engine), log=log
                )
                worker.attach(overlay)
            dht = await _start_dht(config, key, overlay, log) if overlay else None
            events = JobEventBus()
            router = JobRouter(
                key=key,
                executor=executor,
                events=events,
                overlay=overlay,
                dht=dht,
                settings=_router_settings(config),
                log=log,
            )
            servicer = PlasmServicer(
                executor,
                NodeFacts(
                    grpc_addresses=tuple(addresses),
                    started_at_ns=time.time_ns(),
                    overlay_address=host_port(overlay.host, overlay.port) if overlay else "",
                    peers=(lambda: _peer_views(overlay)) if overlay else (lambda: ()),
                    dht=_DhtView(dht) if dht else None,
                    events=events,
                    cancel_job=router.cancel,
                    router=router,
                    default_job_timeout_s=config.remote.default_deadline_s,
                ),
                log,
            )
            service_pb2_grpc.add_PlasmServiceServicer_to_server(servicer, server)
            health_servicer = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            await server.start()
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        socket_inode = None
        if config.grpc.unix_socket:
            os.chmod(config.grpc.unix_socket, 0o660)
            socket_inode = os.lstat(config.grpc.unix_socket).st_ino
        health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        log.event(
            "ready",
            overlay=host_port(overlay.host, overlay.port) if overlay else "",
            node_id=key.node_id,
            grpc=addresses,
            data_dir=str(config.data_dir),
            job_slots=executor.slots,
            runtime=f"wasmtime {engine.runtime.version}",
        )
        if dht is not None and overlay is not None:
            background.append(
                asyncio.create_task(
                    _advertise(
                        dht,
                        _advertised_addresses(overlay),
                        lambda: _offered_capabilities(config, executor),
                    )
                )
            )
        elif overlay is not None:  # the DHT is off: just keep the bootstrap peers connected
            background.extend(
                asyncio.create_task(_keep_connected(overlay, entry, config, log))
                for entry in config.overlay.bootstrap
            )
    except BaseException:
        await _undo_start(
            log,
            background=background,
            dht=dht,
            overlay=overlay,
            server=server,
            executor=executor,
            store=store,
            engine=engine,
        )
        raise
    return Node(
        config,
        log,
        engine,
        store,
        executor,
        server,
        health_servicer,
        tuple(addresses),
        socket_inode,
        overlay,
        background,
        dht,
        router,
        worker,
    )


async def _undo_start(
    log: EventLog,
    *,
    background: list[asyncio.Task[None]],
    dht: DhtService | None,
    overlay: OverlayEndpoint | None,
    server: grpc.aio.Server,
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
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
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


async def _start_overlay(config: Config, key: NodeKey, log: EventLog) -> OverlayEndpoint | None:
    if not config.overlay.listen:
        return None
    host, port = parse_host_port(config.overlay.listen, "overlay.listen")
    endpoint = OverlayEndpoint(
        key,
        host=host,
        port=port,
        settings=OverlaySettings(
            max_connections=config.overlay.max_connections,
            max_connections_per_ip=config.overlay.max_connections_per_ip,
        ),
        events=log,
    )
    try:
        await endpoint.start()
    except OSError as err:
        raise StartupError(
            f"cannot bind the overlay on udp {config.overlay.listen}: {err}"
        ) from err
    return endpoint


async def _start_dht(
    config: Config, key: NodeKey, overlay: OverlayEndpoint, log: EventLog
) -> DhtService | None:
    """The DHT over `overlay`, bootstrapping from overlay.bootstrap and the saved table."""
    if not config.dht.enabled:
        return None
    d = config.dht
    dht = DhtService(
        overlay,
        key,
        events=log,
        data_dir=config.data_dir,
        settings=DhtServiceSettings(
            node=DhtSettings(
                record_ttl=d.record_ttl_s,
                republish_interval=d.republish_interval_s,
                refresh_interval=d.refresh_interval_s,
                rate=d.rate_per_s,
                burst=d.burst,
                max_records=d.max_records,
                max_provider_entries=d.max_provider_entries,
            ),
            rpc_timeout=d.rpc_timeout_s,
            max_rpcs_in_flight=d.max_rpcs_in_flight,
            bootstrap_retry_interval=config.overlay.reconnect_interval_s,
            snapshot_interval=d.snapshot_interval_s,
        ),
    )
    seeds = []
    for entry in config.overlay.bootstrap:
        node_id, host, port = parse_bootstrap(entry)
        if node_id != key.node_id:
            seeds.append(Contact(node_id=node_id, host=host, port=port))
    await dht.start(seeds)
    return dht


def _worker_policy(config: Config, engine: SandboxEngine) -> WorkerPolicy:
    jobs, remote = config.jobs, config.remote
    return WorkerPolicy(
        accept_jobs=remote.accept_jobs,
        arch=platform.machine(),
        wasi_version=engine.runtime.wasi_version,
        default_limits=config.limits.default,
        max_limits=config.limits.max,
        max_module_bytes=jobs.max_module_bytes,
        max_input_bytes=jobs.max_stdin_bytes + jobs.max_arg_env_bytes,
        lease_ns=int(remote.lease_s * 1e9),
        capacity=config.effective_slots() + jobs.queue,
        max_share=remote.max_share_per_requester,
    )


def _router_settings(config: Config) -> RouterSettings:
    remote = config.remote
    return RouterSettings(
        session=SessionSettings(
            max_attempts=remote.max_attempts,
            offer_timeout_s=remote.offer_timeout_s,
            search_timeout_s=remote.search_timeout_s,
            fallback_local=remote.fallback_local,
        ),
        heartbeat_interval_s=remote.heartbeat_interval_s,
        heartbeat_misses=remote.heartbeat_misses,
        worker_cache_s=remote.worker_cache_s,
        distrust_s=remote.distrust_s,
    )


def _advertised_addresses(overlay: OverlayEndpoint) -> list[str]:
    """The overlay address for the peer record; none when bound to a wildcard.

    A node listening on 0.0.0.0 or :: cannot name its own reachable address
    here; peers still learn it from the connection it answers them on.
    """
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(overlay.host).is_unspecified:
            return []
    return [host_port(overlay.host, overlay.port)]


def _offered_capabilities(config: Config, executor: JobExecutor) -> Capabilities:
    """What the peer record advertises. A node that takes no jobs from peers
    offers no job limits or slots, so it provides no capability class and
    automatic placement does not even offer it a job."""
    capabilities = local_capabilities(executor)
    if config.remote.accept_jobs:
        return capabilities
    return dataclasses.replace(
        capabilities, max_limits=ResourceLimits(), free_job_slots=0, total_job_slots=0
    )


async def _advertise(
    dht: DhtService, addresses: list[str], current: Callable[[], Capabilities]
) -> None:
    """Publish the own record; the DHT republishes it (and again once it has peers).

    Every minute the capabilities for the next republish are refreshed, so
    the free job slots a record advertises are at most one republish old.
    """
    with contextlib.suppress(DhtClosedError):
        await dht.advertise(addresses, current())
    while True:
        await asyncio.sleep(_CAPABILITIES_REFRESH_S)
        dht.update_capabilities(current())


@dataclass(frozen=True, slots=True)
class _DhtView:
    """The api's DhtView over the DhtService (net and api do not import each other)."""

    service: DhtService

    def known_peers(self) -> Sequence[DhtPeer]:
        return [
            DhtPeer(contact=p.contact, record=p.record, connected=p.connected)
            for p in self.service.known_peers()
        ]

    async def find_workers(
        self, requirements: WorkerRequirements, *, limit: int, timeout: float
    ) -> Sequence[PeerRecord]:
        try:
            return await self.service.find_workers(requirements, limit=limit, timeout=timeout)
        except DhtClosedError as err:
            raise DhtUnavailableError(str(err)) from err

    async def find_peer(self, node_id: str, *, timeout: float) -> PeerLookup:
        own = self.service.node.own_record
        if node_id == self.service.node_id:
            return PeerLookup(record=own, hops=0, rpcs=0, duration_s=0.0)
        try:
            found = await self.service.find_peer(node_id, timeout=timeout)
        except DhtClosedError as err:
            raise DhtUnavailableError(str(err)) from err
        return PeerLookup(
            record=found.record, hops=found.hops, rpcs=found.rpcs, duration_s=found.duration
        )


async def _keep_connected(
    overlay: OverlayEndpoint, entry: str, config: Config, log: EventLog
) -> None:
    """Dial a bootstrap peer, and again whenever it is not connected."""
    node_id, host, port = parse_bootstrap(entry)
    while True:
        if overlay.connection_to(node_id) is None:
            try:
                await overlay.connect(host, port, node_id)
            except Exception as err:  # noqa: BLE001 - logged; retried after the interval
                log.warning("bootstrap_failed", peer=entry, error=str(err))
        await asyncio.sleep(config.overlay.reconnect_interval_s)


def _peer_views(overlay: OverlayEndpoint) -> list[PeerView]:
    return [
        PeerView(
            node_id=p.node_id,
            address=host_port(p.host, p.port),
            direction=p.direction,
            rtt_us=int((p.rtt or 0) * 1_000_000),
        )
        for p in overlay.connections()
    ]


def _claim_socket_path(sock: Path) -> None:
    """Make way for our socket, but never take over a live daemon's."""
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        info = sock.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(
            f"{sock} exists and is not a socket; remove it or set another grpc.unix_socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.unlink(missing_ok=True)  # left behind by a crashed run
        return
    finally:
        probe.close()
    raise StartupError(
        f"another process is serving on {sock}; stop it or set another grpc.unix_socket"
    )


def _make_engine(config: Config) -> SandboxEngine:
    settings = EngineSettings(
        max_wasm_stack=config.sandbox.max_wasm_stack,
        epoch_tick_ms=config.sandbox.epoch_tick_ms,
        pooling=config.sandbox.pooling,
        pool_slots=max(16, 2 * config.effective_slots()),
        max_memory_bytes=config.limits.max.max_memory_bytes,
        max_timeout_ms=config.limits.max.timeout_ms,
        max_table_elements=config.sandbox.max_table_elements,
    )
    try:
        return SandboxEngine(settings)
    except EngineError as err:
        raise StartupError(str(err)) from err


def _bind(server: grpc.aio.Server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {address}: {err}") from err
    if port == 0 and not address.startswith("unix:"):
        raise StartupError(f"cannot listen on {address}: address in use or not available")
    return port


async def run(config: Config, log: EventLog, notifier: Notifier | None = None) -> None:
    # Handlers first: a supervisor may signal as soon as "ready" is logged.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notify = notifier if notifier is not None else Notifier()
    node = await start_node(config, log)
    # gRPC listens and the overlay is bound: tell systemd (Type=notify).
    notify.ready(f"serving gRPC on {', '.join(node.addresses)}")
    watchdog = (
        asyncio.create_task(_watchdog(notify, interval))
        if (interval := notify.watchdog_interval) is not None
        else None
    )
    try:
        await stop.wait()
        log.event("signal", action="shutdown")
        notify.stopping("draining jobs, then stopping")
        await node.stop()
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _watchdog(notify: Notifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop: a loop that stops turning stops the pings."""
    while True:
        notify.watchdog()
        await asyncio.sleep(interval)
