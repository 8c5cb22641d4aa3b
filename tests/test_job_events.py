"""The job event bus, its conversion to `plasm.v1.JobEvent`, and the Watch and
Cancel RPCs over a real in-process gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import grpc
import pytest
from conftest import REASON_KEY
from plasm.v1 import errors_pb2, job_pb2, receipt_pb2, service_pb2, service_pb2_grpc

from plasm_grpc.api import codec
from plasm_grpc.api.service import NodeFacts, PlasmServicer
from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.jobs.events import DeclineReason, EventKind, JobEvent
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.jobs.events import (
    JobEventBus,
    JobEvictedError,
    JobNotFoundError,
    SlowWatcherError,
)
from plasm_grpc.logs import EventLog

JOB = "0123456789abcdef0123456789abcdef"
JOB2 = "fedcba9876543210fedcba9876543210"
NODE_A = "a" * 64
NODE_B = "b" * 64
TEST_S = 20.0
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TEST_S))


def ev(kind: EventKind, job_id: str = JOB, at_ns: int = 0, **fields: Any) -> JobEvent:
    if kind is EventKind.FAILED:
        fields.setdefault("error_reason", "NO_WORKER")
    return JobEvent(job_id=job_id, kind=kind, at_ns=at_ns, **fields)


def life(job_id: str = JOB) -> list[JobEvent]:
    """A job declined by A, run on B."""
    return [
        ev(EventKind.SUBMITTED, job_id, 1),
        ev(EventKind.OFFERED, job_id, 2, attempt=1, node_id=NODE_A),
        ev(
            EventKind.DECLINED,
            job_id,
            3,
            attempt=1,
            node_id=NODE_A,
            decline_reason=DeclineReason.BUSY,
            detail="all 2 slots taken",
        ),
        ev(EventKind.OFFERED, job_id, 4, attempt=2, node_id=NODE_B),
        ev(EventKind.ACCEPTED, job_id, 5, attempt=2, node_id=NODE_B),
        ev(EventKind.RUNNING, job_id, 6, attempt=2, node_id=NODE_B),
        ev(EventKind.FINISHED, job_id, 7, attempt=2, node_id=NODE_B, outcome=Outcome.SUCCESS),
    ]


async def collect(stream: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [e async for e in stream]


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Yield to the loop until `condition` holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# -- the bus --------------------------------------------------------------------------


def test_a_watcher_gets_every_event_in_order_and_the_stream_ends_at_the_terminal_one() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(life()[0])
        task = asyncio.ensure_future(collect(bus.watch(JOB, wait_s=0)))
        await until(lambda: bus.watchers(JOB) == 1, "the watcher to subscribe")
        for event in life()[1:]:
            bus.publish(event)
        assert await task == life()
        assert bus.watchers() == 0

    run(main())


def test_a_late_watcher_gets_the_history_of_a_finished_job() -> None:
    async def main() -> None:
        bus = JobEventBus()
        for event in life():
            bus.publish(event)
        assert bus.known(JOB)
        assert bus.ended(JOB)
        assert bus.history(JOB) == life()
        assert await collect(bus.watch(JOB, wait_s=0)) == life()
        assert await collect(bus.watch(JOB, wait_s=0)) == life(), "watchable again"

    run(main())


def test_a_watcher_joining_midway_gets_history_then_live_events_without_gaps_or_repeats() -> None:
    async def main() -> None:
        bus = JobEventBus()
        events = life()
        for event in events[:3]:
            bus.publish(event)
        stream = bus.watch(JOB, wait_s=0)
        got = [await anext(stream)]  # subscribed now; two more are in its backlog
        for event in events[3:]:
            bus.publish(event)
        got += await collect(stream)
        assert got == events

    run(main())


def test_watch_waits_for_a_job_that_has_no_event_yet() -> None:
    async def main() -> None:
        bus = JobEventBus()
        task = asyncio.ensure_future(collect(bus.watch(JOB, wait_s=TEST_S)))
        await until(lambda: bus.waiting() == 1, "the watcher to wait")
        assert not bus.known(JOB)
        for event in life():
            bus.publish(event)
        assert await task == life()
        assert bus.waiting() == 0

    run(main())


def test_watch_of_an_unknown_job_raises_after_its_wait() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(ev(EventKind.SUBMITTED, JOB2))  # another job does not wake it
        with pytest.raises(JobNotFoundError, match=JOB):
            await collect(bus.watch(JOB, wait_s=0.05))
        with pytest.raises(JobNotFoundError):
            await collect(bus.watch(JOB, wait_s=0))
        assert bus.waiting() == 0

    run(main())


def test_events_after_the_terminal_one_are_dropped() -> None:
    async def main() -> None:
        bus = JobEventBus()
        for event in life():
            bus.publish(event)
        bus.publish(ev(EventKind.RUNNING, attempt=3, node_id=NODE_A))
        bus.publish(ev(EventKind.FAILED))
        assert bus.history(JOB) == life()
        assert bus.stats.events_after_end == 2
        assert await collect(bus.watch(JOB, wait_s=0)) == life()

    run(main())


def test_a_failed_job_ends_the_stream_too() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(ev(EventKind.SUBMITTED))
        task = asyncio.ensure_future(collect(bus.watch(JOB, wait_s=0)))
        await until(lambda: bus.watchers(JOB) == 1, "the watcher to subscribe")
        bus.publish(ev(EventKind.FAILED, detail="no worker"))
        assert [e.kind for e in await task] == [EventKind.SUBMITTED, EventKind.FAILED]

    run(main())


def test_a_long_history_keeps_its_first_and_newest_events_and_always_the_terminal_one() -> None:
    bus = JobEventBus(max_events_per_job=6)
    offers = [ev(EventKind.OFFERED, at_ns=i, attempt=i, node_id=NODE_A) for i in range(1, 11)]
    for event in offers:
        bus.publish(event)
    terminal = ev(EventKind.FAILED, at_ns=99)
    bus.publish(terminal)
    assert bus.history(JOB) == [*offers[:3], *offers[-2:], terminal]
    assert bus.dropped(JOB) == 5
    assert bus.stats.events_dropped == 5


def test_finished_jobs_are_evicted_oldest_finished_first_and_unfinished_ones_stay() -> None:
    bus = JobEventBus(max_jobs=3)
    jobs = [f"{i:032x}" for i in range(5)]
    bus.publish(ev(EventKind.SUBMITTED, jobs[0]))  # unfinished, oldest
    for job_id in jobs[1:3]:
        bus.publish(ev(EventKind.SUBMITTED, job_id))
    bus.publish(ev(EventKind.FAILED, jobs[2]))  # finished first
    bus.publish(ev(EventKind.FAILED, jobs[1]))
    bus.publish(ev(EventKind.SUBMITTED, jobs[3]))  # evicts jobs[2]
    assert [bus.known(j) for j in jobs[:4]] == [True, True, False, True]
    bus.publish(ev(EventKind.SUBMITTED, jobs[4]))  # evicts jobs[1]
    assert [bus.known(j) for j in jobs] == [True, False, False, True, True]
    assert bus.stats.finished_evicted == 2
    assert bus.stats.unfinished_evicted == 0


def test_past_max_jobs_unfinished_the_oldest_is_evicted_and_its_watchers_told() -> None:
    async def main() -> None:
        bus = JobEventBus(max_jobs=2)
        bus.publish(ev(EventKind.SUBMITTED, JOB))
        bus.publish(ev(EventKind.SUBMITTED, JOB2))
        task = asyncio.ensure_future(collect(bus.watch(JOB, wait_s=0)))
        await until(lambda: bus.watchers(JOB) == 1, "the watcher to subscribe")
        third = "3" * 32
        bus.publish(ev(EventKind.SUBMITTED, third))
        with pytest.raises(JobEvictedError):
            await task
        assert not bus.known(JOB)
        assert bus.known(JOB2)
        assert bus.known(third)
        assert bus.stats.unfinished_evicted == 1

    run(main())


def test_a_slow_watcher_is_ended_and_never_blocks_publish() -> None:
    async def main() -> None:
        bus = JobEventBus(subscriber_queue=2)
        bus.publish(ev(EventKind.SUBMITTED))
        stream = bus.watch(JOB, wait_s=0)
        assert (await anext(stream)).kind is EventKind.SUBMITTED
        assert bus.watchers(JOB) == 1
        for i in range(1, 6):  # the watcher reads none of these
            bus.publish(ev(EventKind.OFFERED, attempt=i, node_id=NODE_A))
        assert bus.watchers(JOB) == 0
        assert bus.stats.slow_watchers == 1
        with pytest.raises(SlowWatcherError):
            await anext(stream)
        # The history has everything; a new watcher catches up.
        bus.publish(ev(EventKind.FAILED))
        assert len(await collect(bus.watch(JOB, wait_s=0))) == 7

    run(main())


def test_a_cancelled_watcher_leaves_no_subscription() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(ev(EventKind.SUBMITTED))
        task = asyncio.ensure_future(collect(bus.watch(JOB, wait_s=0)))
        await until(lambda: bus.watchers(JOB) == 1, "the watcher to subscribe")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bus.watchers() == 0
        # And one waiting for an unknown job.
        waiting = asyncio.ensure_future(collect(bus.watch(JOB2, wait_s=TEST_S)))
        await until(lambda: bus.waiting() == 1, "the watcher to wait")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert bus.waiting() == 0

    run(main())


def test_closing_a_watch_early_unsubscribes() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(ev(EventKind.SUBMITTED))
        async with contextlib.aclosing(bus.watch(JOB, wait_s=0)) as stream:
            await anext(stream)
            assert bus.watchers(JOB) == 1
        assert bus.watchers() == 0

    run(main())


def test_bus_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        JobEventBus(max_jobs=0)
    with pytest.raises(ValueError, match="max_events_per_job"):
        JobEventBus(max_events_per_job=1)


# -- conversion ---------------------------------------------------------------------------


def test_core_enums_mirror_the_proto_enums() -> None:
    for kind in EventKind:
        assert job_pb2.JobEventKind.Value(f"JOB_EVENT_KIND_{kind.name}") == kind
    for reason in DeclineReason:
        assert job_pb2.DeclineReason.Value(f"DECLINE_REASON_{reason.name}") == reason
    assert len(job_pb2.JobEventKind.keys()) == len(EventKind) + 1  # + UNSPECIFIED
    assert len(job_pb2.DeclineReason.keys()) == len(DeclineReason) + 1


def test_job_event_to_pb_carries_every_field() -> None:
    decline = SignedEnvelope(payload=b"p", signature=b"s" * 64, signer_public_key=b"k" * 32)
    declined = codec.job_event_to_pb(
        ev(
            EventKind.DECLINED,
            at_ns=1_700_000_000_123_456_789,
            attempt=2,
            node_id=NODE_A,
            decline_reason=DeclineReason.LIMITS_TOO_HIGH,
            detail="memory",
            decline=decline,
        )
    )
    assert declined.job_id == JOB
    assert declined.kind == job_pb2.JOB_EVENT_KIND_DECLINED
    assert declined.at.ToNanoseconds() == 1_700_000_000_123_456_789
    assert (declined.attempt, declined.node_id, declined.detail) == (2, NODE_A, "memory")
    assert declined.decline_reason == job_pb2.DECLINE_REASON_LIMITS_TOO_HIGH
    assert declined.decline == codec.envelope_to_pb(decline)
    assert declined.outcome == receipt_pb2.OUTCOME_UNSPECIFIED

    finished = codec.job_event_to_pb(
        ev(EventKind.FINISHED, attempt=1, node_id=NODE_B, outcome=Outcome.NONZERO_EXIT, exit_code=7)
    )
    assert finished.outcome == receipt_pb2.OUTCOME_NONZERO_EXIT
    assert finished.exit_code == 7
    assert not finished.HasField("decline")

    failed_attempt = codec.job_event_to_pb(
        ev(EventKind.ATTEMPT_FAILED, attempt=1, may_have_run=True, detail="timeout")
    )
    assert failed_attempt.may_have_run
    assert codec.job_event_to_pb(ev(EventKind.TRANSFERRING, module_bytes=5)).module_bytes == 5

    failed = codec.job_event_to_pb(ev(EventKind.FAILED, error_reason="JOB_NOT_FOUND"))
    assert failed.error_reason == errors_pb2.ERROR_REASON_JOB_NOT_FOUND


def test_job_event_to_pb_refuses_an_unknown_error_reason() -> None:
    with pytest.raises(ValueError, match="NOT_A_REASON"):
        codec.job_event_to_pb(ev(EventKind.FAILED, error_reason="NOT_A_REASON"))


# -- Watch and Cancel over gRPC --------------------------------------------------------------


class Cancels:
    """A cancel hook: JOB is running, JOB2 has ended, anything else is unknown."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, job_id: str) -> bool | None:
        self.asked.append(job_id)
        return {JOB: True, JOB2: False}.get(job_id)


