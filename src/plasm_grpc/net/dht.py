"""The DHT service: an asyncio pump around one sans-I/O `DhtNode` (issue 4).

Shaped like aioquic's asyncio/protocol.py around its QuicConnection: every
input goes into the node (`handle_request` from an overlay handler,
`handle_response` / `handle_failure` from an RPC task, `handle_timer` from the
timer task, the API calls) and after each one `_pump()` pulls its output:
`requests_to_send()` become RPC tasks over the `OverlayEndpoint`, and
`next_event()` becomes a JSON log line and wakes whoever awaits an operation.

**Exactly one answer per RPC.** Each `OutgoingRequest` is answered by one
`handle_response` or `handle_failure`, whatever happens: a dial that fails, a
timeout (`rpc_timeout`, dial and call together), a malformed reply, the peer's
ERROR (reported as a `Refused`: the peer is alive, so it is not evicted for
it), or cancellation at shutdown (even of a task that never ran). At most
`max_rpcs_in_flight` run at once; the rest wait in a queue, in order.

**Inbound.** The overlay authenticates the sender; its contact is the node id
it proved and the address its connection comes from (a node's overlay socket
both listens and dials, so that is its listening address). A request the node
refuses or that does not decode is answered with an overlay ERROR (a
`DhtRefusedError`, no handler failure), so the requester sees
`RemoteCallError`; other peers are unaffected. Every request is charged to its
sender's rate limit (`DhtNode.admit`) before it is decoded, so a flood of
malformed ones is limited like any other.

**Warm restarts.** The routing table is saved to `<data_dir>/dht_peers.pb` (a
`RoutingTableSnapshot`, written atomically) every `snapshot_interval` when it
changed and at `close()`; `start()` reads it back and uses the saved contacts
as bootstrap seeds only: each re-enters the table when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from plasm_grpc import metrics
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.keys import Key, distance
from plasm_grpc.core.dht.messages import METHODS, Refused, Response
from plasm_grpc.core.dht.node import (
    DhtNode,
    DhtSettings,
    Event,
    OperationFinished,
    OperationKind,
    OutgoingRequest,
    PeerAdded,
    PeerEvicted,
    PeerRejected,
    RateLimited,
    RecordRejectedEvent,
    RecordStored,
)
from plasm_grpc.core.dht.records import (
    Capabilities,
    PeerRecord,
    RecordCodec,
    RelayAddress,
    WorkerRequirements,
    class_key,
    meets,
    requirement_class,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.logs import EventLog
from plasm_grpc.net.dht_codec import (
    DhtCodecError,
    ProtobufRecordCodec,
    decode_request_from,
    decode_response,
    decode_snapshot,
    encode_request,
    encode_response,
    encode_snapshot,
    method_of,
)
from plasm_grpc.net.endpoint import OverlayEndpoint
from plasm_grpc.net.errors import OverlayError, RemoteCallError, RequestRefusedError
from plasm_grpc.net.rpc import Handler

__all__ = [
    "SNAPSHOT_FILE",
    "DhtClosedError",
    "DhtRefusedError",
    "DhtService",
    "DhtServiceSettings",
    "KnownPeer",
]

SNAPSHOT_FILE: Final = "dht_peers.pb"
Address = tuple[str, int] | None
"""Where an RPC's answer came from (host, port), when it came."""
_MAX_PUMP_ROUNDS: Final = 100_000
"""A bound on the rounds of one `_pump` call. A round ends with new output to
act on only when the node emitted events (their handlers may start operations)
or, at shutdown, when queued requests were failed (each failure may start
another request); this bound stops a node that kept doing so forever."""


class DhtClosedError(OverlayError):
    """The DHT service is closed (or closing): no operation can run."""


