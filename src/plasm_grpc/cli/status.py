"""`plasm info` (what the node is and can run) and `plasm status` (is it
healthy: the health check, uptime, jobs, peers, the DHT, metrics, warnings)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from plasm_grpc.api.client import ApiError, PlasmClient, connect
from plasm_grpc.api.views import NodeInfo
from plasm_grpc.cli.output import (
    EXIT_RPC,
    EXIT_USAGE,
    CliError,
    die,
    print_json,
    printable,
    say,
    say_styled,
    show_fields,
)

_REACHABILITY = {
    "PUBLIC": "public (peers can dial it)",
    "PRIVATE": "private (peers cannot dial it: NAT or firewall)",
}


def _short_relay(relay: str) -> str:
    """ "<node id>@<host:port>" with the node id cut to 16 characters, for a table."""
    node_id, _, address = relay.partition("@")
    return f"{node_id[:16]}@{address}"


def info_rows(info: NodeInfo) -> list[tuple[str, str]]:
    reachability = _REACHABILITY.get(info.reachability, "unknown")
    rows = [
        ("node id", info.node_id),
        ("listening", ", ".join(info.grpc_addresses)),
        ("started", info.started_at),
        (
            "platform",
            f"{info.arch} {info.os}, {info.cores} cores, {info.memory_bytes / 2**30:.1f} GiB",
        ),
        ("runtime", info.runtime),
        ("job slots", f"{info.free_job_slots} free of {info.total_job_slots}"),
        (
            "jobs",
            f"{info.jobs_running} running, {info.jobs_queued} queued, "
            f"{info.jobs_completed} completed since start",
        ),
        ("overlay", info.overlay_address or "off"),
        ("reachability", reachability if info.overlay_address else "-"),
        ("relays", ", ".join(_short_relay(r) for r in info.relays) or "-"),
        ("peers", str(len(info.connections))),
        ("receipts", f"{info.receipts_stored} stored"),
        ("modules", f"{info.cached_modules} cached"),
        ("max memory", f"{info.max_memory_bytes / 2**20:.0f} MiB per job"),
        ("max time", f"{info.max_timeout_ms / 1000:g} s per job"),
    ]
    return [(key, printable(value, 4096)) for key, value in rows]


def cmd_info(args: argparse.Namespace) -> int:
    try:
        info = connect(args.addr, args.timeout).node_info()
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json(info.json())
        return 0
    # Unboxed, so that a node id (64 hex) stays on one line at 80 columns.
    show_fields(
        f"plasmd {printable(info.version, 40)} at {args.addr}", info_rows(info), boxed=False
    )
    return 0


# -- status --------------------------------------------------------------------


def uptime_text(seconds: float) -> str:
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if not days:
        parts.append(f"{minutes}m")
    if not days and not hours:
        parts.append(f"{s}s")
    return " ".join(parts)


def metrics_target(value: str) -> tuple[str, int, str]:
    """`host:port`, or an http:// URL -> (host, port, path)."""
    rest = value.removeprefix("http://")
    address, _, path = rest.partition("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(
            f"--metrics takes host:port or http://host:port/metrics, got {value!r}", EXIT_USAGE
        )
    return host.strip("[]"), int(port), "/" + (path or "metrics")


def host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_metrics(value: str, timeout: float) -> dict[str, Any]:
    """GET the node's /metrics (no proxy: it listens on loopback)."""
    import http.client

    host, port, path = metrics_target(value)
    url = f"http://{host_port_text(host, port)}{path}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(16 * 1024 * 1024)
    except (OSError, http.client.HTTPException) as err:
        return {"url": url, "reachable": False, "error": str(err) or type(err).__name__}
    finally:
        connection.close()
    if response.status != 200:
        return {"url": url, "reachable": False, "error": f"HTTP {response.status}"}
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"url": url, "reachable": True, "samples": samples}


