"""`plasm peers`, `plasm peer` and `plasm workers`: the nodes this node knows,
one looked up by id, and the workers that can run a job.

Tables fit 80 columns without cutting what a user copies from them: a node
id shows its first 12 hex characters (`plasm peer ID` and `--json` give it
whole) and an address is never shortened; only what a peer runs folds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from plasm_grpc.api.client import ApiError, PlasmClient, connect
from plasm_grpc.api.views import Peer
from plasm_grpc.cli.output import (
    die,
    print_json,
    printable,
    say,
    short_node_id,
    show_fields,
    show_grid,
)

PEER_HEADERS = ("node id", "address", "rtt ms", "runs", "memory", "slots")
FOLD = ("runs",)  # the only column that folds; ids and addresses are never cut


def _client(args: argparse.Namespace) -> PlasmClient:
    return connect(args.addr, args.timeout)


def peer_row(peer: Peer) -> tuple[str, ...]:
    rtt = f"{peer.rtt_us / 1000:.2f}" if peer.connected and peer.rtt_us else "-"
    if not peer.has_record:
        unknown = "?"
        return (short_node_id(peer.node_id), printable(peer.address), rtt, *([unknown] * 3))
    return (
        short_node_id(peer.node_id),
        printable(peer.address),
        rtt,
        printable(f"{peer.runtime} {peer.arch}"),
        f"{peer.max_memory_bytes / 2**20:.0f} MiB",
        f"{peer.free_slots}/{peer.total_slots}",
    )


def show_peers(title: str, peers: Sequence[Peer]) -> None:
    show_grid(title, PEER_HEADERS, [peer_row(p) for p in peers], fold=FOLD)


def cmd_peers(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.connections:
        return _show_connections(client, args)
    try:
        peers = client.list_peers()
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json({"peers": [p.json() for p in peers]})
        return 0
    show_peers("DHT routing table (nearest first)", peers)
    if not peers:
        say("no peers known yet (add overlay.bootstrap peers, or wait for them)")
    return 0


def _show_connections(client: PlasmClient, args: argparse.Namespace) -> int:
    try:
        info = client.node_info()
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json(
            {
                "overlayAddress": info.overlay_address,
                "peers": [c.json() for c in info.connections],
            }
        )
        return 0
    show_grid(
        f"overlay connections of {short_node_id(info.node_id)} "
        f"({printable(info.overlay_address) or 'overlay off'})",
        ("node id", "address", "direction", "rtt ms"),
        [
            (
                short_node_id(c.node_id),
                printable(c.address),
                printable(c.direction),
                f"{c.rtt_us / 1000:.2f}" if c.rtt_us else "-",
            )
            for c in info.connections
        ],
    )
    if not info.connections:
        say("no open overlay connections (add overlay.bootstrap peers)")
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    try:
        found = _client(args).find_peer(args.node_id)
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json(found.json())
        return 0
    show_peers(
        f"found in {found.duration_us / 1000:.1f} ms, {found.hops} hops, {found.rpcs} RPCs",
        [found.peer],
    )
    peer = found.peer
    show_fields(
        None,
        [
            ("node id", printable(peer.node_id, 64)),
            ("record", f"seq {peer.record_seq}, expires {printable(peer.record_expires_at)}"),
            ("addresses", ", ".join(printable(a) for a in peer.record_addresses) or "-"),
        ],
        to_stderr=True,
        boxed=False,
    )
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        found = _client(args).find_workers(
            wasi_version=args.wasi or "",
            min_memory_bytes=args.memory,
            arch=args.arch or "",
            min_free_slots=args.min_free_slots,
            limit=args.limit,
        )
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json(
            {
                "capabilityClass": found.capability_class,
                "workers": [p.json() for p in found.workers],
            }
        )
        return 0
    show_peers(f"workers for {printable(found.capability_class)} (best first)", found.workers)
    if not found.workers:
        say("no worker meets these requirements (none found through the DHT)")
    return 0


__all__ = ["cmd_peer", "cmd_peers", "cmd_workers", "peer_row", "show_peers"]
