"""A typed client of a node's PlasmService, for `plasm` and scripts.

It owns the gRPC channel and stub, the deadlines and the translation of RPC
failures into `ApiError` with a message a person can act on; callers get the
views of `plasm_grpc.api.views` and never touch grpc or generated code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from plasm.v1 import service_pb2, service_pb2_grpc

from plasm_grpc.api.jobs import JobRequest
from plasm_grpc.api.views import (
    Event,
    NodeInfo,
    Peer,
    PeerLookup,
    ReceiptPage,
    StoredReceipt,
    SubmitResult,
    Verification,
    Workers,
)
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.wire import envelope_to_pb

__all__ = ["ApiError", "PendingSubmit", "PlasmClient", "WatchStream", "connect"]

# Trailing-metadata key carrying a plasm.v1.ErrorReason value name (api.codec.REASON_KEY;
# not imported from there: codec pulls in the job machinery a client does not need).
REASON_KEY = "plasm-error-reason"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ApiError(Exception):
    """An RPC failed; `str()` says what happened and what to do about it."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # the ErrorReason name the node gave, e.g. "ERROR_REASON_NO_WORKER"


def rpc_reason(err: grpc.RpcError) -> str:
    if isinstance(err, grpc.Call):
        for key, value in err.trailing_metadata() or ():
            if key == REASON_KEY:
                return str(value)
    return ""


def describe_rpc_error(err: grpc.RpcError, addr: str) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    reason = rpc_reason(err)
    if code == grpc.StatusCode.UNAVAILABLE and reason == "ERROR_REASON_SHUTTING_DOWN":
        return f"plasmd at {addr} is shutting down and not accepting jobs: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach plasmd at {addr}: {details}\n"
            "Is the daemon running? Start it with `plasmd`, or point at it with --addr "
            "or $PLASM_ADDR."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"plasmd at {addr} did not answer in time (raise --timeout)"
    name = code.name if code is not None else "ERROR"
    tag = f" [{reason}]" if reason else ""
    return f"plasmd refused the request: {name}{tag}: {details}"


class PendingSubmit:
    """A Submit on its way: done, a callback, and its result or ApiError."""

    def __init__(self, future: Any, addr: str) -> None:
        self._future = future
        self._addr = addr

    def done(self) -> bool:
        return bool(self._future.done())

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        self._future.add_done_callback(lambda _: fn())

    def cancel(self) -> None:
        self._future.cancel()

    def result(self) -> SubmitResult:
        try:
            response: service_pb2.SubmitResponse = self._future.result()
        except grpc.RpcError as err:
            raise ApiError(describe_rpc_error(err, self._addr), rpc_reason(err)) from None
        return SubmitResult.from_pb(response)


class WatchStream:
    """A Watch call: iterate for its events; `cancel()` ends it from any thread.
    Iteration raises ApiError when the call fails."""

    def __init__(self, call: Any, addr: str) -> None:
        self._call = call
        self._addr = addr

    def __iter__(self) -> Iterator[Event]:
        try:
            for response in self._call:
                yield Event.from_pb(response.event)
        except grpc.RpcError as err:
            raise ApiError(describe_rpc_error(err, self._addr), rpc_reason(err)) from None

    def cancel(self) -> None:
        self._call.cancel()


class PlasmClient:
    """One node's PlasmService over one channel; each call has `timeout` as deadline
    unless it says otherwise."""

    def __init__(self, addr: str, timeout: float, channel: Any, stub: Any) -> None:
        self.addr = addr
        self.timeout = timeout
        self._channel = channel
        self._stub = stub

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout if timeout is None else timeout
            )
        except grpc.RpcError as err:
            raise ApiError(describe_rpc_error(err, self.addr), rpc_reason(err)) from None

    # -- jobs --

    def start_submit(self, job: JobRequest, deadline: float) -> PendingSubmit:
        return PendingSubmit(self._stub.Submit.future(job.message, timeout=deadline), self.addr)

    def watch(self, job_id: str, timeout: float | None = None) -> WatchStream:
        call = self._stub.Watch(
            service_pb2.WatchRequest(job_id=job_id),
            timeout=self.timeout if timeout is None else timeout,
        )
        return WatchStream(call, self.addr)

    def cancel(self, job_id: str, timeout: float | None = None) -> bool:
        """True when the node is cancelling the job, False when it had already ended."""
        response = self._call("Cancel", service_pb2.CancelRequest(job_id=job_id), timeout)
        return bool(response.cancelled)

    # -- receipts --

    def get_receipt(self, job_id: str) -> StoredReceipt:
        response = self._call("GetReceipt", service_pb2.GetReceiptRequest(job_id=job_id))
        return StoredReceipt.from_pb(response.receipt)

    def list_receipts(self, page_size: int, page_token: str = "") -> ReceiptPage:
        request = service_pb2.ListReceiptsRequest(page_size=page_size, page_token=page_token)
        return ReceiptPage.from_pb(self._call("ListReceipts", request))

    def verify(
        self,
        envelope: SignedEnvelope,
        *,
        expected_executor_node_id: str = "",
        stdout: bytes | None = None,
        stderr: bytes | None = None,
        module: bytes | None = None,
        job_input: tuple[Sequence[str], Sequence[tuple[str, str]], bytes] | None = None,
    ) -> Verification:
        """The node's Verify RPC; `job_input` is (args, env, stdin) as sent."""
        from plasm.v1 import manifest_pb2

        request = service_pb2.VerifyRequest(
            receipt=envelope_to_pb(envelope), expected_executor_node_id=expected_executor_node_id
        )
        if stdout is not None:
            request.stdout = stdout
        if stderr is not None:
            request.stderr = stderr
        if module is not None:
            request.module = module
        if job_input is not None:
            args, env, stdin = job_input
            request.input.args.extend(args)
            request.input.env.extend(manifest_pb2.EnvVar(name=k, value=v) for k, v in env)
            request.input.stdin = stdin
        return Verification.from_pb(self._call("Verify", request))

    # -- the node and its peers --

    def node_info(self) -> NodeInfo:
        return NodeInfo.from_pb(self._call("GetNodeInfo", service_pb2.GetNodeInfoRequest()))

    def health(self) -> str:
        """The gRPC health check's status name, e.g. "SERVING"."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            check = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout
            )
        except grpc.RpcError as err:
            raise ApiError(describe_rpc_error(err, self.addr), rpc_reason(err)) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(check.status))

    def list_peers(self) -> tuple[Peer, ...]:
        response = self._call("ListPeers", service_pb2.ListPeersRequest())
        return tuple(Peer.from_pb(p) for p in response.peers)

    def find_peer(self, node_id: str) -> PeerLookup:
        return PeerLookup.from_pb(
            self._call("FindPeer", service_pb2.FindPeerRequest(node_id=node_id))
        )

    def find_workers(
        self,
        *,
        wasi_version: str,
        min_memory_bytes: int,
        arch: str,
        min_free_slots: int,
        limit: int,
    ) -> Workers:
        request = service_pb2.FindWorkersRequest(
            wasi_version=wasi_version,
            min_memory_bytes=min_memory_bytes,
            arch=arch,
            min_free_slots=min_free_slots,
            limit=limit,
        )
        return Workers.from_pb(self._call("FindWorkers", request))


def connect(addr: str, timeout: float) -> PlasmClient:
    """A client of the node at `addr` (host:port or unix:/path); the channel
    connects on the first call."""
    channel = grpc.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    return PlasmClient(addr, timeout, channel, service_pb2_grpc.PlasmServiceStub(channel))
