"""Remote jobs end to end (issue 5): real plasmd processes on loopback.

A requester A (``remote.fallback_local = false``, so a job it cannot place
fails instead of running on A) and its workers form a DHT with A as the
bootstrap node; each test waits (bounded) until A's FindWorkers returns the
workers before it submits. The networks:

- ``net`` (module): A, B, C honest workers. Placement through the DHT, module
  transfer only once, cancel reaching the worker (and only from the job's
  requester), a client deadline that passes stopping the guest, malformed
  overlay requests from an in-process node.
- failover (one test): A, B, C; the worker running a job is killed with
  SIGKILL, and the job completes on the other one.
- ``picky`` (module): every worker declines a big job (C's fuel limit is
  lower, D's module limit is smaller); B takes no jobs from peers, so it is
  not offered one automatically, and declines when named.
- ``evil`` (module): E runs ``tests/evil_worker.py`` (it flips a byte of the
  stdout it returns, keeping the honest receipt), H is honest.

Every wait is bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import pytest
from conftest import (
    REPO_ROOT,
    RPC_TIMEOUT_S,
    Daemon,
    DaemonFactory,
    WasmModules,
    assert_receipt_matches,
    make_request,
    rpc_error,
    verify_result,
    wait_until,
)
from plasm.v1 import (
    capability_pb2,
    errors_pb2,
    job_pb2,
    receipt_pb2,
    service_pb2,
)

from plasm_grpc.api.codec import envelope_from_pb
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.input_hash import input_sha256
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.net import OverlayConnection, OverlayEndpoint, RemoteCallError
from plasm_grpc.remote.messages import CANCEL_METHOD, OFFER_METHOD, RUN_METHOD, STATUS_METHOD

SUBMIT_S = 60.0  # the client's deadline for one job
DISCOVERY_S = 60.0
SPIN = "spin_then_exit"  # a few seconds of CPU, then "spun\n"
BIG_FUEL = 200_000_000_000  # more than any test guest burns; above the default limit
LONG_MS = 120_000
E = job_pb2.JobEventKind
R = job_pb2.AttemptResult
D = job_pb2.DeclineReason

# Every node shares 127.0.0.1: lift the per-IP inbound connection limit (16).
OVERLAY: Mapping[str, object] = {"max_connections_per_ip": 256, "reconnect_interval_s": 0.5}
# A requester that never runs a job itself and checks on its workers often.
REQUESTER: Mapping[str, Mapping[str, object]] = {
    "remote": {"fallback_local": False, "heartbeat_interval_s": 0.2},
}


# -- networks ------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list):
        return json.dumps(value)
    return repr(value)


def _config(sections: Mapping[str, Mapping[str, object]], bootstrap: str = "") -> str:
    merged = {name: dict(values) for name, values in sections.items()}
    overlay = merged.setdefault("overlay", {})
    overlay.update(OVERLAY)
    if bootstrap:
        overlay["bootstrap"] = [bootstrap]
    lines = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


class EvilDaemon(Daemon):
    """tests/evil_worker.py instead of plasmd (same arguments, same log)."""

    def command(self) -> list[str]:
        plasmd = super().command()
        assert plasmd[1:3] == ["-m", "plasm_grpc.daemon.main"]
        return [plasmd[0], str(REPO_ROOT / "tests" / "evil_worker.py"), *plasmd[3:]]


@dataclass(frozen=True, slots=True)
class Node:
    """A worker to start: its config sections, and whether it is the evil one."""

    sections: Mapping[str, Mapping[str, object]]
    evil: bool = False


def _add(factory: DaemonFactory, config: str, *, evil: bool) -> Daemon:
    if not evil:
        return factory(config, start=False)
    root = factory.base / f"node{len(factory.daemons)}"
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "plasmd.toml"
    config_path.write_text(config, encoding="utf-8")
    daemon = EvilDaemon(data_dir=root / "data", config_path=config_path)
    factory.daemons.append(daemon)
    return daemon


def _start_network(factory: DaemonFactory, workers: Sequence[Node]) -> list[Daemon]:
    """A (the requester, bootstrap node), then the workers at once; [A, *workers]."""
    a = factory(_config(REQUESTER))
    bootstrap = f"{a.node_id}@{a.node_info().overlay_address}"
    daemons = [_add(factory, _config(w.sections, bootstrap), evil=w.evil) for w in workers]
    errors: list[BaseException] = []

    def start(d: Daemon) -> None:
        try:
            d.start(timeout=60)
        except BaseException as err:  # re-raised below
            errors.append(err)

    threads = [threading.Thread(target=start, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    if errors:
        raise errors[0]
    # A node that takes no jobs from peers does not advertise as a worker.
    advertising = [
        d
        for d, w in zip(daemons, workers, strict=True)
        if w.sections.get("remote", {}).get("accept_jobs", True)
    ]
    _wait_for_workers(a, {d.node_id for d in advertising})
    return [a, *daemons]


def _wait_for_workers(a: Daemon, ids: set[str]) -> None:
    def found() -> bool:
        response = a.stub.FindWorkers(service_pb2.FindWorkersRequest(limit=100), timeout=20)
        return {w.node_id for w in response.workers} >= ids

    wait_until(found, timeout=DISCOVERY_S, interval=0.2, what="A finding its workers in the DHT")


@pytest.fixture(scope="module")
def net(plasmd_module: DaemonFactory) -> list[Daemon]:
    """[A, B, C]: B and C are plain workers."""
    return _start_network(plasmd_module, [Node({}), Node({})])


@pytest.fixture(scope="module")
def picky(plasmd_module: DaemonFactory) -> list[Daemon]:
    """[A, B, C, D]: B takes no jobs from peers; C allows less fuel; D takes small modules."""
    return _start_network(
        plasmd_module,
        [
            Node({"remote": {"accept_jobs": False}}),
            Node({"limits.max": {"max_fuel": 50_000_000_000}}),
            Node({"jobs": {"max_module_bytes": 4096}}),
        ],
    )


@pytest.fixture(scope="module")
def evil(plasmd_module: DaemonFactory) -> list[Daemon]:
    """[A, E, H]: E tampers with the stdout it returns, H is honest."""
    return _start_network(plasmd_module, [Node({}, evil=True), Node({})])


# -- helpers -------------------------------------------------------------------------------


def _job_id() -> str:
    return os.urandom(16).hex()


def _peer(node_id: str) -> capability_pb2.PlacementRequirements:
    return capability_pb2.PlacementRequirements(
        mode=capability_pb2.PLACEMENT_MODE_PEER, peer_node_id=node_id
    )


def _request(module: bytes, job_id: str, **kwargs: Any) -> service_pb2.SubmitRequest:
    request = make_request(module, **kwargs)
    request.job_id = job_id
    return request


def _run(
    a: Daemon, module: bytes, job_id: str | None = None, **kwargs: Any
) -> service_pb2.SubmitResponse:
    response: service_pb2.SubmitResponse = a.stub.Submit(
        _request(module, job_id or _job_id(), **kwargs), timeout=SUBMIT_S
    )
    return response


def _history(a: Daemon, job_id: str) -> list[job_pb2.JobEvent]:
    """Every event of a job that has ended (the bus replays it to a late watcher)."""
    stream = a.stub.Watch(service_pb2.WatchRequest(job_id=job_id), timeout=RPC_TIMEOUT_S)
    return [r.event for r in stream]


def _kinds(events: Sequence[job_pb2.JobEvent]) -> list[str]:
    return [E.Name(e.kind).removeprefix("JOB_EVENT_KIND_") for e in events]


def _body(result: job_pb2.JobResult) -> receipt_pb2.ReceiptBody:
    body = receipt_pb2.ReceiptBody()
    body.ParseFromString(result.receipt.payload)
    return body


def _attempts(response: service_pb2.SubmitResponse) -> list[tuple[str, str]]:
    return [(a.node_id, R.Name(a.result)) for a in response.attempts]


# -- placement through the DHT, and the module sent once ------------------------------------


def test_a_job_submitted_to_a_runs_on_a_worker_found_through_the_dht(
    net: list[Daemon], wasm: WasmModules
) -> None:
    a, b, c = net
    hello = wasm.bytes("hello")
    job_id = _job_id()
    response = _run(a, hello, job_id, stdin=b"Hello, World", args=["one"], env=[("K", "v")])
    result = response.result
    workers = {b.node_id: b, c.node_id: c}
    assert response.executor_node_id in workers, response.executor_node_id
    worker = workers[response.executor_node_id]
    assert result.job_id == job_id
    assert result.outcome == receipt_pb2.OUTCOME_SUCCESS
    assert result.stdout == b"dlroW ,olleH"
    # The receipt: signed by the worker, naming A as requester, every hash right.
    verified = verify_result(
        result,
        module=hello,
        args=["one"],
        env=[("K", "v")],
        stdin=b"Hello, World",
        node_id=worker.node_id,
    )
    assert_receipt_matches(result, verified)
    assert verified.signer_node_id == worker.node_id
    body = _body(result)
    assert body.requester_node_id == a.node_id
    assert body.module_sha256 == hashlib.sha256(hello).hexdigest()
    # One attempt, on that worker, with the module sent.
    assert _attempts(response) == [(worker.node_id, "ATTEMPT_RESULT_COMPLETED")]
    first = response.attempts[0]
    assert not first.may_have_run
    assert first.module_bytes_sent == len(hello)
    # A stored the worker's receipt as it came; the worker has it too.
    stored = a.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=job_id), timeout=RPC_TIMEOUT_S)
    assert stored.receipt.receipt == result.receipt
    assert stored.receipt.body.requester_node_id == a.node_id
    own = worker.stub.GetReceipt(
        service_pb2.GetReceiptRequest(job_id=job_id), timeout=RPC_TIMEOUT_S
    )
    assert own.receipt.receipt == result.receipt
    events = _history(a, job_id)
    kinds = _kinds(events)
    assert kinds[:3] == ["SUBMITTED", "SEARCHING", "CANDIDATES"]
    assert kinds[-1] == "FINISHED"
    assert {"OFFERED", "ACCEPTED", "TRANSFERRING"} <= set(kinds)
    assert "DECLINED" not in kinds
    assert "ATTEMPT_FAILED" not in kinds
    offered = [e for e in events if e.kind == E.JOB_EVENT_KIND_OFFERED]
    assert [e.node_id for e in offered] == [worker.node_id]
    transferring = next(e for e in events if e.kind == E.JOB_EVENT_KIND_TRANSFERRING)
    assert transferring.module_bytes == len(hello)

    # The same module again, to the same worker: it holds the module, so only
    # the input travels.
    again_id = _job_id()
    again = _run(a, hello, again_id, stdin=b"abc", placement=_peer(worker.node_id))
    assert again.executor_node_id == worker.node_id
    assert again.result.stdout == b"cba"
    assert_receipt_matches(
        again.result,
        verify_result(again.result, module=hello, stdin=b"abc", node_id=worker.node_id),
    )
    assert _attempts(again) == [(worker.node_id, "ATTEMPT_RESULT_COMPLETED")]
    assert again.attempts[-1].module_bytes_sent == 0
    transferring = next(e for e in _history(a, again_id) if e.kind == E.JOB_EVENT_KIND_TRANSFERRING)
    assert transferring.module_bytes == 0
    assert transferring.node_id == worker.node_id
    # Neither job ran on A.
    assert not [r for r in a.events("job_finished") if r["job_id"] in (job_id, again_id)]


# -- failover ------------------------------------------------------------------------------


def test_a_worker_killed_mid_job_fails_over_and_the_job_completes_on_the_other(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    a, b, c = _start_network(plasmd, [Node({}), Node({})])
    spin = wasm.bytes(SPIN)
    workers = {b.node_id: b, c.node_id: c}
    job_id = _job_id()
    watch = a.stub.Watch(service_pb2.WatchRequest(job_id=job_id), timeout=SUBMIT_S + 10)
    call = a.stub.Submit.future(
        _request(spin, job_id, max_fuel=BIG_FUEL, timeout_ms=LONG_MS), timeout=SUBMIT_S
    )
    events: list[job_pb2.JobEvent] = []
    victim: Daemon | None = None
    for item in watch:
        events.append(item.event)
        if victim is None and item.event.kind == E.JOB_EVENT_KIND_RUNNING:
            victim = workers[item.event.node_id]
            victim.kill9()
    assert victim is not None, _kinds(events)
    survivor = c if victim is b else b
    response = call.result()
    # The job completed on the survivor, within the client's deadline.
    assert response.executor_node_id == survivor.node_id
    result = response.result
    assert result.outcome == receipt_pb2.OUTCOME_SUCCESS
    assert result.stdout == b"spun\n"
    verified = verify_result(result, module=spin, node_id=survivor.node_id)
    assert_receipt_matches(result, verified)
    assert _body(result).requester_node_id == a.node_id
    # The client is told the job may also have run on the worker that vanished.
    first, last = response.attempts[0], response.attempts[-1]
    assert first.node_id == victim.node_id
    assert first.result in (R.ATTEMPT_RESULT_DISCONNECTED, R.ATTEMPT_RESULT_TIMEOUT)
    assert first.may_have_run
    assert (last.node_id, last.result) == (survivor.node_id, R.ATTEMPT_RESULT_COMPLETED)
    assert not last.may_have_run
    assert len(response.attempts) == 2
    failed = [e for e in events if e.kind == E.JOB_EVENT_KIND_ATTEMPT_FAILED]
    assert [(e.node_id, e.may_have_run) for e in failed] == [(victim.node_id, True)]
    assert events[-1].kind == E.JOB_EVENT_KIND_FINISHED
    assert events[-1].node_id == survivor.node_id
    logged = a.wait_for_event(
        "job_attempt_failed",
        predicate=lambda r: r["job_id"] == job_id and r["worker"] == first.node_id,
    )
    assert logged is not None
    assert logged["may_have_run"] is True
    stored = a.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=job_id), timeout=RPC_TIMEOUT_S)
    assert stored.receipt.receipt == result.receipt


# -- every worker declines -----------------------------------------------------------------


def test_when_every_worker_declines_the_error_lists_each_worker_and_its_reason(
    picky: list[Daemon], wasm: WasmModules
) -> None:
    a, b, c, d = picky
    hello = wasm.bytes("hello")
    assert len(hello) > 4096  # D's module limit
    job_id = _job_id()
    code, reason, details = rpc_error(lambda: _run(a, hello, job_id, stdin=b"x", max_fuel=BIG_FUEL))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert reason == "ERROR_REASON_NO_WORKER"
    # B takes no jobs from peers: it advertises no capability class, so
    # automatic placement never offers it one (and it declines when named).
    expected = {
        c.node_id: "LIMITS_TOO_HIGH",
        d.node_id: "MODULE_TOO_LARGE",
    }
    for node_id, why in expected.items():
        assert f"{node_id[:16]}… declined ({why})" in details, details
    assert a.node_id[:16] not in details
    assert b.node_id[:16] not in details
    # Watch: one DECLINED event per worker, with its signed decline.
    events = _history(a, job_id)
    declined = [e for e in events if e.kind == E.JOB_EVENT_KIND_DECLINED]
    assert {e.node_id: D.Name(e.decline_reason) for e in declined} == {
        node_id: f"DECLINE_REASON_{why}" for node_id, why in expected.items()
    }
    assert len(declined) == 2
    for event in declined:
        envelope = envelope_from_pb(event.decline)
        payload = envelopes.verify(
            envelope, envelopes.DECLINE_DOMAIN, expected_signer_node_id=event.node_id
        )
        decline = job_pb2.JobDecline()
        decline.ParseFromString(payload)
        assert decline.job_id == job_id
        assert decline.worker_node_id == event.node_id
        assert decline.reason == event.decline_reason
        assert decline.detail == event.detail
        # The same decline under another domain is not a valid signature.
        with pytest.raises(Exception, match="does not verify"):
            envelopes.verify(envelope, envelopes.RECEIPT_DOMAIN)
    assert events[-1].kind == E.JOB_EVENT_KIND_FAILED
    assert events[-1].error_reason == errors_pb2.ERROR_REASON_NO_WORKER
    assert "OFFERED" in _kinds(events)
    # Nothing ran and nothing was stored anywhere.
    for daemon in picky:
        assert not [r for r in daemon.events("job_finished") if r["job_id"] == job_id]
    assert (
        rpc_error(
            lambda: a.stub.GetReceipt(
                service_pb2.GetReceiptRequest(job_id=job_id), timeout=RPC_TIMEOUT_S
            )
        )[1]
        == "ERROR_REASON_RECEIPT_NOT_FOUND"
    )
    # Named explicitly, B declines, signed, saying it takes no jobs from peers.
    job_id = _job_id()
    code, reason, details = rpc_error(
        lambda: _run(a, hello, job_id, stdin=b"x", placement=_peer(b.node_id))
    )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_NO_WORKER")
    assert f"{b.node_id[:16]}… declined (NOT_ACCEPTING)" in details, details
    declined = [e for e in _history(a, job_id) if e.kind == E.JOB_EVENT_KIND_DECLINED]
    assert [D.Name(e.decline_reason) for e in declined] == ["DECLINE_REASON_NOT_ACCEPTING"]

    # A job within C's limits and with a small module: declines fail over to
    # whichever worker takes it.
    small = wasm.bytes("exit_0")
    response = _run(a, small)
    assert response.executor_node_id in (c.node_id, d.node_id)
    assert response.attempts[-1].result == R.ATTEMPT_RESULT_COMPLETED
    for attempt in response.attempts[:-1]:
        assert (attempt.node_id, attempt.result) == (b.node_id, R.ATTEMPT_RESULT_DECLINED)
        assert attempt.decline_reason == D.DECLINE_REASON_NOT_ACCEPTING
        assert not attempt.may_have_run
    assert_receipt_matches(
        response.result,
        verify_result(response.result, module=small, node_id=response.executor_node_id),
    )


# -- cancel --------------------------------------------------------------------------------


async def _snoop(job_id: str, conn: OverlayConnection) -> None:
    """Another node asks about, then cancels, a job that is not its own: nothing."""
    query = job_pb2.JobStatusQuery(job_id=job_id).SerializeToString()
    status = job_pb2.JobStatus()
    status.ParseFromString(await conn.request(STATUS_METHOD, query, 20))
    assert status.state == job_pb2.WORKER_JOB_STATE_UNKNOWN
    cancel = job_pb2.JobCancel(job_id=job_id).SerializeToString()
    answer = job_pb2.JobCancelResult()
    answer.ParseFromString(await conn.request(CANCEL_METHOD, cancel, 20))
    assert not answer.found


def test_cancel_stops_an_infinite_loop_on_the_worker(net: list[Daemon], wasm: WasmModules) -> None:
    a, b, _ = net
    loop = wasm.bytes("infinite_loop")
    job_id = _job_id()
    watch = a.stub.Watch(service_pb2.WatchRequest(job_id=job_id), timeout=SUBMIT_S + 10)
    call = a.stub.Submit.future(
        _request(
            loop,
            job_id,
            placement=_peer(b.node_id),
            max_fuel=1_000_000_000_000,
            timeout_ms=300_000,
        ),
        timeout=SUBMIT_S,
    )
    events: list[job_pb2.JobEvent] = []
    for item in watch:
        events.append(item.event)
        if item.event.kind == E.JOB_EVENT_KIND_RUNNING:
            assert item.event.node_id == b.node_id
            wait_until(lambda: b.node_info().jobs_running == 1, timeout=20, what="B running it")
            _as_stranger(b, NodeKey.from_seed(os.urandom(32)), partial(_snoop, job_id))
            assert b.node_info().jobs_running == 1
            cancelled = a.stub.Cancel(
                service_pb2.CancelRequest(job_id=job_id), timeout=RPC_TIMEOUT_S
            )
            assert cancelled.cancelled
    kinds = _kinds(events)
    assert "RUNNING" in kinds, kinds
    assert kinds.index("CANCEL_REQUESTED") > kinds.index("RUNNING")
    assert kinds[-1] == "FINISHED"
    response = call.result()
    result = response.result
    assert result.outcome == receipt_pb2.OUTCOME_CANCELLED
    assert response.executor_node_id == b.node_id
    verified = verify_result(result, module=loop, node_id=b.node_id)
    assert_receipt_matches(result, verified)
    body = _body(result)
    assert body.requester_node_id == a.node_id
    assert body.outcome == receipt_pb2.OUTCOME_CANCELLED
    assert _attempts(response) == [(b.node_id, "ATTEMPT_RESULT_COMPLETED")]
    # The guest stopped on B, not only the wait on A.
    wait_until(lambda: b.node_info().jobs_running == 0, timeout=20, what="B's guest stopping")
    finished = b.wait_for_event("job_finished", predicate=lambda r: r["job_id"] == job_id)
    assert finished is not None
    assert finished["outcome"] == "cancelled"
    assert b.wait_for_event(
        "job_cancel_requested", predicate=lambda r: r["job_id"] == job_id and r["found"]
    )
    # Cancel after the end: nothing to cancel. An unknown job: not found.
    again = a.stub.Cancel(service_pb2.CancelRequest(job_id=job_id), timeout=RPC_TIMEOUT_S)
    assert not again.cancelled
    code, reason, _ = rpc_error(
        lambda: a.stub.Cancel(service_pb2.CancelRequest(job_id=_job_id()), timeout=RPC_TIMEOUT_S)
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_JOB_NOT_FOUND")


# -- a dishonest worker --------------------------------------------------------------------


def test_a_worker_whose_receipt_does_not_match_its_output_is_caught_and_not_trusted(
    evil: list[Daemon], wasm: WasmModules
) -> None:
    a, e, h = evil
    hello = wasm.bytes("hello")
    job_id = _job_id()
    code, reason, details = rpc_error(
        lambda: _run(a, hello, job_id, stdin=b"secret", placement=_peer(e.node_id))
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert reason == "ERROR_REASON_NO_WORKER"
    assert e.node_id[:16] in details
    assert "bad receipt" in details
    assert "receipt check stdout failed" in details, details
    assert "may have run" in details
    assert e.wait_for_event("evil_result_tampered", predicate=lambda r: r["job_id"] == job_id)
    distrusted = a.wait_for_event("worker_distrusted", predicate=lambda r: r["job_id"] == job_id)
    assert distrusted is not None
    assert distrusted["worker"] == e.node_id
    assert "stdout" in distrusted["problem"]
    # The tampered result was not stored.
    code, reason, _ = rpc_error(
        lambda: a.stub.GetReceipt(
            service_pb2.GetReceiptRequest(job_id=job_id), timeout=RPC_TIMEOUT_S
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_RECEIPT_NOT_FOUND")
    failed = [e for e in _history(a, job_id) if e.kind == E.JOB_EVENT_KIND_ATTEMPT_FAILED]
    assert [(f.node_id, f.may_have_run) for f in failed] == [(e.node_id, True)]
    assert "bad receipt" in failed[0].detail
    ran_on_e = len(e.events("job_finished"))

    # Automatic placement now skips E: it is not even offered a job.
    for n in range(3):
        auto_id = _job_id()
        stdin = f"job {n}".encode()
        response = _run(a, hello, auto_id, stdin=stdin)
        assert response.executor_node_id == h.node_id
        assert response.result.stdout == stdin[::-1]
        assert _attempts(response) == [(h.node_id, "ATTEMPT_RESULT_COMPLETED")]
        assert_receipt_matches(
            response.result,
            verify_result(response.result, module=hello, stdin=stdin, node_id=h.node_id),
        )
        events = _history(a, auto_id)
        assert e.node_id not in {ev.node_id for ev in events}
        assert e.node_id[:12] not in " ".join(ev.detail for ev in events)
    # Named explicitly, E is refused before any offer: the client is told why.
    code, reason, details = rpc_error(lambda: _run(a, hello, _job_id(), placement=_peer(e.node_id)))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_NO_WORKER")
    assert "not trusted" in details, details
    assert len(e.events("job_finished")) == ran_on_e


@pytest.fixture(scope="module")
def silent(plasmd_module: DaemonFactory) -> list[Daemon]:
    """[A, S]: S (the evil worker) never answers offers for arch "evil-silent"; A waits long."""
    a = plasmd_module(_config({"remote": {"fallback_local": False, "offer_timeout_s": 60.0}}))
    bootstrap = f"{a.node_id}@{a.node_info().overlay_address}"
    s = _add(plasmd_module, _config({}, bootstrap), evil=True)
    s.start(timeout=60)
    _wait_for_workers(a, {s.node_id})
    return [a, s]


def test_cancel_while_the_offer_is_out_ends_the_job_without_a_run(
    silent: list[Daemon], wasm: WasmModules
) -> None:
    a, s = silent
    job_id = _job_id()
    placement = _peer(s.node_id)
    placement.arch = "evil-silent"
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(
            lambda: rpc_error(lambda: _run(a, wasm.bytes("hello"), job_id, placement=placement))
        )
        assert s.wait_for_event("evil_offer_ignored", predicate=lambda r: r["job_id"] == job_id)
        cancelled = a.stub.Cancel(service_pb2.CancelRequest(job_id=job_id), timeout=RPC_TIMEOUT_S)
        assert cancelled.cancelled
        code, reason, details = pending.result(timeout=30)
    assert (code, reason) == (grpc.StatusCode.CANCELLED, "ERROR_REASON_CANCELLED")
    assert "before any node ran the job" in details
    kinds = _kinds(_history(a, job_id))
    assert kinds[-2:] == ["CANCEL_REQUESTED", "FAILED"], kinds
    failed = [e for e in _history(a, job_id) if e.kind == E.JOB_EVENT_KIND_ATTEMPT_FAILED]
    assert failed == []  # the attempt ended cancelled, not as a failure to fail over from
    # The offer's request was abandoned; nothing ran on S, and A still serves.
    assert not s.events("job_finished")
    assert a.stub.Cancel(service_pb2.CancelRequest(job_id=job_id), timeout=5).cancelled is False


# -- malformed overlay requests to a worker ------------------------------------------------


def _as_stranger(
    worker: Daemon, key: NodeKey, talk: Callable[[OverlayConnection], Awaitable[None]]
) -> None:
    """Run `talk` on an overlay connection to `worker` from an in-process node `key`."""
    host, _, port = worker.node_info().overlay_address.rpartition(":")

    async def session() -> None:
        endpoint = OverlayEndpoint(key)
        await endpoint.start()
        try:
            connection = await asyncio.wait_for(
                endpoint.connect(host, int(port), worker.node_id), 20
            )
            await talk(connection)
        finally:
            await asyncio.wait_for(endpoint.close(), 20)

    asyncio.run(asyncio.wait_for(session(), 90))


async def _refused(connection: OverlayConnection, method: str, payload: bytes) -> str:
    """The error a request gets (it must get one)."""
    with pytest.raises(RemoteCallError) as info:
        await connection.request(method, payload, 20)
    return str(info.value)


def test_malformed_offers_and_runs_are_refused_and_the_worker_keeps_serving(
    net: list[Daemon], wasm: WasmModules
) -> None:
    a, b, _ = net
    module = wasm.bytes("exit_0")
    module_sha = hashlib.sha256(module).hexdigest()
    key = NodeKey.from_seed(os.urandom(32))
    no_input = input_sha256((), (), b"")

    def offer(job_id: str, **fields: Any) -> bytes:
        msg = job_pb2.JobOffer(
            job_id=job_id,
            module_sha256=module_sha,
            module_size=len(module),
            requester_node_id=key.node_id,
            input_sha256=no_input,
        )
        msg.deadline.FromNanoseconds(time.time_ns() + 30_000_000_000)
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg.SerializeToString()

    async def talk(conn: OverlayConnection) -> None:
        async def refused(method: str, payload: bytes) -> str:
            return await _refused(conn, method, payload)

        # Bytes that are no protobuf, and protobufs that do not check out.
        assert "malformed offer" in await refused(OFFER_METHOD, b"\xff\xff\xff")
        assert "malformed offer" in await refused(OFFER_METHOD, offer("not an id"))
        assert "malformed offer" in await refused(OFFER_METHOD, b"\x00" * 5000)
        assert "malformed" in await refused(RUN_METHOD, b"\xff\xff\xff")
        assert "malformed" in await refused(RUN_METHOD, job_pb2.JobRun().SerializeToString())
        assert await refused(STATUS_METHOD, b"\xff\xff")
        # A requester id that is not the connection's: a signed decline.
        reply = job_pb2.JobResponse()
        reply.ParseFromString(
            await conn.request(OFFER_METHOD, offer(_job_id(), requester_node_id="ab" * 32), 20)
        )
        assert reply.HasField("decline")
        decline = job_pb2.JobDecline()
        decline.ParseFromString(
            envelopes.verify(
                envelope_from_pb(reply.decline),
                envelopes.DECLINE_DOMAIN,
                expected_signer_node_id=b.node_id,
            )
        )
        assert decline.reason == D.DECLINE_REASON_INVALID_OFFER
        # A run no lease covers: never offered, or with another lease id.
        job_id = _job_id()
        run = job_pb2.JobRun(job_id=job_id, lease_id="0" * 32, module=module)
        assert "no lease" in await refused(RUN_METHOD, run.SerializeToString())
        run.lease_id = ""  # "the lease I hold for this job" (a pipelined run): none
        assert "no lease" in await refused(RUN_METHOD, run.SerializeToString())
        run.lease_id = "0" * 32
        reply.ParseFromString(await conn.request(OFFER_METHOD, offer(job_id), 20))
        assert reply.HasField("accept"), reply
        lease_id = reply.accept.lease_id
        assert "does not match" in await refused(RUN_METHOD, run.SerializeToString())
        # The right lease with a module that is not the offered one: refused too.
        bad = job_pb2.JobRun(job_id=job_id, lease_id=lease_id, module=module + b"\x00")
        assert "offer said" in await refused(RUN_METHOD, bad.SerializeToString())
        # The worker keeps serving: a proper offer and run get a signed result.
        job_id = _job_id()
        reply.ParseFromString(await conn.request(OFFER_METHOD, offer(job_id), 20))
        assert reply.HasField("accept"), reply
        good = job_pb2.JobRun(job_id=job_id, lease_id=reply.accept.lease_id, module=module)
        result = job_pb2.JobResult()
        result.ParseFromString(await conn.request(RUN_METHOD, good.SerializeToString(), 30))
        assert result.outcome == receipt_pb2.OUTCOME_SUCCESS
        verified = verify_result(result, module=module, node_id=b.node_id)
        assert_receipt_matches(result, verified)
        assert _body(result).requester_node_id == key.node_id

    _as_stranger(b, key, talk)
    assert b.events("job_offer_refused")
    assert b.events("job_run_refused")
    assert not b.events("overlay_handler_failed")
    # And for A, B is still a worker like any other.
    response = _run(a, module, placement=_peer(b.node_id))
    assert response.executor_node_id == b.node_id


def _overrun(a: Daemon, b: Daemon, loop: bytes) -> tuple[str, tuple[Any, str, str]]:
    """An endless job on B whose client gives up after a few seconds: (job id, its error)."""
    job_id = _job_id()
    request = _request(
        loop, job_id, placement=_peer(b.node_id), max_fuel=1_000_000_000_000, timeout_ms=300_000
    )
    return job_id, rpc_error(lambda: a.stub.Submit(request, timeout=3.0))


def test_a_job_whose_client_deadline_passes_is_stopped_on_the_worker(
    net: list[Daemon], wasm: WasmModules
) -> None:
    a, b, _ = net
    job_id, (code, _, _) = _overrun(a, b, wasm.bytes("infinite_loop"))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # Nobody waits for the result any more: the worker stops the guest (long
    # before the job's own 300 s limit) ...
    finished = b.wait_for_event("job_finished", 30, predicate=lambda r: r["job_id"] == job_id)
    assert finished is not None
    assert finished["outcome"] == "cancelled"
    assert b.wait_for_event("job_abandoned", predicate=lambda r: r["job_id"] == job_id)
    wait_until(lambda: b.node_info().jobs_running == 0, timeout=20, what="B's guest stopping")
    # ... and A's events say the job was on B and may have run there.
    events = _history(a, job_id)
    failed = [e for e in events if e.kind == E.JOB_EVENT_KIND_ATTEMPT_FAILED]
    assert [(e.node_id, e.may_have_run) for e in failed] == [(b.node_id, True)]
    assert events[-1].kind == E.JOB_EVENT_KIND_FAILED


def test_a_client_whose_deadline_passed_is_told_where_its_job_may_have_run(
    net: list[Daemon], wasm: WasmModules
) -> None:
    a, b, _ = net
    _, (_, _, details) = _overrun(a, b, wasm.bytes("infinite_loop"))
    assert b.node_id[:16] in details, details
    assert "may have run" in details, details


def test_a_peer_cannot_take_a_job_id_this_nodes_own_client_is_using(
    net: list[Daemon], wasm: WasmModules
) -> None:
    """Jobs of local clients and of peers share one receipt store: one id space."""
    _, b, _ = net
    loop = wasm.bytes("infinite_loop")
    job_id = _job_id()
    local = capability_pb2.PlacementRequirements(mode=capability_pb2.PLACEMENT_MODE_LOCAL)
    request = _request(loop, job_id, placement=local, max_fuel=BIG_FUEL, timeout_ms=LONG_MS)
    key = NodeKey.from_seed(os.urandom(32))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda: b.stub.Submit(request, timeout=SUBMIT_S))
        wait_until(lambda: b.node_info().jobs_running == 1, timeout=20, what="B's own job")

        async def talk(conn: OverlayConnection) -> None:
            offer = job_pb2.JobOffer(
                job_id=job_id,
                module_sha256=hashlib.sha256(loop).hexdigest(),
                module_size=len(loop),
                requester_node_id=key.node_id,
                input_sha256=input_sha256((), (), b""),
            )
            offer.deadline.FromNanoseconds(time.time_ns() + 30_000_000_000)
            reply = job_pb2.JobResponse()
            reply.ParseFromString(await conn.request(OFFER_METHOD, offer.SerializeToString(), 20))
            assert reply.HasField("decline"), reply
            decline = job_pb2.JobDecline()
            decline.ParseFromString(reply.decline.payload)
            assert decline.reason == D.DECLINE_REASON_DUPLICATE_JOB

        _as_stranger(b, key, talk)
        assert b.stub.Cancel(service_pb2.CancelRequest(job_id=job_id), timeout=10).cancelled
        result = pending.result(timeout=30).result
    assert result.outcome == receipt_pb2.OUTCOME_CANCELLED
    assert _body(result).requester_node_id == b.node_id