def node_status(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `plasm status` reports, as the --json object."""
    if args.metrics:
        metrics_target(args.metrics)  # a usage error before anything is asked
    client = connect(args.addr, args.timeout)
    try:
        return _gather_status(client, args)
    finally:
        client.close()


def _gather_status(client: PlasmClient, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"address": args.addr, "healthy": False, "warnings": []}
    warnings: list[str] = report["warnings"]
    try:
        report["health"] = client.health()
        info = client.node_info()
    except ApiError as err:
        report.setdefault("health", "UNREACHABLE")
        report["error"] = str(err)
        return report
    serving = report["health"] == "SERVING"
    if not serving:
        warnings.append(f"the node is {report['health']}: it is stopping or not ready")
    report.update(
        nodeId=info.node_id,
        version=info.version,
        startedAt=info.started_at,
        uptimeSeconds=round(max(0.0, time.time() - info.started_at_ns / 1e9), 1),
        grpcAddresses=list(info.grpc_addresses),
        overlayAddress=info.overlay_address,
        jobs={
            "running": info.jobs_running,
            "queued": info.jobs_queued,
            "completed": info.jobs_completed,
            "slots": info.total_job_slots,
            "freeSlots": info.free_job_slots,
        },
        receiptsStored=info.receipts_stored,
        cachedModules=info.cached_modules,
    )
    peers = {"connected": len(info.connections), "known": 0, "workers": 0}
    report["peers"] = peers
    if not info.overlay_address:
        report["dht"] = "off"
        warnings.append(
            "the overlay is off: jobs run only on this node and no peer can reach it "
            "(set overlay.listen)"
        )
    else:
        try:
            listed = client.list_peers()
        except ApiError as err:
            if err.reason == "ERROR_REASON_DHT_UNAVAILABLE":
                report["dht"] = "off"
                warnings.append(
                    "the DHT is off (dht.enabled = false): automatic placement finds no workers"
                )
            else:
                report["dht"] = "unknown"
                warnings.append(f"ListPeers failed: {err}")
        else:
            peers["known"] = len(listed)
            peers["workers"] = sum(1 for p in listed if p.total_slots > 0)
            report["dht"] = "on" if listed else "no peers"
            if not listed:
                warnings.append(
                    "no peers: add overlay.bootstrap entries (NODE_ID@host:port) and open "
                    "the overlay's UDP port, or wait for peers to find this node"
                )
    if info.jobs_queued:
        warnings.append(
            f"all {info.total_job_slots} job slots are busy and {info.jobs_queued} jobs wait"
        )
    if args.metrics:
        report["metrics"] = probe_metrics(args.metrics, min(args.timeout, 10.0))
        if not report["metrics"]["reachable"]:
            warnings.append(
                f"metrics: nothing answers at {report['metrics']['url']} "
                f"({report['metrics']['error']}); is metrics.listen set?"
            )
    else:
        report["metrics"] = None
    report["healthy"] = serving
    return report


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return "not checked (--metrics HOST:PORT)"
    if metrics["reachable"]:
        return f"{metrics['url']}: {metrics['samples']} samples"
    return f"{metrics['url']}: not answering"


def cmd_status(args: argparse.Namespace) -> int:
    report = node_status(args)
    if args.json:
        print_json(report)
        return 0 if report["healthy"] else EXIT_RPC
    if "nodeId" not in report:
        say_styled((f"plasmd at {args.addr}: {report['health']}", "bold red"), to_stderr=False)
        lines = str(report.get("error", "")).splitlines()
        say("\n".join(printable(line, 4096) for line in lines), to_stderr=False)
        return EXIT_RPC
    colour = "green" if report["healthy"] else "red"
    say_styled(
        (f"plasmd {printable(report['version'], 40)} at {args.addr}: ", "bold"),
        (report["health"], f"bold {colour}"),
        to_stderr=False,
    )
    jobs, peers = report["jobs"], report["peers"]
    rows = [
        ("node id", report["nodeId"]),
        ("uptime", f"{uptime_text(report['uptimeSeconds'])} (since {report['startedAt']})"),
        ("gRPC", ", ".join(report["grpcAddresses"])),
        ("overlay", f"udp {report['overlayAddress']}" if report["overlayAddress"] else "off"),
        (
            "jobs",
            f"{jobs['running']} running, {jobs['queued']} queued, {jobs['completed']} "
            f"completed since start ({jobs['freeSlots']} of {jobs['slots']} slots free)",
        ),
        ("receipts", f"{report['receiptsStored']} stored"),
        (
            "peers",
            f"{peers['connected']} connected, {peers['known']} in the DHT routing table "
            f"({peers['workers']} take jobs)",
        ),
        ("DHT", report["dht"]),
        ("metrics", _metrics_text(report["metrics"])),
    ]
    show_fields(None, [(k, printable(str(v))) for k, v in rows], boxed=False)
    for warning in report["warnings"]:
        say_styled(("warning: ", "bold yellow"), (printable(warning), ""), to_stderr=False)
    return 0 if report["healthy"] else EXIT_RPC


__all__ = ["cmd_info", "cmd_status", "node_status", "probe_metrics", "uptime_text"]