class DhtRefusedError(RequestRefusedError):
    """Raised by a DHT handler so the overlay answers the request with an ERROR."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtServiceSettings:
    node: DhtSettings = field(default_factory=DhtSettings)
    rpc_timeout: float = 5.0
    """Seconds for one outgoing RPC, dialling included."""
    max_rpcs_in_flight: int = 64
    bootstrap_retry_interval: float = 10.0
    """Seconds between bootstrap attempts while the routing table is empty."""
    snapshot_interval: float = 60.0
    """Seconds between routing table saves (only when it changed)."""
    rejoin_after: tuple[float, ...] = (2.0, 5.0, 15.0, 60.0, 300.0)
    """Seconds after joining at which the own-id lookup (and the refresh of
    farther buckets) runs again, so nodes that joined at the same time find
    each other without waiting for a bucket refresh."""

    def __post_init__(self) -> None:
        if min(self.rpc_timeout, self.bootstrap_retry_interval, self.snapshot_interval) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if self.max_rpcs_in_flight < 1:
            raise ValueError("max_rpcs_in_flight must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownPeer:
    """A routing table entry, the newest record known for it, and whether an
    overlay connection to it is open."""

    contact: Contact
    record: PeerRecord | None
    connected: bool


class DhtService:
    """The DHT of one node over its `OverlayEndpoint` (see the module docstring).

    Construct it after `endpoint.start()`, then `await start(bootstrap)`;
    `await close()` before closing the endpoint.
    """

    def __init__(
        self,
        endpoint: OverlayEndpoint,
        key: NodeKey,
        *,
        events: EventLog | None = None,
        settings: DhtServiceSettings | None = None,
        data_dir: Path | None = None,
        codec: RecordCodec | None = None,
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if endpoint.port == 0:
            raise OverlayError("start the overlay endpoint before the DHT service")
        if key.node_id != endpoint.node_id:
            raise ValueError("the DHT key is not the overlay endpoint's identity")
        self._endpoint = endpoint
        self._events = events if events is not None else endpoint.events
        self.settings = settings if settings is not None else DhtServiceSettings()
        self._snapshot_path = data_dir / SNAPSHOT_FILE if data_dir is not None else None
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self.node = DhtNode(
            Contact(node_id=key.node_id, host=endpoint.host, port=endpoint.port),
            key=key,
            codec=codec if codec is not None else ProtobufRecordCodec(),
            randbytes=randbytes,
            now=clock(),
            settings=self.settings.node,
        )
        self._queue: deque[OutgoingRequest] = deque()
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        self._unanswered: set[int] = set()
        """Ids of the launched RPCs the node has had no answer for yet."""
        self._waiters: dict[int, asyncio.Future[OperationFinished]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._advertised: tuple[tuple[str, ...], tuple[RelayAddress, ...], Capabilities] | None = (
            None
        )
        self._publish_ops: set[int] = set()
        self._publish_pending = False
        """The last publication reached nobody: publish again once a peer appears."""
        self._bootstrapping = False
        self._saved: frozenset[Contact] | None = None
        self._snapshot_lock = asyncio.Lock()
        """Held for a whole save, write included: one writer at a time, in order."""
        self._seeds: list[Contact] = []
        self._started = False
        self._closing = False
        self._pumping = False
        for method in METHODS.values():
            endpoint.handle(method, self._handler(method))

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.node_id

    async def start(self, bootstrap: Iterable[Contact] = ()) -> None:
        """Load the saved table, then bootstrap (from `bootstrap` and the saved
        contacts), retrying while the table is empty. Returns at once."""
        if self._started:
            raise OverlayError("the DHT service is already started")
        self._started = True
        seeds = {c.node_id: c for c in bootstrap if c.node_id != self.node_id}
        for contact in await self._load_snapshot():
            seeds.setdefault(contact.node_id, contact)
        self._seeds = list(seeds.values())
        self._events.event(
            "dht_started",
            node_id=self.node_id,
            bootstrap_peers=len(self._seeds),
            snapshot=str(self._snapshot_path or ""),
        )
        self._background = [
            self._loop.create_task(self._timer_loop(), name="dht-timer"),
            self._loop.create_task(self._bootstrap_loop(), name="dht-bootstrap"),
            self._loop.create_task(self._snapshot_loop(), name="dht-snapshot"),
        ]

    async def close(self) -> None:
        """Stop every task, fail the RPCs and operations in flight, save the table."""
        if self._closing:
            return
        self._closing = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for task in list(self._rpc_tasks):
            task.cancel()
        await asyncio.gather(*self._rpc_tasks, return_exceptions=True)
        self._pump()  # fails whatever is still queued (the node is closing)
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(DhtClosedError("the DHT service closed"))
        self._waiters.clear()
        await self.save_snapshot()
        self._events.event(
            "dht_stopped", level="debug", node_id=self.node_id, peers=len(self.node.table)
        )

    # -- operations ----------------------------------------------------------------------

    async def run_operation(self, start: Callable[[DhtNode, float], int]) -> OperationFinished:
        """Start an operation (`start(node, now)` returns its id) and await its end."""
        (result,) = await self._run_all(lambda node, now: [start(node, now)])
        return result

    async def find_node(self, target: Key) -> OperationFinished:
        return await self.run_operation(lambda node, now: node.find_node(target, now))

    async def get_record(self, node_id: str) -> OperationFinished:
        return await self.run_operation(lambda node, now: node.get_record(node_id, now))

    async def get_providers(self, key: Key) -> OperationFinished:
        return await self.run_operation(lambda node, now: node.get_providers(key, now))

    async def advertise(
        self,
        addresses: Sequence[str],
        capabilities: Capabilities,
        relays: Sequence[RelayAddress] = (),
    ) -> list[OperationFinished]:
        """Sign and store this node's record and provider entries; await the stores.

        The node re-signs and republishes it every `republish_interval`, and
        as soon as it has peers when a publication found nobody to store at
        (a node advertising before its bootstrap finished, or a first node).
        """
        self._advertised = (tuple(addresses), tuple(relays), capabilities)
        return await self._run_all(self._start_publish)

    def update_capabilities(self, capabilities: Capabilities) -> None:
        """Advertise `capabilities` from the next republish on (no RPC now)."""
        if self._advertised is not None:
            self._advertised = (*self._advertised[:2], capabilities)
        self.node.update_capabilities(capabilities)

    def _start_publish(self, node: DhtNode, now: float) -> list[int]:
        assert self._advertised is not None
        self._publish_pending = False
        addresses, relays, capabilities = self._advertised
        operations = node.advertise(addresses, capabilities, now, relays)
        self._publish_ops.update(operations)
        return operations

    def _republish(self) -> None:
        if self._closing or self._advertised is None:
            return
        self._start_publish(self.node, self._clock())
        self._pump()

    async def find_peer(self, node_id: str, *, timeout: float) -> OperationFinished:
        """Look `node_id`'s peer record up (`record` is None if nobody holds
        it); raises TimeoutError past `timeout` seconds."""
        async with asyncio.timeout(timeout):
            return await self.get_record(node_id)

    async def _run_all(
        self, start: Callable[[DhtNode, float], list[int]]
    ) -> list[OperationFinished]:
        if self._closing:
            raise DhtClosedError("the DHT service is closed")
        operations = start(self.node, self._clock())
        waiters = [self._loop.create_future() for _ in operations]
        self._waiters.update(zip(operations, waiters, strict=True))
        try:
            self._pump()  # an operation with nobody to ask finishes at once
            return list(await asyncio.gather(*waiters))
        finally:
            for operation in operations:
                self._waiters.pop(operation, None)

    def set_client_mode(self, client: bool, *, reason: str) -> None:
        """Act as a DHT client (this node is not reachable) or a full node again;
        logs `dht_client_mode` when the mode changes (docs/dht.md, "Client mode")."""
        if self.node.set_client_mode(client):
            self._events.event(
                "dht_client_mode", client=client, reason=reason, peers=len(self.node.table)
            )
            self._pump()

    # -- the api's DhtView ---------------------------------------------------------------

    def known_peers(self) -> list[KnownPeer]:
        """The routing table, nearest first, with records and connection state."""
        peers = []
        own = self.node.contact.key
        for contact in sorted(self.node.table.contacts(), key=lambda c: distance(c.key, own)):
            peers.append(
                KnownPeer(
                    contact=contact,
                    record=self.node.peer_record(contact.node_id),
                    connected=self._endpoint.connection_to(contact.node_id) is not None,
                )
            )
        return peers

    async def find_workers(
        self, requirements: WorkerRequirements, *, limit: int, timeout: float
    ) -> list[PeerRecord]:
        """Peer records of nodes meeting `requirements`, best first (most free
        job slots, then the lowest RTT among connected peers, then node id);
        this node's own record too if it qualifies. Raises TimeoutError."""
        if limit < 1:
            return []
        key = class_key(requirement_class(requirements))
        async with asyncio.timeout(timeout):
            result = await self.get_providers(key)
        candidates: dict[str, PeerRecord] = {}
        own = self.node.own_record
        for record in (*result.providers, *((own,) if own is not None else ())):
            held = candidates.get(record.node_id)
            if held is None or record.seq > held.seq:
                candidates[record.node_id] = record
        now = self._clock()
        qualified = [
            r
            for r in candidates.values()
            if r.content.expires_at > now and meets(r.capabilities, requirements)
        ]
        qualified.sort(key=self._rank)
        return qualified[:limit]

    def _rank(self, record: PeerRecord) -> tuple[int, float, str]:
        rtt = 0.0 if record.node_id == self.node_id else math.inf
        connection = self._endpoint.connection_to(record.node_id)
        if connection is not None and connection.rtt is not None:
            rtt = connection.rtt
        return (-record.capabilities.free_job_slots, rtt, record.node_id)

    # -- inbound RPCs --------------------------------------------------------------------

    def _handler(self, method: str) -> Handler:
        async def serve(peer: str, payload: bytes) -> bytes:
            return self._serve(method, peer, payload)

        return serve

    def _serve(self, method: str, peer: str, payload: bytes) -> bytes:
        if self._closing:
            raise DhtRefusedError("the node is shutting down")
        # Charged before decoding, so malformed requests count against the peer too.
        admitted = self.node.admit(peer, self._clock())
        self._pump()  # the RateLimited event
        if not admitted:
            raise DhtRefusedError("rate limited")
        try:
            request, client = decode_request_from(method, payload)
        except DhtCodecError as err:
            raise DhtRefusedError(f"malformed request: {err}") from err
        connection = self._endpoint.connection_to(peer)
        if connection is None:
            raise DhtRefusedError("the connection closed")
        sender = Contact(
            node_id=peer, host=str(connection.address[0]), port=int(connection.address[1])
        )
        # A peer reached through a relay cannot be dialled: never a table entry.
        response = self.node.handle_request(
            sender, request, self._clock(), admitted=True, client=client or connection.relayed
        )
        self._pump()
        if isinstance(response, Refused):
            raise DhtRefusedError(response.reason)
        return encode_response(response)

    # -- outbound RPCs -------------------------------------------------------------------

    def _pump(self) -> None:
        """Pull the node's output: queue its requests, start RPCs, handle events.

        Re-entrant calls (an event handler that starts an operation) just
        return: the outer loop picks up their output.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            for _ in range(_MAX_PUMP_ROUNDS):
                self._queue.extend(self.node.requests_to_send())
                failed = False
                while self._closing and self._queue:
                    failed = True
                    self.node.handle_failure(self._queue.popleft().rpc, self._clock())
                while self._queue and len(self._rpc_tasks) < self.settings.max_rpcs_in_flight:
                    self._launch(self._queue.popleft())
                handled = False
                while (event := self.node.next_event()) is not None:
                    handled = True
                    self._on_event(event)
                if not failed and not handled:
                    break
        finally:
            self._pumping = False

    def _launch(self, out: OutgoingRequest) -> None:
        self._unanswered.add(out.rpc)
        task = self._loop.create_task(self._call(out), name=f"dht-rpc-{out.rpc}")
        self._rpc_tasks.add(task)
        task.add_done_callback(lambda task: self._rpc_done(task, out.rpc))

    def _rpc_done(self, task: asyncio.Task[None], rpc: int) -> None:
        self._rpc_tasks.discard(task)
        if rpc in self._unanswered:
            # Cancelled before it ever ran (or it died unanswered): still one answer.
            self._answer(rpc, None)
        elif not self._closing:
            self._pump()  # a free slot: start the next queued RPC

    def _answer(self, rpc: int, response: Response | None, answered_from: Address = None) -> None:
        """Give the node its one answer for `rpc` (None: a failure), then pump."""
        if rpc not in self._unanswered:
            return
        self._unanswered.discard(rpc)
        if response is None:
            self.node.handle_failure(rpc, self._clock())
        else:
            self.node.handle_response(rpc, response, self._clock(), answered_from=answered_from)
        self._pump()

    async def _call(self, out: OutgoingRequest) -> None:
        try:
            response, answered_from = await self._exchange(out)
        except asyncio.CancelledError:
            self._answer(out.rpc, None)
            raise
        self._answer(out.rpc, response, answered_from)

    async def _exchange(self, out: OutgoingRequest) -> tuple[Response | None, Address]:
        """Dial and call; the decoded answer, a `Refused` for the peer's ERROR
        (it is alive: refused, overloaded), or None for a failure, and the
        address the answer came from.

        `connect` reuses any open connection to the node id, whatever address
        the contact named, so the answer's address is the connection's: a
        referrer lying about a real node's address cannot make it stick.
        """
        contact = out.contact
        method = method_of(out.request)
        address: Address = None
        try:
            async with asyncio.timeout(self.settings.rpc_timeout):
                connection = await self._endpoint.connect(
                    contact.host, contact.port, contact.node_id
                )
                if not connection.relayed:  # "relay/<id>" is no address to store
                    address = (str(connection.address[0]), int(connection.address[1]))
                payload = await connection.request(
                    method,
                    encode_request(out.request, client=out.client),
                    timeout=self.settings.rpc_timeout,
                )
            return decode_response(out.request, payload), address
        except RemoteCallError as err:
            return Refused(reason=str(err)), address
        except (TimeoutError, OverlayError, DhtCodecError, OSError) as err:
            error = str(err) or type(err).__name__
            self._events.event(
                "dht_rpc_failed", level="debug", peer=contact.node_id, method=method, error=error
            )
        except Exception as err:  # noqa: BLE001 - a bug; the RPC still gets its one answer
            self._events.error(
                "dht_rpc_error", peer=contact.node_id, method=method, error=repr(err)
            )
        return None, None

    # -- events --------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        log = self._events
        match event:
            case PeerAdded(contact=c):
                log.event("dht_peer_added", peer=c.node_id, address=_address(c))
                if self._publish_pending and not self._bootstrapping:
                    self._publish_pending = False
                    self._loop.call_soon(self._republish)
            case PeerEvicted(contact=c, reason=reason):
                log.event("dht_peer_evicted", peer=c.node_id, address=_address(c), reason=reason)
            case PeerRejected(contact=c, reason=reason):
                log.event("dht_peer_rejected", peer=c.node_id, address=_address(c), reason=reason)
            case OperationFinished():
                self._finished(event)
            case RecordStored(key=key, node_id=node_id, seq=seq, provider=provider):
                log.event(
                    "dht_record_stored", key=key.hex, node_id=node_id, seq=seq, provider=provider
                )
            case RecordRejectedEvent(sender=sender, reason=reason, detail=detail):
                log.warning(
                    "dht_record_rejected", sender=sender, reason=reason.value, detail=detail
                )
            case RateLimited(peer=peer, refused=refused):
                log.warning("dht_rate_limited", peer=peer, refused=refused)

    def _finished(self, event: OperationFinished) -> None:
        fields: dict[str, Any] = {}
        if event.kind is OperationKind.GET_PROVIDERS:
            fields["providers"] = len(event.providers)
        if event.kind in (OperationKind.PUT_RECORD, OperationKind.ADD_PROVIDER):
            fields["stored"] = event.stored
        metrics.DHT_LOOKUPS.inc(event.kind.value)
        metrics.DHT_LOOKUP_DURATION.observe(event.duration, event.kind.value)
        self._events.event(
            "dht_lookup_finished",
            operation=event.operation,
            kind=event.kind.value,
            target=event.target.hex,
            hops=event.hops,
            rpcs=event.rpcs,
            failed_rpcs=event.failed_rpcs,
            duration_ms=round(event.duration * 1000, 1),
            found=event.found,
            **fields,
        )
        if event.operation in self._publish_ops:
            self._publish_ops.discard(event.operation)
            if event.kind is OperationKind.PUT_RECORD and event.stored == 0:
                self._publish_pending = True
        waiter = self._waiters.pop(event.operation, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    # -- background tasks ----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        # Only handle_timer moves the node's timer, so sleeping until it is enough.
        while True:
            delay = self.node.get_timer() - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self.node.handle_timer(self._clock())
            self._pump()

    async def _bootstrap_loop(self) -> None:
        rejoins: list[float] = []
        while True:
            now = self._loop.time()
            if len(self.node.table) == 0 and self._seeds:
                seeds = await self._resolve(self._seeds)
                if seeds and await self._join(seeds, "dht_bootstrapped"):
                    start = self._loop.time()
                    rejoins = sorted(start + d for d in self.settings.rejoin_after)
            elif rejoins and now >= rejoins[0] and len(self.node.table) > 0:
                # Nodes that joined at the same time did not know each other
                # yet: look ourselves up again so they do (once for all the
                # rejoins already due).
                while rejoins and rejoins[0] <= now:
                    del rejoins[0]
                own = self.node.contact.key
                await self._join(self.node.table.closest(own, self.node.settings.k), "")
            elif self._publish_pending and len(self.node.table) > 0:
                self._republish()
            # Until the next retry, or the next rejoin if that comes sooner.
            delay = self.settings.bootstrap_retry_interval
            if rejoins:
                delay = min(delay, max(0.0, rejoins[0] - self._loop.time()))
            await asyncio.sleep(delay)

    async def _join(self, seeds: list[Contact], event: str) -> bool:
        """Bootstrap through `seeds`; whether the table has peers afterwards."""
        self._bootstrapping = True
        try:
            result = await self._bootstrap(seeds)
        finally:
            self._bootstrapping = False
        peers = len(self.node.table)
        if event:
            (self._events.event if peers else self._events.warning)(
                event if peers else "dht_bootstrap_failed",
                seeds=len(seeds),
                peers=peers,
                rpcs=result.rpcs,
                failed_rpcs=result.failed_rpcs,
            )
        if peers and (self._publish_pending or event):
            self._republish()
        return peers > 0

    async def _bootstrap(self, seeds: list[Contact]) -> OperationFinished:
        return await self.run_operation(lambda node, now: node.bootstrap(seeds, now))

    async def _resolve(self, contacts: Sequence[Contact]) -> list[Contact]:
        """Seeds with a host name get its address (DHT contacts are IP literals)."""
        resolved = []
        for seed in contacts:
            try:
                ipaddress.ip_address(seed.host)
            except ValueError:
                try:
                    infos = await self._loop.getaddrinfo(
                        seed.host, seed.port, type=socket.SOCK_DGRAM
                    )
                except OSError as err:
                    self._events.warning(
                        "dht_seed_unresolved", peer=seed.node_id, host=seed.host, error=str(err)
                    )
                    continue
                resolved.append(
                    Contact(node_id=seed.node_id, host=str(infos[0][4][0]), port=seed.port)
                )
            else:
                resolved.append(seed)
        return resolved

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval)
            await self.save_snapshot()

    # -- the routing table snapshot ------------------------------------------------------

    async def save_snapshot(self) -> bool:
        """Write the table to the data directory if it changed; an empty table
        never replaces a saved one. Returns whether a file was written."""
        async with self._snapshot_lock:
            return await self._save_snapshot()

    async def _save_snapshot(self) -> bool:
        path = self._snapshot_path
        contacts = self.node.table.contacts()
        if path is None or not contacts or frozenset(contacts) == self._saved:
            return False
        data = encode_snapshot(self.node_id, contacts, self._clock())
        write = self._loop.run_in_executor(None, _write_atomically, path, data)
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # The thread cannot be stopped: keep the lock until it is done, so
            # the next save (the one at close) cannot overlap it.
            await asyncio.wait([write])
            if not write.cancelled():
                write.exception()  # retrieved: a failed write of a cancelled save is moot
            raise
        except OSError as err:
            self._events.warning(
                "dht_snapshot_failed", path=str(self._snapshot_path), error=str(err)
            )
            return False
        self._saved = frozenset(contacts)
        self._events.event(
            "dht_snapshot_saved",
            level="debug",
            path=str(self._snapshot_path),
            contacts=len(contacts),
        )
        return True

    async def _load_snapshot(self) -> list[Contact]:
        path = self._snapshot_path
        if path is None:
            return []
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return []
        except OSError as err:
            self._events.warning("dht_snapshot_unreadable", path=str(path), error=str(err))
            return []
        try:
            node_id, contacts = decode_snapshot(data)
        except DhtCodecError as err:
            self._events.warning("dht_snapshot_unreadable", path=str(path), error=str(err))
            return []
        if node_id != self.node_id:
            self._events.warning(
                "dht_snapshot_unreadable",
                path=str(path),
                error=f"saved by node {node_id[:64]!r}, not this one",
            )
            return []
        self._saved = frozenset(contacts)
        self._events.event("dht_snapshot_loaded", path=str(path), contacts=len(contacts))
        return [c for c in contacts if c.node_id != self.node_id]


def _address(contact: Contact) -> str:
    return host_port(contact.host, contact.port)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a temp file of its own (unique name, same directory), fsync,
    rename over `path`, fsync the directory."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
