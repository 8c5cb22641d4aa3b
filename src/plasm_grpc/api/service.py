"""The `plasm.v1.PlasmService` servicer (grpc.aio).

Every failure is a gRPC status with a human message and, in the trailing
metadata key ``plasm-error-reason``, a `plasm.v1.ErrorReason` value name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from plasm.v1 import (
    errors_pb2,
    reachability_pb2,
    service_pb2,
    service_pb2_grpc,
)

from plasm_grpc import __version__
from plasm_grpc.api import codec
from plasm_grpc.api.facts import local_capabilities
from plasm_grpc.api.routing import JobRouter, PlacementError
from plasm_grpc.api.verify import ReceiptInput, verify_receipt
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.records import (
    DEFAULT_WASI_VERSION,
    PeerRecord,
    RecordError,
    WorkerRequirements,
    requirement_class,
)
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import check_hex64, check_job_id, new_job_id
from plasm_grpc.core.reachability import Reachability
from plasm_grpc.jobs.events import (
    JobEventBus,
    JobNotFoundError,
    SlowWatcherError,
    WatchEndedError,
)
from plasm_grpc.jobs.executor import JobExecutor, JobRequest
from plasm_grpc.logs import EventLog
from plasm_grpc.store.receipts import InvalidPageTokenError

Ctx = grpc.aio.ServicerContext[Any, Any]

REASON_KEY: Final = codec.REASON_KEY
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
DEFAULT_WORKERS: Final = 20
MAX_WORKERS: Final = 100
DEFAULT_LOOKUP_TIMEOUT_S: Final = 10.0
MAX_LOOKUP_TIMEOUT_S: Final = 60.0
# How long Watch waits for a job id that has no event yet (a client may start
# watching just before its Submit arrives).
WATCH_WAIT_S: Final = 10.0

_REACHABILITY_PB: Final[dict[Reachability, reachability_pb2.Reachability.ValueType]] = {
    Reachability.UNKNOWN: reachability_pb2.REACHABILITY_UNSPECIFIED,
    Reachability.PUBLIC: reachability_pb2.REACHABILITY_PUBLIC,
    Reachability.PRIVATE: reachability_pb2.REACHABILITY_PRIVATE,
}
_STATUS: Final[dict[str, grpc.StatusCode]] = {
    "INVALID_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "MODULE_HASH_MISMATCH": grpc.StatusCode.INVALID_ARGUMENT,
    "MODULE_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "MODULE_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "LIMITS_TOO_HIGH": grpc.StatusCode.INVALID_ARGUMENT,
    "INPUT_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "BUSY": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "SHUTTING_DOWN": grpc.StatusCode.UNAVAILABLE,
    "RECEIPT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "INVALID_PAGE_TOKEN": grpc.StatusCode.INVALID_ARGUMENT,
    "PLACEMENT_UNAVAILABLE": grpc.StatusCode.FAILED_PRECONDITION,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "DHT_UNAVAILABLE": grpc.StatusCode.FAILED_PRECONDITION,
    "LOOKUP_TIMEOUT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "PEER_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "NO_WORKER": grpc.StatusCode.UNAVAILABLE,
    "JOB_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Every reason above must be a plasm.v1.ErrorReason value (checked at import).
for _reason in _STATUS:
    errors_pb2.ErrorReason.Value(f"ERROR_REASON_{_reason}")


async def _abort(context: Ctx, reason: str, message: str) -> NoReturn:
    context.set_trailing_metadata(((REASON_KEY, f"ERROR_REASON_{reason}"),))
    await context.abort(_STATUS[reason], message)
    raise AssertionError("unreachable")  # context.abort raises


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    """An open overlay connection, as GetNodeInfo reports it."""

    node_id: str
    address: str
    direction: str
    rtt_us: int


def _no_peers() -> Sequence[PeerView]:
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtPeer:
    """A routing table entry and the newest peer record known for it."""

    contact: Contact
    record: PeerRecord | None
    connected: bool


class DhtUnavailableError(RuntimeError):
    """The DHT is closing (the node is shutting down)."""


class DhtView(Protocol):
    """What the servicer needs of the running DHT (net.dht.DhtService).

    Lookups raise TimeoutError past their timeout and DhtUnavailableError when
    the DHT closes under them.
    """

    def known_peers(self) -> Sequence[DhtPeer]: ...

    async def find_workers(
        self, requirements: WorkerRequirements, *, limit: int, timeout: float
    ) -> Sequence[PeerRecord]:
        """Providers meeting `requirements`, best first; raises TimeoutError."""
        ...

    async def find_peer(self, node_id: str, *, timeout: float) -> PeerLookup:
        """Look `node_id`'s record up through the DHT; raises TimeoutError."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLookup:
    record: PeerRecord | None
    hops: int
    rpcs: int
    duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFacts:
    grpc_addresses: tuple[str, ...]
    started_at_ns: int
    overlay_address: str = ""
    # Called per GetNodeInfo; the daemon wires it to the overlay endpoint.
    peers: Callable[[], Sequence[PeerView]] = _no_peers
    # The DHT, when the overlay runs.
    dht: DhtView | None = None
    # Whether peers can dial this node (net/reachability.py), per GetNodeInfo.
    reachability: Callable[[], Reachability] = lambda: Reachability.UNKNOWN
    relays: Callable[[], Sequence[str]] = lambda: ()
    # Every job's events, for Watch; None: this node publishes none.
    events: JobEventBus | None = None
    # Cancel a job submitted to this node: True when it is being cancelled,
    # False when it had already ended, None for an unknown job id. Whoever
    # owns the job publishes its CANCEL_REQUESTED event; Cancel does not.
    cancel_job: Callable[[str], bool | None] | None = None
    # Places submitted jobs (here, on a named peer, or found through the DHT).
    router: JobRouter | None = None
    # How long a Submit without a gRPC deadline may take, placement included.
    default_job_timeout_s: float = 600.0


