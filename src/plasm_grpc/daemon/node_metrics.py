"""The metrics /metrics exposes: the live gauges read from the running node
at each scrape, and every label series of the process-wide instruments
(plasm_grpc.metrics) touched from the start, so rate() sees the first job."""

from __future__ import annotations

import os
import time
from pathlib import Path

from plasm_grpc import __version__, metrics
from plasm_grpc.core.dht.node import OperationKind
from plasm_grpc.core.jobs.session import AttemptResult
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.daemon.reachability import ReachabilityFollower
from plasm_grpc.jobs.executor import JobExecutor
from plasm_grpc.metrics import Gauge, Registry
from plasm_grpc.net import DhtService, OverlayEndpoint

_RECEIPT_COUNT_TTL_S = 1.0


def touch_series() -> None:
    """Expose every label of the instruments at 0 before anything is counted."""
    for outcome in Outcome:
        metrics.JOBS.touch(outcome.label)
    for result in AttemptResult:
        metrics.REMOTE_ATTEMPTS.touch(result.name.lower())
    for kind in OperationKind:
        metrics.DHT_LOOKUPS.touch(kind.value)
    for placement in ("local", "remote"):
        metrics.JOB_DURATION.touch(placement)


def node_gauges(
    executor: JobExecutor,
    overlay: OverlayEndpoint | None,
    dht: DhtService | None,
    runtime: str,
    reach: ReachabilityFollower | None = None,
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
