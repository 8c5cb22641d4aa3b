"""Guests that try to get around the sandbox's limits (found in review).

Each module reports what the host returned by writing it to stdout, so the
tests assert behaviour, not durations; a regression to an unbounded host call
shows up as the suite's timeout instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from plasm_grpc.core.limits import DEFAULT_LIMITS
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.sandbox.cache import CacheSettings, ModuleCache
from plasm_grpc.sandbox.engine import EngineSettings, SandboxEngine
from plasm_grpc.sandbox.runner import Execution, JobSpec, Sandbox

# A tiny runtime for the modules below: report(value) writes 4 LE bytes to stdout.
PRELUDE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func $report (param $v i32)
    (i32.store (i32.const 0) (local.get $v))
    (i32.store (i32.const 16) (i32.const 0))  ;; iov.ptr
    (i32.store (i32.const 20) (i32.const 4))  ;; iov.len
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24))))
"""


def module(body: str, extra: str = "") -> bytes:
    wat = f'(module {PRELUDE} {extra} (func (export "_start") {body}))'
    return bytes(wasmtime.wat2wasm(wat))


@pytest.fixture(params=[True, False], ids=["pooling", "on-demand"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    engine = SandboxEngine(EngineSettings(pooling=request.param))
    cache = ModuleCache(engine, CacheSettings(directory=tmp_path), b"k" * 32)
    try:
        yield Sandbox(engine, cache)
    finally:
        engine.close()


def run(sandbox: Sandbox, wasm: bytes, **limits: int) -> Execution:
    spec = JobSpec(
        module_sha256=hashlib.sha256(wasm).hexdigest(),
        args=("m",),
        env=(),
        stdin=b"",
        limits=dataclasses.replace(DEFAULT_LIMITS, **limits),
    )
    return sandbox.run(spec, wasm)


def reported(ex: Execution) -> list[int]:
    return [v for (v,) in struct.iter_unpack("<i", ex.stdout)]


def test_fd_write_with_millions_of_buffers_is_refused(sandbox: Sandbox) -> None:
    # 8M iovecs in one call: EINVAL (28) at once, not seconds of host work.
    ex = run(
        sandbox,
        module(
            "(call $report (call $fd_write (i32.const 1) (i32.const 64) "
            "(i32.const 8000000) (i32.const 32)))"
        ),
        max_memory_bytes=128 * 1024 * 1024,
    )
    assert ex.outcome is Outcome.SUCCESS
    assert reported(ex) == [28]


def test_guest_cannot_sleep(sandbox: Sandbox) -> None:
    # poll_oneoff (sleep) would block the worker where no time limit reaches.
    ex = run(
        sandbox,
        module(
            "(call $report (call $poll (i32.const 64) (i32.const 256) "
            "(i32.const 1) (i32.const 32)))"
        ),
        timeout_ms=100,
    )
    assert ex.outcome is Outcome.SUCCESS
    assert reported(ex) == [58]  # ENOTSUP


def test_nothing_gets_out_after_proc_exit(sandbox: Sandbox) -> None:
    ex = run(sandbox, module("(call $proc_exit (i32.const 0)) (call $report (i32.const 7))"))
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == b""


def test_nonzero_exit_at_the_memory_cap_keeps_its_exit_code(sandbox: Sandbox) -> None:
    # Memory is exactly at the cap, but the guest chose to exit: NONZERO_EXIT 3.
    ex = run(sandbox, module("(call $proc_exit (i32.const 3))"), max_memory_bytes=2 * 65536)
    assert ex.outcome is Outcome.NONZERO_EXIT
    assert ex.exit_code == 3


def test_table_growth_is_capped(sandbox: Sandbox) -> None:
    table = "(table $t 1 funcref)"
    ex = run(
        sandbox,
        module("(call $report (table.grow $t (ref.null func) (i32.const 200000000)))", table),
    )
    assert ex.outcome is Outcome.SUCCESS
    assert reported(ex) == [-1]


def test_many_exports_do_not_stall_the_job(sandbox: Sandbox) -> None:
    exports = " ".join(f'(export "e{i}" (func $report))' for i in range(20_000))
    ex = run(sandbox, module("(call $report (i32.const 1))", exports))
    assert ex.outcome is Outcome.SUCCESS
    assert reported(ex) == [1]


def test_cancel_all_stops_running_guests(tmp_path: Path) -> None:
    import threading

    engine = SandboxEngine()
    try:
        sandbox = Sandbox(engine, ModuleCache(engine, CacheSettings(directory=tmp_path), b"k" * 32))
        loop = module("(loop $l (br $l))")
        results: list[Execution] = []
        worker = threading.Thread(
            target=lambda: results.append(run(sandbox, loop, timeout_ms=300_000, max_fuel=10**15))
        )
        worker.start()
        # Cancel until the guest has surely started; each call is idempotent.
        for _ in range(200):
            sandbox.cancel_all()
            worker.join(timeout=0.05)
            if not worker.is_alive():
                break
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert results[0].outcome is Outcome.CANCELLED
    finally:
        engine.close()
