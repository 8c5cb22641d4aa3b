"""`JobExecutor` for jobs from other nodes: caller-chosen job ids and requesters,
capacity reservations, `cancel` and `state`.

Real wasmtime, a real receipt store and real signatures. The spinning guest is
``busy_loop.wat`` (no host calls; its fuel count reaches the store, so
`fuel_consumed > 0` shows a job really ran). Every wait is bounded; no test
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import WasmModules

from plasm_grpc.api import codec
from plasm_grpc.api.verify import ReceiptInput, verify_receipt
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import DEFAULT_LIMITS, MAXIMUM_LIMITS, ResourceLimits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.jobs.executor import AdmissionError, InputLimits, JobDone, JobExecutor, JobRequest
from plasm_grpc.logs import EventLog
from plasm_grpc.sandbox.cache import CacheSettings, ModuleCache
from plasm_grpc.sandbox.engine import SandboxEngine
from plasm_grpc.sandbox.runner import CancelFlag, Sandbox
from plasm_grpc.store.receipts import ReceiptStore

TEST_S = 60.0
WAIT_S = 10.0
SPIN_CPU_S = 0.1  # CPU a job thread must have spent before its guest counts as running
KEY = NodeKey.from_seed(hashlib.sha256(b"executor remote api test node").digest())
REQUESTER = hashlib.sha256(b"a requester").hexdigest()
AS_DEFAULT = ResourceLimits()  # zeros: the node's defaults
LONG = ResourceLimits(timeout_ms=300_000, max_fuel=MAXIMUM_LIMITS.max_fuel)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


def job_id(n: int) -> str:
    return f"{n:032x}"


@asynccontextmanager
async def make_executor(
    tmp_path: Path, *, slots: int = 2, queue: int = 2
) -> AsyncIterator[JobExecutor]:
    engine = SandboxEngine()
    store = ReceiptStore(tmp_path / "receipts.sqlite3")
    executor = JobExecutor(
        key=KEY,
        sandbox=Sandbox(engine, ModuleCache(engine, CacheSettings(directory=tmp_path), b"k" * 32)),
        store=store,
        encode_receipt=codec.encode_receipt,
        encode_envelope=lambda env: codec.envelope_to_pb(env).SerializeToString(),
        slots=slots,
        queue_limit=queue,
        default_limits=DEFAULT_LIMITS,
        max_limits=MAXIMUM_LIMITS,
        input_limits=InputLimits(),
        log=EventLog(io.StringIO()),
    )
    try:
        yield executor
    finally:
        executor.sandbox.cancel_all()  # a failed test must not leave guests spinning
        await executor.drain(WAIT_S)
        executor.close()
        store.close()
        engine.close()


def request(module: bytes, limits: ResourceLimits = AS_DEFAULT) -> JobRequest:
    return JobRequest(module_sha256="", module=module, args=(), env=(), stdin=b"", limits=limits)


async def warm(executor: JobExecutor, module: bytes) -> None:
    """Compile `module` ahead, so a job thread's CPU time is its guest's."""
    done = await executor.submit(request(module, ResourceLimits(max_fuel=1000)))
    assert done.execution.outcome is Outcome.OUT_OF_FUEL


def job_cpu_s() -> list[float]:
    """CPU time of each of the executor's worker threads."""
    return [
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name.startswith("job_") and t.ident is not None
    ]


