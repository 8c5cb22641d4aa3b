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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from plasm.v1 import service_pb2, service_pb2_grpc

from plasm_grpc import __version__, metrics
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
from plasm_grpc.console import ConsoleServer
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.node import DhtSettings, OperationKind
from plasm_grpc.core.dht.records import (
    Capabilities,
    PeerRecord,
    RelayAddress,
    WorkerRequirements,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.jobs.admission import WorkerPolicy
from plasm_grpc.core.jobs.session import AttemptResult, SessionSettings
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.reachability import Reachability
from plasm_grpc.core.relay import RelayLimits
from plasm_grpc.daemon.config import Config, ConfigError, parse_bootstrap, parse_host_port
from plasm_grpc.daemon.console import start_console
from plasm_grpc.daemon.identity import load_cache_mac_key, load_node_key, prepare_data_dir
from plasm_grpc.daemon.metrics_http import MetricsServer
from plasm_grpc.daemon.notify import Notifier
from plasm_grpc.daemon.reload import ReloadPlan, plan_reload
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.jobs.executor import InputLimits, JobExecutor
from plasm_grpc.logs import LEVELS, EventLog
from plasm_grpc.metrics import Gauge, Registry
from plasm_grpc.net import (
    DhtClosedError,
    DhtService,
    DhtServiceSettings,
    OverlayEndpoint,
    OverlaySettings,
    ReachabilityService,
)
from plasm_grpc.net.relay import RelayService, RelaySettings
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


class NodeFailedError(RuntimeError):
    """An unexpected error after the node was ready (a bug); its cause is the error."""


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
    servicer: PlasmServicer | None = None
    metrics: MetricsServer | None = None
    reach: _Reach | None = None
    console: ConsoleServer | None = None

    def reload(self, loaded: Config) -> ReloadPlan:
        """Take what can change while running from `loaded` (see daemon/reload.py).

        Raises ConfigError, leaving everything as it was, if the result does
        not validate. The settings objects are swapped on the loop's thread,
        between two jobs' reads of them: a job in flight keeps what it started
        with, the next one sees the new values.
        """
        plan = plan_reload(self.config, loaded)
        config = self.config = plan.config
        applied = set(plan.applied)
        if "log.level" in applied:
            self.log.set_level(config.log.level)
        if any(key.startswith("remote.") for key in applied):
            if self.router is not None:
                self.router.settings = _router_settings(config)
            if self.worker is not None:
                policy = _worker_policy(config, self.engine)
                self.worker.policy = policy
                self.worker.leases.policy = policy
            if self.servicer is not None:
                self.servicer.facts = dataclasses.replace(
                    self.servicer.facts, default_job_timeout_s=config.remote.default_deadline_s
                )
        if self.metrics is not None:
            self.metrics.request_timeout_s = config.metrics.request_timeout_s
        self.bootstrap_tasks[:] = [t for t in self.bootstrap_tasks if not t.done()]
        dht, overlay, worker = self.dht, self.overlay, self.worker
        if "remote.accept_jobs" in applied and dht is not None and overlay is not None:
            # Advertise (or stop advertising) as a worker now, not at the next republish.
            assert worker is not None
            caps = _offered_capabilities(worker, self.executor)
            dht.update_capabilities(caps)
            if self.reach is not None:
                self.reach.readvertise()
        if plan.bootstrap_added and dht is not None:
            self._background(_seed_dht(dht, plan.bootstrap_added, self.log))
        elif plan.bootstrap_added and overlay is not None:
            for entry in plan.bootstrap_added:
                self._background(_keep_connected(overlay, entry, config, self.log))
        return plan

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        _spawn(self.bootstrap_tasks, work, self.log, "reload_task_failed")

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
        if self.metrics is not None:
            await self.metrics.close()
        if self.console is not None:
            await self.console.close()
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
    reachability: ReachabilityService | None = None
    reach: _Reach | None = None
    worker: JobWorker | None = None
    router: JobRouter | None = None
    metrics_server: MetricsServer | None = None
    console_server: ConsoleServer | None = None
    background: list[asyncio.Task[None]] = []
    try:
        try:
            overlay = await _start_overlay(config, key, log)
            if overlay is not None:
                worker = JobWorker(
                    key=key, executor=executor, policy=_worker_policy(config, engine), log=log
                )
                worker.attach(overlay)
                reachability = ReachabilityService(overlay, key, events=log)
            dht = await _start_dht(config, key, overlay, log) if overlay else None
            if overlay is not None and dht is not None and reachability is not None:
                relay = RelayService(overlay, settings=_relay_settings(config), events=log)
                relay.install()
                reach = _Reach(
                    config=config,
                    log=log,
                    overlay=overlay,
                    dht=dht,
                    relay=relay,
                    capabilities=lambda: _offered_capabilities(worker, executor),
                    tasks=background,
                )
                reachability.on_change(reach.follow)
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
            router.relay = reach.relay if reach is not None else None
            if worker is not None:  # one job-id space: both store receipts here
                worker.job_id_in_use = router.has_job
                router.job_id_taken = worker.has_job
            servicer = PlasmServicer(
                executor,
                NodeFacts(
                    grpc_addresses=tuple(addresses),
                    started_at_ns=time.time_ns(),
                    overlay_address=host_port(overlay.host, overlay.port) if overlay else "",
                    peers=(lambda: _peer_views(overlay)) if overlay else (lambda: ()),
                    dht=_DhtView(dht) if dht else None,
                    reachability=_reachability_view(reachability),
                    relays=(
                        (lambda: [f"{r.relay_node_id}@{r.address}" for r in reach.relays])
                        if reach is not None
                        else (lambda: ())
                    ),
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
        if config.metrics.listen:
            metrics_server = await _start_metrics(
                config,
                _node_metrics(executor, overlay, dht, f"wasmtime {engine.runtime.version}", reach),
                log,
            )
        if config.console.listen:
            console_server = await start_console(config, servicer, health_servicer, log)
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
            metrics=f"http://{metrics_server.address}/metrics" if metrics_server else "",
            console=f"http://{console_server.address}/" if console_server else "",
        )
        if dht is not None and overlay is not None:
            background.append(
                asyncio.create_task(
                    _advertise(
                        dht,
                        _advertised_addresses(overlay),
                        lambda: _offered_capabilities(worker, executor),
                    )
                )
            )
        elif overlay is not None:  # the DHT is off: just keep the bootstrap peers connected
            background.extend(
                asyncio.create_task(_keep_connected(overlay, entry, config, log))
                for entry in config.overlay.bootstrap
            )
        if reachability is not None:
            background.append(asyncio.create_task(reachability.run()))
    except BaseException:
        await _undo_start(
            log,
            background=background,
            metrics_server=metrics_server,
            console_server=console_server,
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
        servicer,
        metrics_server,
        reach,
        console_server,
    )


@dataclass(slots=True, kw_only=True)
class _Reach:
    """Follows the node's reachability (docs/reachability.md): a public node
    serves in the DHT and relays for others; a private one is a DHT client,
    holds relay reservations and advertises its relays instead of an address.
    UNKNOWN keeps whatever was decided last."""

    config: Config
    log: EventLog
    overlay: OverlayEndpoint
    dht: DhtService
    relay: RelayService
    capabilities: Callable[[], Capabilities]
    tasks: list[asyncio.Task[None]]
    private: bool = False
    relays: list[RelayAddress] = dataclasses.field(default_factory=list)
    keeping: asyncio.Task[None] | None = None
    closing: bool = False

    def __post_init__(self) -> None:
        self.relay.on_relays_changed(self._relays_changed)

    def follow(self, old: Reachability, new: Reachability) -> None:
        if new is Reachability.PRIVATE:
            self.dht.set_client_mode(True, reason=f"reachability {old.value} -> private")
            self.relay.serving = False
            self.private = True
            if self.config.relay.use_relays and (self.keeping is None or self.keeping.done()):
                self.keeping = self._spawn(self.relay.keep_reservations(self._relay_candidates))
        elif new is Reachability.PUBLIC:
            self.dht.set_client_mode(False, reason=f"reachability {old.value} -> public")
            self.relay.serving = self.config.relay.serve
            self.private = False
            if self.keeping is not None:
                self.keeping.cancel()  # its reservations are dropped; that re-advertises
                self.keeping = None
            self.readvertise()

    def addresses(self) -> list[str]:
        """A node reached through relays names no address of its own: a
        requester would dial it first and wait for nothing."""
        return [] if self.private and self.relays else _advertised_addresses(self.overlay)

    def readvertise(self) -> None:
        self._spawn(_readvertise(self.dht, self.addresses(), self.capabilities(), self.relays))

    def _relays_changed(self, relays: list[RelayAddress]) -> None:
        self.relays = relays
        if self.closing:
            return
        self.log.event(
            "relays_advertised", relays=[f"{r.relay_node_id[:16]}@{r.address}" for r in relays]
        )
        self.readvertise()

    def _relay_candidates(self) -> list[tuple[str, str, int]]:
        """Public peers from the routing table (clients never enter it), connected first."""
        peers = sorted(self.dht.known_peers(), key=lambda p: not p.connected)
        return [(p.contact.node_id, p.contact.host, p.contact.port) for p in peers]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return _spawn(self.tasks, work, self.log, "reachability_task_failed")

    async def close(self) -> None:
        self.closing = True
        if self.keeping is not None:
            self.keeping.cancel()
            await asyncio.gather(self.keeping, return_exceptions=True)
        await self.relay.close()


def _spawn(
    tasks: list[asyncio.Task[None]],
    work: Coroutine[Any, Any, None],
    log: EventLog,
    failed_event: str,
) -> asyncio.Task[None]:
    """Run `work` as a task held in `tasks` (which the node cancels when it
    stops) until it ends; log `failed_event` if it fails."""
    task = asyncio.create_task(work)
    tasks.append(task)

    def done(task: asyncio.Task[None]) -> None:
        if task in tasks:
            tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(failed_event, error=repr(task.exception()))

    task.add_done_callback(done)
    return task


def _relay_settings(config: Config) -> RelaySettings:
    relay = config.relay
    return RelaySettings(
        serve=relay.serve,
        limits=RelayLimits(
            max_reservations=relay.max_reservations,
            duration_s=relay.reservation_s,
            max_bytes=relay.max_bytes,
            rate_bytes_per_s=relay.rate_bytes_per_s,
            max_circuits=relay.max_circuits,
        ),
        use_relays=relay.use_relays,
        reservations=relay.reservations,
        hole_punch=relay.hole_punch,
    )


def _reachability_view(service: ReachabilityService | None) -> Callable[[], Reachability]:
    if service is None:
        return lambda: Reachability.UNKNOWN
    return lambda: service.status


async def _undo_start(
    log: EventLog,
    *,
    background: list[asyncio.Task[None]],
    metrics_server: MetricsServer | None,
    console_server: ConsoleServer | None,
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
    if metrics_server is not None:
        steps.append(("metrics", metrics_server.close))
    if console_server is not None:
        steps.append(("console", console_server.close))
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


async def _start_metrics(config: Config, registry: Registry, log: EventLog) -> MetricsServer:
    for outcome in Outcome:  # every label from the start, so rate() sees the first job
        metrics.JOBS.touch(outcome.label)
    for result in AttemptResult:
        metrics.REMOTE_ATTEMPTS.touch(result.name.lower())
    for kind in OperationKind:
        metrics.DHT_LOOKUPS.touch(kind.value)
    for placement in ("local", "remote"):
        metrics.JOB_DURATION.touch(placement)
    server = MetricsServer(
        lambda: metrics.REGISTRY.expose() + registry.expose(),
        log=log,
        request_timeout_s=config.metrics.request_timeout_s,
    )
    host, port = parse_host_port(config.metrics.listen, "metrics.listen")
    try:
        await server.start(host, port)
    except OSError as err:
        raise StartupError(
            f"cannot listen for /metrics on {config.metrics.listen}: {err.strerror or err}"
        ) from err
    return server


_RECEIPT_COUNT_TTL_S = 1.0


def _node_metrics(
    executor: JobExecutor,
    overlay: OverlayEndpoint | None,
    dht: DhtService | None,
    runtime: str,
    reach: _Reach | None = None,
) -> Registry:
    """Gauges read from the running node at each scrape."""
    registry = Registry()
    started = _process_start_time()
    # COUNT(*) over the receipts: at most once a second, however many scrape.
    receipts: list[float] = [0.0, -_RECEIPT_COUNT_TTL_S]  # value, when read (monotonic)

    def receipts_stored() -> float:
        now = time.monotonic()
        if now - receipts[1] >= _RECEIPT_COUNT_TTL_S:
            receipts[:] = [float(executor.store.count()), now]
        return receipts[0]

    for gauge in (
        Gauge(
            "plasm_build_info",
            "Always 1; the labels name this plasmd's version and sandbox runtime.",
            labels=("version", "runtime"),
            collect=lambda: [((__version__, runtime), 1.0)],
        ),
        Gauge(
            "process_start_time_seconds",
            "When plasmd started, in seconds since the Unix epoch.",
            read=lambda: started,
        ),
        Gauge(
            "plasm_jobs_running",
            "Jobs running in this node's sandbox.",
            read=lambda: executor.running,
        ),
        Gauge(
            "plasm_jobs_queued",
            "Jobs admitted here and waiting for a slot.",
            read=lambda: executor.queued,
        ),
        Gauge("plasm_job_slots", "Jobs this node runs at once.", read=lambda: executor.slots),
        Gauge("plasm_receipts_stored", "Receipts in this node's store.", read=receipts_stored),
        Gauge(
            "plasm_overlay_connections",
            "Open overlay connections to peers (0 when the overlay is off).",
            read=lambda: len(overlay.connections()) if overlay is not None else 0,
        ),
        Gauge(
            "plasm_peers",
            "Peers in the DHT routing table (0 when the DHT is off).",
            read=lambda: len(dht.node.table) if dht is not None else 0,
        ),
        Gauge(
            "plasm_relay_reservations",
            "Reservations this node holds for private nodes, as a relay.",
            read=lambda: reach.relay.book.reservations if reach is not None else 0,
        ),
        Gauge(
            "plasm_relay_circuits",
            "Circuits open through this node, as a relay.",
            read=lambda: reach.relay.book.circuits if reach is not None else 0,
        ),
        Gauge(
            "plasm_relays_held",
            "Relays at which this node holds a reservation (it is private).",
            read=lambda: len(reach.relays) if reach is not None else 0,
        ),
    ):
        registry.register(gauge)
    return registry


def _process_start_time() -> float:
    """This process's start (Linux: from /proc, as Prometheus' clients read it)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - time.monotonic() + _MONOTONIC_AT_IMPORT


_MONOTONIC_AT_IMPORT = time.monotonic()


async def _readvertise(
    dht: DhtService,
    addresses: list[str],
    capabilities: Capabilities,
    relays: Sequence[RelayAddress] = (),
) -> None:
    with contextlib.suppress(DhtClosedError):
        await dht.advertise(addresses, capabilities, relays)


async def _seed_dht(dht: DhtService, entries: Sequence[str], log: EventLog) -> None:
    """Bootstrap through bootstrap entries added by a reload (the table keeps
    what answers; the routing table snapshot remembers it across restarts)."""
    loop = asyncio.get_running_loop()
    seeds = []
    for entry in entries:
        node_id, host, port = parse_bootstrap(entry)
        if node_id == dht.node_id:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as err:
                log.warning("bootstrap_failed", peer=entry, error=str(err))
                continue
            host = str(infos[0][4][0])
        seeds.append(Contact(node_id=node_id, host=host, port=port))
    if not seeds:
        return
    with contextlib.suppress(DhtClosedError):
        result = await dht.run_operation(lambda node, now: node.bootstrap(seeds, now))
        log.event(
            "reload_bootstrapped",
            seeds=len(seeds),
            peers=len(dht.node.table),
            rpcs=result.rpcs,
            failed_rpcs=result.failed_rpcs,
        )


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


def _offered_capabilities(worker: JobWorker | None, executor: JobExecutor) -> Capabilities:
    """What the peer record advertises. A node that takes no jobs from peers
    offers no job limits or slots, so it provides no capability class and
    automatic placement does not even offer it a job. (The worker's policy
    says: a SIGHUP may change remote.accept_jobs.)"""
    capabilities = local_capabilities(executor)
    if worker is not None and worker.policy.accept_jobs:
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
        why = _bind_error(address) or str(err).split(";")[0]
        raise StartupError(f"cannot listen on {address}: {why}") from err
    if port == 0 and not address.startswith("unix:"):
        why = _bind_error(address) or "address in use or not available"
        raise StartupError(f"cannot listen on {address}: {why}")
    return port


def _bind_error(address: str) -> str | None:
    """Why the OS refuses to bind `address` (gRPC's own message only says
    that it failed; its details go to C-core's unstructured log)."""
    if address.startswith("unix:"):
        return None
    try:
        host, port = parse_host_port(address)
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as err:
        return err.strerror or str(err)
    except ConfigError:
        return None
    return None


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


def reload_node(node: Node, load: Callable[[], Config], config_name: str) -> ReloadPlan | None:
    """Read the configuration and apply what can change; never raises.

    A configuration that does not load or validate changes nothing
    (`reload_failed`); keys that need a restart are named (`reload_ignored`).
    """
    log = node.log
    log.event("signal", action="reload", config=config_name)
    before = log.level
    try:
        plan = node.reload(load())
    except ConfigError as err:
        log.error("reload_failed", config=config_name, error=str(err))
        return None
    except Exception as err:  # noqa: BLE001 - a reload must never take the node down
        log.error("reload_failed", config=config_name, error=repr(err))
        return None
    after = log.level
    # Said at the more verbose of the two levels, so a reload that quietens
    # the log still reports itself.
    log.set_level(before if LEVELS[before] < LEVELS[after] else after)
    if plan.ignored:
        ignored: dict[str, Any] = {"keys": list(plan.ignored)}
        if plan.bootstrap_removed:
            ignored["bootstrap_removed"] = list(plan.bootstrap_removed)
        log.warning(
            "reload_ignored",
            detail="these settings keep their running values until plasmd restarts",
            **ignored,
        )
    reloaded: dict[str, Any] = {"config": config_name, "applied": list(plan.applied)}
    if plan.bootstrap_added:
        reloaded["bootstrap_added"] = list(plan.bootstrap_added)
    log.event("reloaded", **reloaded)
    log.set_level(after)
    return plan


async def _watchdog(notify: Notifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop: a loop that stops turning stops the pings."""
    while True:
        notify.watchdog()
        await asyncio.sleep(interval)
