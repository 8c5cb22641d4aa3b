"""What the gRPC API sees of the running node: its `NodeFacts`.

api and net do not import each other, so the views of the overlay, the DHT,
reachability and relays that GetNodeInfo and the DHT calls read are built
here, from the node's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from plasm_grpc.api.service import DhtPeer, DhtUnavailableError, NodeFacts, PeerLookup, PeerView
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.records import PeerRecord, WorkerRequirements
from plasm_grpc.core.reachability import Reachability
from plasm_grpc.daemon.config import Config
from plasm_grpc.daemon.reachability import ReachabilityFollower
from plasm_grpc.jobs.events import JobEventBus
from plasm_grpc.net import DhtClosedError, DhtService, OverlayEndpoint, ReachabilityService
from plasm_grpc.remote.router import JobRouter


def node_facts(
    config: Config,
    *,
    addresses: Sequence[str],
    overlay: OverlayEndpoint | None,
    dht: DhtService | None,
    reachability: ReachabilityService | None,
    reach: ReachabilityFollower | None,
    events: JobEventBus,
    router: JobRouter,
) -> NodeFacts:
    return NodeFacts(
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
    )


@dataclass(frozen=True, slots=True)
class _DhtView:
    """The api's DhtView over the DhtService."""

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


def _reachability_view(service: ReachabilityService | None) -> Callable[[], Reachability]:
    if service is None:
        return lambda: Reachability.UNKNOWN
    return lambda: service.status
