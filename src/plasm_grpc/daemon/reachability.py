"""Following the node's reachability (docs/reachability.md).

A public node serves in the DHT and relays for others; a private one is a
DHT client, holds relay reservations and advertises its relays instead of
an address. `follow_reachability` installs the relay service and the
`ReachabilityFollower` that switches between the two as
net.ReachabilityService decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from plasm_grpc.core.dht.records import Capabilities, RelayAddress
from plasm_grpc.core.reachability import Reachability
from plasm_grpc.daemon.config import Config
from plasm_grpc.daemon.peering import advertised_addresses
from plasm_grpc.daemon.settings import relay_settings
from plasm_grpc.daemon.tasks import spawn
from plasm_grpc.logs import EventLog
from plasm_grpc.net import DhtClosedError, DhtService, OverlayEndpoint, ReachabilityService
from plasm_grpc.net.relay import RelayService


def follow_reachability(
    config: Config,
    log: EventLog,
    *,
    overlay: OverlayEndpoint,
    dht: DhtService,
    reachability: ReachabilityService,
    capabilities: Callable[[], Capabilities],
    tasks: list[asyncio.Task[None]],
) -> ReachabilityFollower:
    """Install the relay service on `overlay` and follow `reachability`'s changes."""
    relay = RelayService(overlay, settings=relay_settings(config), events=log)
    relay.install()
    follower = ReachabilityFollower(
        config=config,
        log=log,
        overlay=overlay,
        dht=dht,
        relay=relay,
        capabilities=capabilities,
        tasks=tasks,
    )
    reachability.on_change(follower.follow)
    return follower


@dataclass(slots=True, kw_only=True)
class ReachabilityFollower:
    """Switches the DHT mode, relay serving and reservations on each change
    of reachability. UNKNOWN keeps whatever was decided last."""

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
        return [] if self.private and self.relays else advertised_addresses(self.overlay)

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
        return spawn(self.tasks, work, self.log, "reachability_task_failed")

    async def close(self) -> None:
        self.closing = True
        if self.keeping is not None:
            self.keeping.cancel()
            await asyncio.gather(self.keeping, return_exceptions=True)
        await self.relay.close()


async def _readvertise(
    dht: DhtService,
    addresses: list[str],
    capabilities: Capabilities,
    relays: Sequence[RelayAddress] = (),
) -> None:
    with contextlib.suppress(DhtClosedError):
        await dht.advertise(addresses, capabilities, relays)