class PlasmServicer(service_pb2_grpc.PlasmServiceServicer):
    def __init__(self, executor: JobExecutor, facts: NodeFacts, log: EventLog) -> None:
        self.executor = executor
        self.facts = facts
        self.log = log

    # -- Submit ------------------------------------------------------------

    async def Submit(  # noqa: N802 - gRPC method name
        self, request: service_pb2.SubmitRequest, context: Ctx
    ) -> service_pb2.SubmitResponse:
        manifest = request.manifest
        router = self.facts.router
        if router is None:
            await _abort(context, "INTERNAL", "this node has no job router")
        try:
            placement = codec.placement_from_pb(manifest.placement)
            if manifest.module_sha256:
                check_hex64(manifest.module_sha256, "manifest.module_sha256")
            job_id = check_job_id(request.job_id) if request.job_id else new_job_id(os.urandom(16))
            limits = codec.limits_from_pb(manifest.limits)
        except (InvalidIdError, ValueError) as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        remaining = context.time_remaining()
        timeout = self.facts.default_job_timeout_s if remaining is None else remaining - 0.05
        try:
            routed = await router.submit(
                JobRequest(
                    module_sha256=manifest.module_sha256,
                    module=request.module,
                    args=tuple(manifest.args),
                    env=codec.env_pairs(manifest),
                    stdin=manifest.stdin,
                    limits=limits,
                ),
                job_id=job_id,
                placement=placement,
                timeout_s=max(0.0, timeout),
            )
        except PlacementError as err:
            self.log.event("job_refused", job_id=job_id, reason=err.reason, detail=err.message)
            await _abort(context, err.reason, err.message)
        except Exception as err:  # noqa: BLE001 - becomes INTERNAL with a reason, and is logged
            self.log.error("job_failed", job_id=job_id, error=repr(err))
            await _abort(context, "INTERNAL", f"the node failed to run the job: {err}")
        return service_pb2.SubmitResponse(
            result=routed.result,
            attempts=[codec.attempt_to_pb(a) for a in routed.attempts],
            executor_node_id=routed.executor_node_id,
        )

    # -- Verify ------------------------------------------------------------

    async def Verify(  # noqa: N802
        self, request: service_pb2.VerifyRequest, context: Ctx
    ) -> service_pb2.VerifyResponse:
        if not request.HasField("receipt"):
            await _abort(context, "INVALID_REQUEST", "VerifyRequest.receipt is required")
        expected = request.expected_executor_node_id
        if expected:
            try:
                check_hex64(expected, "expected_executor_node_id")
            except InvalidIdError as err:
                await _abort(context, "INVALID_REQUEST", str(err))
        job_input = None
        if request.HasField("input"):
            job_input = ReceiptInput(
                args=tuple(request.input.args),
                env=codec.env_pairs(request.input),
                stdin=request.input.stdin,
            )
        result = verify_receipt(
            codec.envelope_from_pb(request.receipt),
            expected_executor_node_id=expected or None,
            stdout=request.stdout if request.HasField("stdout") else None,
            stderr=request.stderr if request.HasField("stderr") else None,
            module=request.module if request.HasField("module") else None,
            job_input=job_input,
        )
        response = service_pb2.VerifyResponse(
            valid=result.valid,
            checks=[
                service_pb2.VerifyCheck(name=c.name, passed=c.passed, detail=c.detail)
                for c in result.checks
            ],
            signer_node_id=result.signer_node_id,
        )
        if result.body is not None:
            response.body.CopyFrom(result.body)
        return response

    # -- Node info and receipts ---------------------------------------------

    async def GetNodeInfo(  # noqa: N802
        self, request: service_pb2.GetNodeInfoRequest, context: Ctx
    ) -> service_pb2.GetNodeInfoResponse:
        ex = self.executor
        started = Timestamp()
        started.FromNanoseconds(self.facts.started_at_ns)
        return service_pb2.GetNodeInfoResponse(
            node_id=ex.key.node_id,
            public_key=ex.key.public_key,
            version=__version__,
            capabilities=codec.capabilities_to_pb(local_capabilities(ex)),
            grpc_addresses=list(self.facts.grpc_addresses),
            started_at=started,
            jobs_running=ex.running,
            jobs_queued=ex.queued,
            jobs_completed=ex.completed,
            receipts_stored=ex.store.count(),
            cached_modules=ex.sandbox.cache.cached_count(),
            overlay_address=self.facts.overlay_address,
            peers=[
                service_pb2.PeerConnection(
                    node_id=p.node_id, address=p.address, direction=p.direction, rtt_us=p.rtt_us
                )
                for p in self.facts.peers()
            ],
            reachability=_REACHABILITY_PB[self.facts.reachability()],
            relays=list(self.facts.relays()),
        )

    # -- The DHT ---------------------------------------------------------------

    @staticmethod
    def _known_peer(
        node_id: str, address: str, record: PeerRecord | None, rtts: dict[str, int]
    ) -> service_pb2.KnownPeer:
        out = service_pb2.KnownPeer(
            node_id=node_id,
            address=address,
            connected=node_id in rtts,
            rtt_us=rtts.get(node_id, 0),
        )
        if record is not None:
            out.record.CopyFrom(codec.envelope_to_pb(record.envelope))
            # The exact signed bytes, already checked when the record arrived.
            out.record_content.ParseFromString(record.envelope.payload)
        return out

    async def _dht(self, context: Ctx) -> DhtView:
        if self.facts.dht is None:
            await _abort(
                context,
                "DHT_UNAVAILABLE",
                "this node runs no DHT: its overlay is off (set overlay.listen)",
            )
        return self.facts.dht

    async def ListPeers(  # noqa: N802
        self, request: service_pb2.ListPeersRequest, context: Ctx
    ) -> service_pb2.ListPeersResponse:
        dht = await self._dht(context)
        rtts = {p.node_id: p.rtt_us for p in self.facts.peers()}
        return service_pb2.ListPeersResponse(
            peers=[
                self._known_peer(
                    p.contact.node_id, host_port(p.contact.host, p.contact.port), p.record, rtts
                )
                for p in dht.known_peers()
            ]
        )

    async def FindWorkers(  # noqa: N802
        self, request: service_pb2.FindWorkersRequest, context: Ctx
    ) -> service_pb2.FindWorkersResponse:
        dht = await self._dht(context)
        limit = request.limit or DEFAULT_WORKERS
        if limit > MAX_WORKERS:
            await _abort(context, "INVALID_REQUEST", f"limit must be at most {MAX_WORKERS}")
        try:
            requirements = WorkerRequirements(
                wasi_version=request.wasi_version or DEFAULT_WASI_VERSION,
                min_memory_bytes=request.min_memory_bytes,
                arch=request.arch,
                min_free_slots=request.min_free_slots,
            )
        except RecordError as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        timeout = _lookup_timeout(context)
        try:
            if timeout <= 0:
                raise TimeoutError
            workers = await dht.find_workers(requirements, limit=limit, timeout=timeout)
        except DhtUnavailableError:
            await _abort(context, "SHUTTING_DOWN", "the node is shutting down")
        except TimeoutError:
            await _abort(
                context, "LOOKUP_TIMEOUT", f"the provider lookup did not finish in {timeout:.1f} s"
            )
        rtts = {p.node_id: p.rtt_us for p in self.facts.peers()}
        return service_pb2.FindWorkersResponse(
            workers=[
                self._known_peer(r.node_id, next(iter(r.content.addresses), ""), r, rtts)
                for r in workers[:limit]
            ],
            capability_class=requirement_class(requirements),
        )

    async def FindPeer(  # noqa: N802
        self, request: service_pb2.FindPeerRequest, context: Ctx
    ) -> service_pb2.FindPeerResponse:
        dht = await self._dht(context)
        try:
            node_id = check_hex64(request.node_id, "node_id")
        except InvalidIdError as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        timeout = _lookup_timeout(context)
        try:
            if timeout <= 0:
                raise TimeoutError
            found = await dht.find_peer(node_id, timeout=timeout)
        except DhtUnavailableError:
            await _abort(context, "SHUTTING_DOWN", "the node is shutting down")
        except TimeoutError:
            await _abort(context, "LOOKUP_TIMEOUT", f"the lookup did not finish in {timeout:.1f} s")
        if found.record is None:
            await _abort(
                context,
                "PEER_NOT_FOUND",
                f"no peer record for {node_id} in the DHT ({found.rpcs} RPCs, {found.hops} hops)",
            )
        rtts = {p.node_id: p.rtt_us for p in self.facts.peers()}
        return service_pb2.FindPeerResponse(
            peer=self._known_peer(
                node_id, next(iter(found.record.content.addresses), ""), found.record, rtts
            ),
            hops=found.hops,
            rpcs=found.rpcs,
            duration_us=int(found.duration_s * 1_000_000),
        )

    async def GetReceipt(  # noqa: N802
        self, request: service_pb2.GetReceiptRequest, context: Ctx
    ) -> service_pb2.GetReceiptResponse:
        try:
            job_id = check_job_id(request.job_id)
        except InvalidIdError as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        row = self.executor.store.get(job_id)
        if row is None:
            await _abort(context, "RECEIPT_NOT_FOUND", f"no receipt for job {job_id} on this node")
        return service_pb2.GetReceiptResponse(receipt=_stored(row.envelope))

    async def ListReceipts(  # noqa: N802
        self, request: service_pb2.ListReceiptsRequest, context: Ctx
    ) -> service_pb2.ListReceiptsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        size = min(size, MAX_PAGE_SIZE)
        try:
            rows, token = self.executor.store.list_page(size, request.page_token)
        except InvalidPageTokenError as err:
            await _abort(context, "INVALID_PAGE_TOKEN", str(err))
        return service_pb2.ListReceiptsResponse(
            receipts=[_stored(r.envelope) for r in rows], next_page_token=token
        )

    # -- Job events and cancel ----------------------------------------------------

    async def Watch(  # noqa: N802
        self, request: service_pb2.WatchRequest, context: Ctx
    ) -> AsyncIterator[service_pb2.WatchResponse]:
        try:
            job_id = check_job_id(request.job_id)
        except InvalidIdError as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        events = self.facts.events
        if events is None:
            await _abort(context, "JOB_NOT_FOUND", f"no job {job_id} on this node")
        # Within the call's deadline, less a margin to answer NOT_FOUND.
        remaining = context.time_remaining()
        wait_s = WATCH_WAIT_S if remaining is None else min(WATCH_WAIT_S, remaining - 0.1)
        try:
            # aclosing: a client that goes away cancels this handler, and the
            # subscription ends with it.
            async with contextlib.aclosing(events.watch(job_id, wait_s=wait_s)) as stream:
                async for event in stream:
                    yield service_pb2.WatchResponse(event=codec.job_event_to_pb(event))
        except JobNotFoundError:
            await _abort(
                context, "JOB_NOT_FOUND", f"no job {job_id} on this node (waited {wait_s:.1f} s)"
            )
        except SlowWatcherError as err:
            await _abort(context, "BUSY", f"{err}; watch again to get the history")
        except WatchEndedError as err:
            await _abort(context, "INTERNAL", str(err))

    async def Cancel(  # noqa: N802
        self, request: service_pb2.CancelRequest, context: Ctx
    ) -> service_pb2.CancelResponse:
        try:
            job_id = check_job_id(request.job_id)
        except InvalidIdError as err:
            await _abort(context, "INVALID_REQUEST", str(err))
        cancelled: bool | None = None
        if self.facts.cancel_job is not None:
            try:
                cancelled = self.facts.cancel_job(job_id)
            except Exception as err:  # noqa: BLE001 - becomes INTERNAL with a reason, and is logged
                self.log.error("cancel_failed", job_id=job_id, error=repr(err))
                await _abort(context, "INTERNAL", f"the node failed to cancel job {job_id}: {err}")
        if cancelled is None and self.facts.events is not None and self.facts.events.ended(job_id):
            cancelled = False  # a job the canceller has forgotten, whose end is still known
        if cancelled is None:
            await _abort(context, "JOB_NOT_FOUND", f"no job {job_id} on this node")
        self.log.event("job_cancel", job_id=job_id, cancelled=cancelled)
        return service_pb2.CancelResponse(cancelled=cancelled)


def _stored(envelope_bytes: bytes) -> service_pb2.StoredReceipt:
    env = codec.envelope_from_bytes(envelope_bytes)
    stored = service_pb2.StoredReceipt(receipt=codec.envelope_to_pb(env))
    # Our own store; should decoding fail, the envelope stays authoritative.
    with contextlib.suppress(codec.DecodeError):
        stored.body.CopyFrom(codec.decode_receipt_body(env.payload))
    return stored


def _lookup_timeout(context: Ctx) -> float:
    """The call's remaining deadline (less a margin to answer), capped."""
    remaining = context.time_remaining()
    timeout = DEFAULT_LOOKUP_TIMEOUT_S if remaining is None else remaining - 0.05
    return min(timeout, MAX_LOOKUP_TIMEOUT_S)