async def with_server(
    facts: NodeFacts, body: Callable[[service_pb2_grpc.PlasmServiceStub], Awaitable[None]]
) -> None:
    server = grpc.aio.server()
    servicer = PlasmServicer(cast(Any, None), facts, EventLog(io.StringIO()))
    service_pb2_grpc.add_PlasmServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(service_pb2_grpc.PlasmServiceStub(channel))
    finally:
        await server.stop(None)


def facts(events: JobEventBus | None, cancel: Cancels | None = None) -> NodeFacts:
    return NodeFacts(grpc_addresses=(), started_at_ns=0, events=events, cancel_job=cancel)


def status(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    reasons = [v for k, v in err.trailing_metadata() or () if k == REASON_KEY]
    return err.code(), str(reasons[0]) if reasons else ""


def test_watch_streams_history_then_live_events_and_ends() -> None:
    bus = JobEventBus()
    events = life()

    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        bus.publish(events[0])
        call = stub.Watch(service_pb2.WatchRequest(job_id=JOB), timeout=TEST_S)
        first = await call.read()
        assert isinstance(first, service_pb2.WatchResponse)
        assert first.event == codec.job_event_to_pb(events[0])
        for event in events[1:]:
            bus.publish(event)
        rest = []
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, service_pb2.WatchResponse)
            rest.append(response.event)
        assert rest == [codec.job_event_to_pb(e) for e in events[1:]]
        assert await call.code() == grpc.StatusCode.OK

    run(with_server(facts(bus), body))
    assert bus.watchers() == 0


