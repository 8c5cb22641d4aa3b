"""Stopping one job in the sandbox: `CancelFlag`, checked by each store's epoch callback.

Real wasmtime throughout. The spinning guest is ``busy_loop.wat`` (no host
calls; its fuel count reaches the store, so `fuel_consumed > 0` shows a job
really ran). A guest "has started" when its worker thread has spent CPU time
spinning (the module is compiled beforehand, so that time is the guest's).
Waits are bounded, and no test asserts how long anything took.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from conftest import WasmModules

from plasm_grpc.core.limits import DEFAULT_LIMITS
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.sandbox import runner
from plasm_grpc.sandbox.cache import CacheSettings, ModuleCache
from plasm_grpc.sandbox.engine import SandboxEngine
from plasm_grpc.sandbox.runner import CancelFlag, Execution, JobSpec, Sandbox

WAIT_S = 10.0
LONG_MS = 300_000  # far beyond any test: only a cancel ends these loops
SPIN_CPU_S = 0.1  # CPU a worker thread must have spent before its guest counts as running


@pytest.fixture
def engine() -> Iterator[SandboxEngine]:
    # Per test: cancel_all marks the sandbox, and stores must not outlive their engine.
    e = SandboxEngine()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def sandbox(engine: SandboxEngine, tmp_path: Path) -> Sandbox:
    return Sandbox(engine, ModuleCache(engine, CacheSettings(directory=tmp_path), b"k" * 32))


def spec(module: bytes, **limits: int) -> JobSpec:
    return JobSpec(
        module_sha256=hashlib.sha256(module).hexdigest(),
        args=(),
        env=(),
        stdin=b"",
        limits=dataclasses.replace(DEFAULT_LIMITS, **limits),
    )


class Job:
    """One sandbox run on its own thread."""

    def __init__(self, sandbox: Sandbox, module: bytes, flag: CancelFlag | None, **limits: int):
        self.result: Execution | None = None
        self.thread = threading.Thread(target=self._run, args=(sandbox, module, flag, limits))
        self.thread.start()

    def _run(
        self, sandbox: Sandbox, module: bytes, flag: CancelFlag | None, limits: dict[str, int]
    ) -> None:
        self.result = sandbox.run(spec(module, **limits), module, flag)

    def cpu_s(self) -> float:
        ident = self.thread.ident
        assert ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(ident))

    def wait_spinning(self, more_than: float = SPIN_CPU_S) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.cpu_s() < more_than:
            assert self.thread.is_alive(), "the guest ended before it was cancelled"
            assert time.monotonic() < deadline, "the guest never started spinning"
            time.sleep(0.01)

    def finish(self) -> Execution:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the job did not stop"
        assert self.result is not None
        return self.result


def loop_module(wasm: WasmModules, sandbox: Sandbox) -> bytes:
    """The spinning guest, compiled ahead so a worker's CPU time is its guest's."""
    module = wasm.bytes("busy_loop")
    warm = sandbox.run(spec(module, max_fuel=1000), module)
    assert warm.outcome is Outcome.OUT_OF_FUEL
    return module


def test_cancel_flag_basics() -> None:
    flag = CancelFlag()
    assert not flag.cancelled
    assert flag.reason == ""
    assert flag.cancel("first")
    assert not flag.cancel("second")  # the first reason is the one reported
    assert flag.cancelled
    assert flag.reason == "first"


def test_cancelling_one_running_guest_leaves_the_other_running(
    sandbox: Sandbox, wasm: WasmModules
) -> None:
    module = loop_module(wasm, sandbox)
    flag_a, flag_b = CancelFlag(), CancelFlag()
    a = Job(sandbox, module, flag_a, timeout_ms=LONG_MS, max_fuel=10**15)
    b = Job(sandbox, module, flag_b, timeout_ms=LONG_MS, max_fuel=10**15)
    try:
        a.wait_spinning()
        b.wait_spinning()
        flag_a.cancel("stop A")
        ex_a = a.finish()
        assert ex_a.outcome is Outcome.CANCELLED
        assert ex_a.detail == "stop A"
        assert ex_a.trap_code == ""
        assert ex_a.exit_code == 0
        assert ex_a.fuel_consumed > 0  # it ran: cancelled mid-flight, not before starting
        # B was not touched: still spinning after A ended.
        assert b.thread.is_alive()
        b.wait_spinning(b.cpu_s() + SPIN_CPU_S)
        assert b.result is None
    finally:
        flag_a.cancel("cleanup")
        flag_b.cancel("stop B")
    ex_b = b.finish()
    assert ex_b.outcome is Outcome.CANCELLED
    assert ex_b.detail == "stop B"
    assert ex_b.fuel_consumed > 0


def test_a_job_cancelled_before_it_starts_is_not_even_compiled(
    sandbox: Sandbox, wasm: WasmModules
) -> None:
    garbage = wasm.bytes("garbage")  # would be INVALID_MODULE if it were compiled
    flag = CancelFlag()
    flag.cancel("cancelled by the requester")
    ex = sandbox.run(spec(garbage), garbage, flag)
    assert ex.outcome is Outcome.CANCELLED
    assert ex.detail == "cancelled by the requester"
    assert ex.fuel_consumed == 0
    assert ex.stdout == b""
    assert sandbox.cache.cached_count() == 0

    exit_3 = wasm.bytes("exit_3")
    ex = sandbox.run(spec(exit_3), exit_3, flag)
    assert ex.outcome is Outcome.CANCELLED
    assert ex.exit_code == 0


def test_an_unset_flag_changes_nothing(sandbox: Sandbox, wasm: WasmModules) -> None:
    exit_3 = wasm.bytes("exit_3")
    ex = sandbox.run(spec(exit_3), exit_3, CancelFlag())
    assert ex.outcome is Outcome.NONZERO_EXIT
    assert ex.exit_code == 3


def test_the_wall_time_limit_is_still_a_timeout(sandbox: Sandbox, wasm: WasmModules) -> None:
    module = wasm.bytes("busy_loop")
    ex = sandbox.run(spec(module, timeout_ms=50), module, CancelFlag())
    assert ex.outcome is Outcome.TIMEOUT
    assert ex.detail == "wall-time limit of 50 ms exceeded"
    assert ex.trap_code == ""
    assert 0 < ex.fuel_consumed < DEFAULT_LIMITS.max_fuel
    assert ex.wall_time_us >= 50_000  # never stopped before its budget


def test_cancel_all_still_stops_every_guest(sandbox: Sandbox, wasm: WasmModules) -> None:
    module = loop_module(wasm, sandbox)
    jobs = [
        Job(sandbox, module, CancelFlag(), timeout_ms=LONG_MS, max_fuel=10**15),
        Job(sandbox, module, None, timeout_ms=LONG_MS, max_fuel=10**15),
    ]
    for job in jobs:
        job.wait_spinning()
    sandbox.cancel_all()
    for job in jobs:
        ex = job.finish()
        assert ex.outcome is Outcome.CANCELLED
        assert ex.detail == runner.SHUTDOWN_DETAIL
        assert ex.fuel_consumed > 0
    # And a job that comes after the shutdown never starts.
    ex = sandbox.run(spec(module), module, CancelFlag())
    assert ex.outcome is Outcome.CANCELLED
    assert ex.fuel_consumed == 0


class _BrokenFlag(CancelFlag):
    """Fine for the checks before the guest starts, then raises (in the epoch callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    @property
    def cancelled(self) -> bool:
        self.reads += 1
        if self.reads > 2:
            raise RuntimeError("broken flag")
        return False


def test_an_error_in_the_epoch_callback_stops_the_guest_and_never_escapes(
    sandbox: Sandbox, wasm: WasmModules
) -> None:
    # An exception escaping a ctypes callback would be printed as "unraisable",
    # which pytest turns into an error (filterwarnings = error).
    module = loop_module(wasm, sandbox)
    flag = _BrokenFlag()
    ex = Job(sandbox, module, flag, timeout_ms=LONG_MS, max_fuel=10**15).finish()
    assert flag.reads > 2
    assert ex.outcome is Outcome.TRAP
    assert "the sandbox stopped the guest" in ex.detail


def _open(store: wasmtime.Store) -> bool:
    try:
        store.ptr()
    except ValueError:  # closed
        return False
    return True


def _live_counts() -> list[int]:
    """Open wasmtime stores, epoch watches and their ctypes thunks, without a GC pass.

    Closed store wrappers are not counted: a trap's traceback keeps its
    (already closed, memory-free) wrapper in a cycle until the next GC pass.
    """
    objects = gc.get_objects()
    return [
        sum(1 for o in objects if isinstance(o, wasmtime.Store) and _open(o)),
        sum(1 for o in objects if isinstance(o, runner._EpochWatch)),
        sum(1 for o in objects if isinstance(o, runner._EpochCallback)),
    ]


def test_stores_and_epoch_callbacks_do_not_leak(sandbox: Sandbox, wasm: WasmModules) -> None:
    exit_0 = wasm.bytes("exit_0")
    loop = loop_module(wasm, sandbox)
    gc.collect()
    before = _live_counts()
    outcomes: set[Outcome] = set()
    for i in range(200):
        flag = CancelFlag()
        if i % 50 == 0:  # timeouts and cancels, from the epoch callback
            ex = sandbox.run(spec(loop, timeout_ms=20), loop, flag)
        elif i % 50 == 25:
            timer = threading.Timer(0.02, flag.cancel, ("stop",))
            timer.start()
            ex = sandbox.run(spec(loop, timeout_ms=LONG_MS, max_fuel=10**15), loop, flag)
            timer.join()
        elif i % 2:
            ex = sandbox.run(spec(loop, max_fuel=10_000), loop, flag)
        else:
            ex = sandbox.run(spec(exit_0), exit_0, flag)
        outcomes.add(ex.outcome)
    assert outcomes == {Outcome.SUCCESS, Outcome.OUT_OF_FUEL, Outcome.TIMEOUT, Outcome.CANCELLED}
    # Closed and freed by reference counting as each job ended, not left for the GC.
    assert _live_counts() == before
