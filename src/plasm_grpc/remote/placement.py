"""Finding and ranking the workers a job may be offered to.

`WorkerFinder.search` answers the session's Search: for a job that names a
peer, that peer (through an open connection, or its record in the DHT); for
automatic placement, the providers of the job's capability class (a DHT
lookup cached for `worker_cache_s`, "none found" for `empty_cache_s`). Each
record becomes a `Candidate` this node can dial: an address it advertises,
its relays when it is behind a NAT, or the contact the DHT knows. Candidates
are ranked by `core.jobs.placement.rank`.

It also keeps what filtering and ranking need to know about workers: our
jobs in flight on each, and the ones distrusted for a while because a result
they returned did not check out.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.address import split_host_port
from plasm_grpc.core.dht.records import (
    DEFAULT_WASI_VERSION,
    PeerRecord,
    RecordError,
    WorkerRequirements,
    requirement_class,
)
from plasm_grpc.core.jobs.admission import release_one
from plasm_grpc.core.jobs.placement import Candidate, PlacementMode, rank
from plasm_grpc.logs import EventLog
from plasm_grpc.net import DhtClosedError, DhtService, OverlayEndpoint
from plasm_grpc.net.relay import RelayService
from plasm_grpc.remote.outbound import OutboundJob

__all__ = ["Links", "SearchError", "WorkerFinder"]

_WORKERS_LOOKED_UP: Final = 20


@dataclass(frozen=True, slots=True)
class Links:
    """How this node reaches peers when a search runs."""

    overlay: OverlayEndpoint
    dht: DhtService
    relay: RelayService | None  # reaches workers that advertise relays instead of an address


class SearchError(Exception):
    """The search could not be made (not: it found nobody); the message says why."""


class WorkerFinder:
    """Candidates for a job, best first, and what this node knows about workers."""

    def __init__(self, *, own_node_id: str, clock: Callable[[], float], log: EventLog) -> None:
        self.own_node_id = own_node_id
        self.log = log
        self._clock = clock
        self._in_flight: dict[str, int] = {}  # our jobs offered or running there
        self._distrusted: dict[str, float] = {}  # until when
        self._workers: dict[str, tuple[float, list[PeerRecord]]] = {}  # expiry, records

    async def search(
        self,
        job: OutboundJob,
        links: Links,
        *,
        timeout_s: float,
        cache_s: float,
        empty_cache_s: float,
    ) -> tuple[list[Candidate], str]:
        """Ranked candidates, and what to say if there are none."""
        try:
            if job.placement.mode is PlacementMode.PEER:
                found = await self._find_peer(job.placement.peer_node_id, links, timeout_s)
            else:
                found = await self._find_workers(job, links, timeout_s, cache_s, empty_cache_s)
        except TimeoutError:
            raise SearchError(f"the DHT lookup did not finish in {timeout_s:.1f} s") from None
        except DhtClosedError:
            raise SearchError("the node is shutting down") from None
        except RecordError as err:
            raise SearchError(str(err)) from err
        candidates, detail = found
        return self._rank(candidates, links.overlay), detail

    # -- what this node knows about workers --------------------------------------------------

    def count(self, node_id: str) -> None:
        """One more of our jobs is offered to or running on `node_id`."""
        self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1

    def uncount(self, node_id: str) -> None:
        release_one(self._in_flight, node_id)

    def distrust(self, worker: str, job_id: str, problem: str, *, for_s: float) -> None:
        """Offer `worker` nothing for `for_s`: a result it returned did not check out."""
        self._distrusted[worker] = self._clock() + for_s
        self.forget(worker)
        self.log.warning(
            "worker_distrusted", worker=worker, job_id=job_id, problem=problem, for_s=for_s
        )

    def forget(self, node_id: str) -> None:
        """Drop a worker that failed from the cached lookups (found again if it recovers)."""
        for key, (expires, records) in list(self._workers.items()):
            kept = [r for r in records if r.node_id != node_id]
            if len(kept) != len(records):
                self._workers[key] = (expires, kept)

    def is_distrusted(self, node_id: str) -> bool:
        until = self._distrusted.get(node_id)
        if until is None:
            return False
        if until < self._clock():
            del self._distrusted[node_id]
            return False
        return True

    # -- the lookups -------------------------------------------------------------------------

    async def _find_peer(
        self, node_id: str, links: Links, timeout: float
    ) -> tuple[list[Candidate], str]:
        if self.is_distrusted(node_id):
            left = self._distrusted[node_id] - self._clock()
            return [], (
                f"peer {node_id} is not trusted for another {left:.0f} s: a result it "
                "returned did not check out"
            )
        connection = links.overlay.connection_to(node_id)
        if connection is not None:
            host, port = str(connection.address[0]), int(connection.address[1])
            return [
                Candidate(node_id=node_id, host=host, port=port, free_slots=1, total_slots=1)
            ], ""
        found = await links.dht.find_peer(node_id, timeout=timeout)
        if found.record is None:
            return [], f"peer {node_id} was not found in the DHT ({found.rpcs} RPCs)"
        candidate = _candidate(found.record, links)
        if candidate is None:
            return [], f"peer {node_id} advertises no address this node can dial"
        return [candidate], ""

    async def _find_workers(
        self,
        job: OutboundJob,
        links: Links,
        timeout: float,
        cache_s: float,
        empty_cache_s: float,
    ) -> tuple[list[Candidate], str]:
        placement = job.placement
        requirements = WorkerRequirements(
            wasi_version=placement.wasi_version or DEFAULT_WASI_VERSION,
            min_memory_bytes=max(placement.min_memory_bytes, job.request.limits.max_memory_bytes),
            arch=placement.arch,
        )
        name = requirement_class(requirements)
        cache_key = f"{name};arch={placement.arch}"
        now = self._clock()
        cached = self._workers.get(cache_key)
        if cached is not None and cached[0] > now:
            records = cached[1]
        else:
            records = list(
                await links.dht.find_workers(
                    requirements, limit=_WORKERS_LOOKED_UP, timeout=timeout
                )
            )
            ttl = cache_s if records else empty_cache_s
            self._workers[cache_key] = (self._clock() + ttl, records)
        candidates = []
        for record in records:
            if record.node_id == self.own_node_id or self.is_distrusted(record.node_id):
                continue
            candidate = _candidate(record, links)
            if candidate is not None:
                candidates.append(candidate)
        return candidates, f"no worker other than this node provides {name}"

    def _rank(self, candidates: Sequence[Candidate], overlay: OverlayEndpoint) -> list[Candidate]:
        rtt = {p.node_id: p.rtt for p in overlay.connections() if p.rtt is not None}
        return rank(candidates, in_flight=self._in_flight, rtt=rtt, salt=os.urandom(8))


def _candidate(record: PeerRecord, links: Links) -> Candidate | None:
    caps = record.capabilities
    candidate = functools.partial(
        Candidate,
        node_id=record.node_id,
        free_slots=caps.free_job_slots,
        total_slots=caps.total_job_slots,
    )
    for address in record.content.addresses:
        with contextlib.suppress(ValueError):
            host, port = split_host_port(address)
            return candidate(host=host, port=port)
    if record.content.relays and links.relay is not None:
        # Behind a NAT: its relays, not a contact from before it knew that.
        return candidate(host="", port=0, relays=record.content.relays)
    for peer in links.dht.known_peers():  # a node bound to a wildcard names no address
        if peer.contact.node_id == record.node_id:
            return candidate(host=peer.contact.host, port=peer.contact.port)
    return None