def test_watch_waits_for_a_job_submitted_after_it() -> None:
    bus = JobEventBus()

    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        call = stub.Watch(service_pb2.WatchRequest(job_id=JOB), timeout=TEST_S)
        await until(lambda: bus.waiting() == 1, "Watch to wait for the job")
        for event in life():
            bus.publish(event)
        assert len([r async for r in call]) == len(life())

    run(with_server(facts(bus), body))


@pytest.mark.parametrize("has_bus", [True, False], ids=["unknown", "no-events"])
def test_watch_of_an_unknown_job_is_not_found_within_the_deadline(has_bus: bool) -> None:
    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        # A 1 s deadline: the wait is cut short to answer NOT_FOUND before it.
        call = stub.Watch(service_pb2.WatchRequest(job_id=JOB), timeout=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert status(info.value) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_JOB_NOT_FOUND")

    run(with_server(facts(JobEventBus() if has_bus else None), body))


@pytest.mark.parametrize("method", ["Watch", "Cancel"])
def test_a_malformed_job_id_is_an_invalid_request(method: str) -> None:
    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        async def call() -> object:
            if method == "Watch":
                return await stub.Watch(
                    service_pb2.WatchRequest(job_id="XYZ"), timeout=TEST_S
                ).read()
            return await stub.Cancel(service_pb2.CancelRequest(job_id="XYZ"), timeout=TEST_S)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert status(info.value) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_REQUEST",
        )

    run(with_server(facts(JobEventBus(), Cancels()), body))


