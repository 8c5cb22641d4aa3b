"""How the node joins the overlay network and stays in it.

Binds the overlay, starts the DHT from overlay.bootstrap (and the saved
routing table), publishes the node's own peer record and keeps its free job
slots fresh, keeps bootstrap peers connected when the DHT is off, and seeds
the DHT from bootstrap entries a reload adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Sequence

from plasm_grpc.api.facts import local_capabilities
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.node import DhtSettings
from plasm_grpc.core.dht.records import Capabilities
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.daemon.config import Config, parse_bootstrap, parse_host_port
from plasm_grpc.daemon.errors import StartupError
from plasm_grpc.jobs.executor import JobExecutor
from plasm_grpc.logs import EventLog
from plasm_grpc.net import (
    DhtClosedError,
    DhtService,
    DhtServiceSettings,
    OverlayEndpoint,
    OverlaySettings,
)
from plasm_grpc.remote.worker import JobWorker

_CAPABILITIES_REFRESH_S = 60.0


async def start_overlay(config: Config, key: NodeKey, log: EventLog) -> OverlayEndpoint | None:
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


async def start_dht(
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


def advertised_addresses(overlay: OverlayEndpoint) -> list[str]:
    """The overlay address for the peer record; none when bound to a wildcard.

    A node listening on 0.0.0.0 or :: cannot name its own reachable address
    here; peers still learn it from the connection it answers them on.
    """
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(overlay.host).is_unspecified:
            return []
    return [host_port(overlay.host, overlay.port)]


def offered_capabilities(worker: JobWorker | None, executor: JobExecutor) -> Capabilities:
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


async def advertise(
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


async def keep_connected(
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


async def seed_dht(dht: DhtService, entries: Sequence[str], log: EventLog) -> None:
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