async def until(what: str, condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


async def spinning(executor: JobExecutor, *job_ids: str) -> None:
    """Until these jobs run, and as many worker threads spin in their guests."""
    await until("running", lambda: all(executor.state(j) == "running" for j in job_ids))
    await until("spinning", lambda: sum(cpu >= SPIN_CPU_S for cpu in job_cpu_s()) >= len(job_ids))


def stored(executor: JobExecutor, done: JobDone, module: bytes) -> Any:
    """The stored receipt: the very envelope returned, validly signed by this node."""
    row = executor.store.get(done.job_id)
    assert row is not None
    envelope = codec.envelope_from_bytes(row.envelope)
    assert envelope == done.envelope
    result = verify_receipt(
        envelope,
        expected_executor_node_id=KEY.node_id,
        stdout=done.execution.stdout,
        stderr=done.execution.stderr,
        module=module,
        job_input=ReceiptInput(args=(), env=(), stdin=b""),
    )
    assert result.valid, result.checks
    assert result.body is not None
    assert result.body.job_id == done.job_id
    return result.body


async def finished(task: asyncio.Future[JobDone]) -> JobDone:
    return await asyncio.wait_for(asyncio.shield(task), WAIT_S)


# -- cancel -------------------------------------------------------------------------------


def test_cancelling_a_running_job_stops_it_alone(tmp_path: Path, wasm: WasmModules) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path, slots=2) as executor:
            await warm(executor, loop)
            a = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(1)))
            b = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(2)))
            await spinning(executor, job_id(1), job_id(2))

            assert executor.cancel(job_id(1))
            done_a = await finished(a)
            assert done_a.execution.outcome is Outcome.CANCELLED
            assert done_a.execution.detail == "cancelled by the requester"
            assert done_a.execution.fuel_consumed > 0  # stopped mid-flight
            body = stored(executor, done_a, loop)
            assert body.outcome == int(Outcome.CANCELLED)
            assert body.detail == "cancelled by the requester"
            assert executor.state(job_id(1)) is None
            assert not executor.cancel(job_id(1))  # finished: nothing to cancel

            # B was not touched: still running, its thread still spinning.
            assert not b.done()
            assert executor.state(job_id(2)) == "running"
            total = sum(job_cpu_s())
            await until("B spins on", lambda: sum(job_cpu_s()) >= total + SPIN_CPU_S)
            assert not b.done()

            assert executor.cancel(job_id(2), "no longer needed")
            done_b = await finished(b)
            assert done_b.execution.outcome is Outcome.CANCELLED
            assert done_b.execution.detail == "no longer needed"
            assert stored(executor, done_b, loop).outcome == int(Outcome.CANCELLED)

    run(main())


def test_a_queued_job_cancelled_before_it_starts_never_runs(
    tmp_path: Path, wasm: WasmModules
) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path, slots=1, queue=2) as executor:
            await warm(executor, loop)
            long = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(1)))
            await spinning(executor, job_id(1))
            queued = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(2)))
            await until("queued", lambda: executor.state(job_id(2)) == "queued")
            assert executor.queued == 1

            assert executor.cancel(job_id(2))
            # Ends without waiting for the only slot, which the long job still holds.
            done = await finished(queued)
            assert done.execution.outcome is Outcome.CANCELLED
            assert done.execution.fuel_consumed == 0
            assert stored(executor, done, loop).outcome == int(Outcome.CANCELLED)
            assert executor.state(job_id(1)) == "running"
            assert not long.done()

            # Cancelled before its task even reached the pool's queue: the same.
            early = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(3)))
            await until("admitted", lambda: executor.state(job_id(3)) is not None)
            assert executor.cancel(job_id(3), "changed my mind")
            done = await finished(early)
            assert done.execution.outcome is Outcome.CANCELLED
            assert done.execution.detail == "changed my mind"
            assert executor.state(job_id(1)) == "running"

            assert executor.cancel(job_id(1))
            assert (await finished(long)).execution.outcome is Outcome.CANCELLED
            assert executor.queued == 0
            assert executor.running == 0

    run(main())


def test_the_wall_time_limit_is_still_a_timeout(tmp_path: Path, wasm: WasmModules) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path) as executor:
            done = await executor.submit(request(loop, ResourceLimits(timeout_ms=50)))
            assert done.execution.outcome is Outcome.TIMEOUT
            assert done.execution.detail == "wall-time limit of 50 ms exceeded"
            assert stored(executor, done, loop).outcome == int(Outcome.TIMEOUT)

    run(main())