def test_a_client_that_goes_away_leaves_no_subscriber() -> None:
    bus = JobEventBus()

    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        bus.publish(ev(EventKind.SUBMITTED))
        call = stub.Watch(service_pb2.WatchRequest(job_id=JOB), timeout=TEST_S)
        await call.read()
        assert bus.watchers(JOB) == 1
        call.cancel()
        await until(lambda: bus.watchers() == 0, "the server to drop the subscriber")

    run(with_server(facts(bus), body))


def test_cancel_reports_cancelled_ended_and_unknown_jobs() -> None:
    cancels = Cancels()

    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        running = await stub.Cancel(service_pb2.CancelRequest(job_id=JOB), timeout=TEST_S)
        assert running.cancelled is True
        ended = await stub.Cancel(service_pb2.CancelRequest(job_id=JOB2), timeout=TEST_S)
        assert ended.cancelled is False
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Cancel(service_pb2.CancelRequest(job_id="9" * 32), timeout=TEST_S)
        assert status(info.value) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_JOB_NOT_FOUND")

    run(with_server(facts(JobEventBus(), cancels), body))
    assert cancels.asked == [JOB, JOB2, "9" * 32]


def test_cancel_without_a_hook_knows_only_ended_jobs() -> None:
    bus = JobEventBus()
    for event in life(JOB2):
        bus.publish(event)

    async def body(stub: service_pb2_grpc.PlasmServiceStub) -> None:
        ended = await stub.Cancel(service_pb2.CancelRequest(job_id=JOB2), timeout=TEST_S)
        assert ended.cancelled is False
        for job_id in (JOB, "9" * 32):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Cancel(service_pb2.CancelRequest(job_id=job_id), timeout=TEST_S)
            assert status(info.value)[1] == "ERROR_REASON_JOB_NOT_FOUND"

    bus.publish(ev(EventKind.SUBMITTED))  # JOB: running, but nothing can cancel it
    run(with_server(facts(bus), body))


def test_a_follower_gets_every_jobs_new_events_and_is_ended_when_it_falls_behind() -> None:
    async def main() -> None:
        bus = JobEventBus()
        bus.publish(ev(EventKind.SUBMITTED, JOB, 1))  # before following: not replayed
        got: list[JobEvent] = []

        async def follow() -> None:
            async with contextlib.aclosing(bus.follow(backlog=8)) as stream:
                async for event in stream:
                    got.append(event)
                    if len(got) == 3:
                        return

        task = asyncio.create_task(follow())
        while bus.followers() == 0:
            await asyncio.sleep(0)
        for event in (life(JOB)[1], ev(EventKind.SUBMITTED, JOB2, 5), life(JOB)[-1]):
            bus.publish(event)
            await asyncio.sleep(0)
        await task
        assert [(e.job_id, e.kind) for e in got] == [
            (JOB, EventKind.OFFERED),
            (JOB2, EventKind.SUBMITTED),
            (JOB, life(JOB)[-1].kind),
        ]
        assert bus.followers() == 0  # closing the iterator unsubscribed
        assert bus.job_ids() == [JOB, JOB2]
        slow = bus.follow(backlog=2)
        first = asyncio.ensure_future(anext(slow))
        await asyncio.sleep(0)
        for n in range(4):  # published at once: more than its backlog
            bus.publish(ev(EventKind.OFFERED, JOB2, 10 + n, attempt=n + 1, node_id=NODE_A))
        with pytest.raises(SlowWatcherError):  # its queue is dropped: watch the list again
            await first
        assert bus.followers() == 0

    run(main())