def test_cancel_all_still_cancels_every_job(tmp_path: Path, wasm: WasmModules) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path, slots=2) as executor:
            await warm(executor, loop)
            jobs = [
                asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(n)))
                for n in (1, 2, 3)  # the third is queued
            ]
            await spinning(executor, job_id(1), job_id(2))
            assert await executor.drain(0.05) is False
            executor.sandbox.cancel_all()
            for task in jobs:
                done = await finished(task)
                assert done.execution.outcome is Outcome.CANCELLED
                assert done.execution.detail == "cancelled: the node is shutting down"
                stored(executor, done, loop)

    run(main())


def test_a_client_that_goes_away_does_not_stop_the_job(tmp_path: Path, wasm: WasmModules) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path) as executor:
            client = asyncio.ensure_future(
                executor.submit(request(loop, ResourceLimits(timeout_ms=200)), job_id=job_id(7))
            )
            await until("admitted", lambda: executor.state(job_id(7)) is not None)
            client.cancel()
            await until("stored", lambda: executor.store.get(job_id(7)) is not None)
            row = executor.store.get(job_id(7))
            assert row is not None
            body = codec.decode_receipt_body(codec.envelope_from_bytes(row.envelope).payload)
            assert body.outcome == int(Outcome.TIMEOUT)

    run(main())


# -- job ids and requesters -----------------------------------------------------------------


def test_job_id_and_requester_go_into_the_receipt(tmp_path: Path, wasm: WasmModules) -> None:
    exit_0 = wasm.bytes("exit_0")

    async def main() -> None:
        async with make_executor(tmp_path) as executor:
            done = await executor.submit(
                request(exit_0), job_id=job_id(42), requester_node_id=REQUESTER
            )
            assert done.job_id == job_id(42)
            assert done.receipt.job_id == job_id(42)
            assert done.receipt.requester_node_id == REQUESTER
            body = stored(executor, done, exit_0)
            assert body.requester_node_id == REQUESTER
            assert body.outcome == int(Outcome.SUCCESS)

            own = await executor.submit(request(exit_0))
            assert len(own.job_id) == 32
            assert own.job_id != job_id(42)
            assert stored(executor, own, exit_0).requester_node_id == KEY.node_id

    run(main())


def test_a_job_id_is_never_run_twice(tmp_path: Path, wasm: WasmModules) -> None:
    loop = wasm.bytes("busy_loop")
    exit_0 = wasm.bytes("exit_0")

    async def main() -> None:
        async with make_executor(tmp_path) as executor:
            first = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(5)))
            await until("admitted", lambda: executor.state(job_id(5)) is not None)
            with pytest.raises(AdmissionError, match="already admitted") as admitted:
                await executor.submit(request(exit_0), job_id=job_id(5))
            assert admitted.value.reason == "INVALID_REQUEST"

            assert executor.cancel(job_id(5))
            await finished(first)
            with pytest.raises(AdmissionError, match="already used") as used:
                await executor.submit(request(exit_0), job_id=job_id(5))
            assert used.value.reason == "INVALID_REQUEST"
            assert executor.capacity_left == executor.slots + executor.queue_limit

            for bad_id, requester in (
                ("XYZ", None),
                (job_id(0xAB).upper(), None),
                (job_id(6), "1"),
            ):
                with pytest.raises(AdmissionError) as bad:
                    await executor.submit(
                        request(exit_0), job_id=bad_id, requester_node_id=requester
                    )
                assert bad.value.reason == "INVALID_REQUEST"
            assert executor.store.get(job_id(6)) is None

    run(main())


# -- reservations ---------------------------------------------------------------------------


def test_reservations_hold_capacity(tmp_path: Path, wasm: WasmModules) -> None:
    exit_0 = wasm.bytes("exit_0")

    async def main() -> None:
        async with make_executor(tmp_path, slots=1, queue=1) as executor:
            assert executor.capacity_left == 2
            assert executor.reserved_count == 0
            executor.reserve()
            executor.reserve()
            assert executor.reserved_count == 2
            assert executor.capacity_left == 0
            with pytest.raises(AdmissionError) as busy:
                executor.reserve()
            assert busy.value.reason == "BUSY"
            with pytest.raises(AdmissionError) as busy:
                await executor.submit(request(exit_0))  # no reservation: no room
            assert busy.value.reason == "BUSY"

            # A reserved submit uses its reservation, not free capacity.
            done = await executor.submit(request(exit_0), job_id=job_id(1), reserved=True)
            assert done.execution.outcome is Outcome.SUCCESS
            assert executor.reserved_count == 1
            assert executor.capacity_left == 1

            # Refused (here: a module this node does not hold): the reservation is released.
            by_hash = JobRequest(
                module_sha256="ab" * 32, module=b"", args=(), env=(), stdin=b"", limits=LONG
            )
            with pytest.raises(AdmissionError) as missing:
                await executor.submit(by_hash, reserved=True)
            assert missing.value.reason == "MODULE_NOT_FOUND"
            assert executor.reserved_count == 0
            assert executor.capacity_left == 2

            executor.reserve()
            executor.release_reservation()
            assert executor.reserved_count == 0
            with pytest.raises(RuntimeError):
                executor.release_reservation()
            with pytest.raises(RuntimeError):
                await executor.submit(request(exit_0), reserved=True)

    run(main())


def test_reservations_count_against_running_and_queued_jobs(
    tmp_path: Path, wasm: WasmModules
) -> None:
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path, slots=1, queue=1) as executor:
            running = asyncio.ensure_future(executor.submit(request(loop, LONG), job_id=job_id(1)))
            await until("running", lambda: executor.state(job_id(1)) == "running")
            assert executor.capacity_left == 1
            executor.reserve()
            assert executor.capacity_left == 0
            with pytest.raises(AdmissionError) as busy:
                executor.reserve()
            assert busy.value.reason == "BUSY"
            queued = asyncio.ensure_future(
                executor.submit(request(loop, LONG), job_id=job_id(2), reserved=True)
            )
            await until("queued", lambda: executor.state(job_id(2)) == "queued")
            assert executor.reserved_count == 0
            assert executor.capacity_left == 0
            for task, n in ((queued, 2), (running, 1)):
                assert executor.cancel(job_id(n))
                assert (await finished(task)).execution.outcome is Outcome.CANCELLED
            assert executor.capacity_left == 2

    run(main())


def test_draining_refuses_reservations_and_reserved_jobs(tmp_path: Path, wasm: WasmModules) -> None:
    exit_0 = wasm.bytes("exit_0")

    async def main() -> None:
        async with make_executor(tmp_path) as executor:
            executor.reserve()
            assert not executor.draining
            assert await executor.drain(WAIT_S)
            assert executor.draining
            with pytest.raises(AdmissionError) as refused:
                executor.reserve()
            assert refused.value.reason == "SHUTTING_DOWN"
            assert executor.reserved_count == 1
            with pytest.raises(AdmissionError) as refused:
                await executor.submit(request(exit_0), job_id=job_id(1), reserved=True)
            assert refused.value.reason == "SHUTTING_DOWN"
            assert executor.reserved_count == 0
            assert executor.store.get(job_id(1)) is None

    run(main())


def test_a_flag_set_before_admission_cancels_the_job_when_it_is_admitted(
    tmp_path: Path, wasm: WasmModules
) -> None:
    """A caller that must cancel before the executor has the job (the worker,
    when its requester goes away at once) sets the flag it passes in."""
    loop = wasm.bytes("busy_loop")

    async def main() -> None:
        async with make_executor(tmp_path, slots=1, queue=2) as executor:
            await warm(executor, loop)
            flag = CancelFlag()
            assert flag.cancel("the requester went away")
            assert executor.state(job_id(7)) is None  # nothing to cancel yet
            assert not executor.cancel(job_id(7))
            done = await finished(
                asyncio.ensure_future(
                    executor.submit(request(loop, LONG), job_id=job_id(7), cancel=flag)
                )
            )
            assert done.execution.outcome is Outcome.CANCELLED
            assert done.execution.detail == "the requester went away"
            assert done.execution.fuel_consumed == 0
            assert stored(executor, done, loop).outcome == int(Outcome.CANCELLED)

    run(main())
