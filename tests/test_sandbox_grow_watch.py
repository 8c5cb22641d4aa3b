"""grow_watch: the rewrite that records a memory.grow refused at the job's limit.

The rewrite must leave every other instruction alone, so these modules use the
instructions whose immediates a reader can get wrong (memargs, blocktypes,
br_table, SIMD lanes and constants, GC and exception opcodes, multi-memory),
and byte patterns that look like `memory.grow` (0x40 0x00) inside immediates.
"""

from __future__ import annotations

import struct
from pathlib import Path

import test_sandbox_hardening
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sandbox_hardening import run

from plasm_grpc.core.limits import MIB
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.sandbox.grow_watch import REFUSED_PAGES_EXPORT, layout, watch_grows
from plasm_grpc.sandbox.runner import Sandbox

# The same sandbox fixture (pooling and on-demand) as the hardening tests.
sandbox = test_sandbox_hardening.sandbox

REPORT = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (func $report (param $v i32)
    (i32.store (i32.const 0) (local.get $v))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24))))
"""

# Immediates containing 0x40 0x00 (i32.const 64 is 0xc0 0x00; the v128 and
# f64 constants hold the bytes themselves) and every awkward encoding nearby.
NO_GROW_BODY = """
    (local $v v128) (local $r (ref null func)) (local $s (ref null $pair))
    (i32.store offset=64 align=1 (i32.const 64) (i32.const 64))
    (local.set $v (v128.const i8x16 0x40 0 0x40 0 0x40 0 0x40 0 0x40 0 0x40 0 0x40 0 0x40 0))
    (local.set $v
      (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get $v) (local.get $v)))
    (drop (i32x4.extract_lane 3 (local.get $v)))
    (local.set $v (v128.load8_lane 1 (i32.const 0) (local.get $v)))
    (drop (f64.const 0x1.0000000004p+0))
    (block $out (result i32)
      (br_table $out $out (i32.const 64) (i32.const 1)))
    (drop)
    (drop (select (result i32) (i32.const 1) (i32.const 2) (i32.const 0)))
    (local.set $r (ref.func $report))
    (local.set $s (struct.new $pair (i32.const 64) (i64.const 0x4000)))
    (drop (struct.get $pair 1 (local.get $s)))
    (drop (array.len (array.new_fixed $bytes 2 (i32.const 64) (i32.const 0))))
    (memory.copy (i32.const 0) (i32.const 64) (i32.const 4))
    (try_table (catch $oops 0) (nop))
    (drop (call_indirect (type $id) (i32.const 64) (i32.const 0)))
"""

EXTRA = """
  (type $id (func (param i32) (result i32)))
  (type $pair (struct (field i32) (field i64)))
  (type $bytes (array (mut i8)))
  (tag $oops)
  (table 1 funcref)
  (elem (i32.const 0) $identity)
  (elem declare func $report)
  (func $identity (type $id) (local.get 0))
"""


# Multi-memory: validated only (a job may have one memory).
SECOND_MEMORY = """
    (drop (i32.load $second offset=64 (i32.const 0)))
    (memory.fill $second (i32.const 0) (i32.const 64) (i32.const 4))
    (drop (memory.size $second))
"""


def module(body: str, memory: str = '(memory (export "memory") 1)') -> bytes:
    wat = f'(module {REPORT} {memory} {EXTRA} (func (export "_start") {body}))'
    return bytes(wasmtime.wat2wasm(wat))


def test_a_module_without_grow_is_left_as_it_is() -> None:
    wasm = module(NO_GROW_BODY + "(call $report (i32.const 7))")
    assert watch_grows(wasm) is wasm


def test_the_rewrite_keeps_every_other_instruction(sandbox: Sandbox) -> None:
    wasm = module(NO_GROW_BODY + "(call $report (memory.grow (i32.const 2)))")
    watched = watch_grows(wasm)
    assert watched != wasm
    wasmtime.Module.validate(wasmtime.Engine(), watched)
    # Everything but the grow is byte for byte where it was.
    assert watched.count(b"\x40\x00") >= wasm.count(b"\x40\x00")
    ex = run(sandbox, wasm)
    assert ex.outcome is Outcome.SUCCESS, ex.detail
    assert ex.stdout == struct.pack("<i", 1)  # memory.grow still returns the old size


def test_refused_grow_then_trap_is_a_memory_limit(sandbox: Sandbox) -> None:
    body = "(if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))"
    ex = run(sandbox, module(NO_GROW_BODY + body), max_memory_bytes=4 * MIB)
    assert ex.outcome is Outcome.MEMORY_LIMIT
    assert ex.trap_code == ""
    assert "101 pages" in ex.detail
    assert str(4 * MIB) in ex.detail
    # The same module with room for it grows and returns.
    assert run(sandbox, module(body), max_memory_bytes=8 * MIB).outcome is Outcome.SUCCESS


def test_a_trap_unrelated_to_a_refusal_stays_a_trap(sandbox: Sandbox) -> None:
    # Memory is at the limit, but nothing was refused: the trap is the guest's own.
    body = "(drop (memory.grow (i32.const 63))) unreachable"
    ex = run(sandbox, module(body), max_memory_bytes=4 * MIB)
    assert ex.outcome is Outcome.TRAP
    assert ex.trap_code == "unreachable"


def test_grows_on_every_memory_are_rewritten() -> None:
    memory = '(memory (export "memory") 1) (memory $second 1 65536)'
    body = SECOND_MEMORY + "(drop (memory.grow $second (i32.const 100)))"
    wasm = module(NO_GROW_BODY + body, memory)
    watched = watch_grows(wasm)
    assert watched != wasm
    wasmtime.Module.validate(wasmtime.Engine(), watched)


def test_a_module_with_two_memories_is_refused_plainly(sandbox: Sandbox) -> None:
    ex = run(sandbox, module("", '(memory (export "memory") 1) (memory 1)'))
    assert ex.outcome is Outcome.INVALID_MODULE
    assert "2 linear memories" in ex.detail


def test_64_bit_memories_are_not_rewritten() -> None:
    wat = '(module (memory i64 1) (func (export "_start") (drop (memory.grow (i64.const 1)))))'
    wasm = bytes(wasmtime.wat2wasm(wat))
    assert watch_grows(wasm) is wasm


def test_unreadable_modules_are_left_to_wasmtime() -> None:
    assert watch_grows(b"not wasm") == b"not wasm"
    truncated = module("(call $report (memory.grow (i32.const 2)))")[:-3]
    assert watch_grows(truncated) is truncated
    assert layout(truncated[:20]) is None


def test_a_module_already_using_the_export_name_is_left_alone() -> None:
    wat = (
        f'(module (memory 1) (global (export "{REFUSED_PAGES_EXPORT}") i32 (i32.const 0))'
        ' (func (export "_start") (drop (memory.grow (i32.const 1)))))'
    )
    wasm = bytes(wasmtime.wat2wasm(wat))
    assert watch_grows(wasm) is wasm


def test_layout_reads_imported_and_defined_memories() -> None:
    wat = (
        '(module (import "env" "m" (memory 3 9)) (memory 65536) (memory i64 2)'
        ' (func (export "_start")))'
    )
    declared = layout(bytes(wasmtime.wat2wasm(wat)))
    assert declared is not None
    assert [(m.min_pages, m.max_pages, m.is64) for m in declared.memories] == [
        (3, 9, False),
        (65536, None, False),
        (2, None, True),
    ]
    assert declared.min_memory_bytes == 65536 * 65536


def test_a_module_without_globals_or_exports_gets_them_in_order(tmp_path: Path) -> None:
    wat = "(module (memory 1) (start $s) (func $s (drop (memory.grow (i32.const 1)))))"
    wasm = bytes(wasmtime.wat2wasm(wat))
    watched = watch_grows(wasm)
    assert watched != wasm
    wasmtime.Module.validate(wasmtime.Engine(), watched)


# -- hostile input ---------------------------------------------------------------------

_ENGINE_CONFIG = wasmtime.Config()
_ENGINE_CONFIG.wasm_multi_memory = True
_ENGINE_CONFIG.wasm_gc = True
_ENGINE_CONFIG.wasm_function_references = True
_ENGINE_CONFIG.wasm_exceptions = True
FULL_ENGINE = wasmtime.Engine(_ENGINE_CONFIG)  # every proposal the test modules use
SEEDS = (
    module(NO_GROW_BODY + "(call $report (memory.grow (i32.const 2)))"),
    module("(drop (memory.grow (i32.const 1)))"),
    module(NO_GROW_BODY),
)


def _validates(wasm: bytes) -> bool:
    try:
        wasmtime.Module.validate(FULL_ENGINE, wasm)
    except wasmtime.WasmtimeError:
        return False
    return True


def _mutated(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """`seed` with each (kind, position, byte) edit: replace, delete or insert."""
    data = bytearray(seed)
    for kind, position, value in edits:
        at = 8 + position % (len(data) - 8)  # the header stays: past it is where a reader errs
        if kind == 0:
            data[at] = value
        elif kind == 1:
            del data[at]
        else:
            data.insert(at, value)
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_damaged_modules_never_break_the_reader_and_valid_ones_stay_valid(
    seed: bytes, edits: list[tuple[int, int, int]]
) -> None:
    wasm = _mutated(seed, edits)
    watched = watch_grows(wasm)  # never raises: unchanged when it cannot be read
    layout(wasm)
    if watched != wasm and _validates(wasm):
        assert _validates(watched)


def test_an_unknown_or_repeated_section_leaves_the_module_alone() -> None:
    wasm = module("(drop (memory.grow (i32.const 1)))")
    assert watch_grows(wasm + b"\x2a\x00") == wasm + b"\x2a\x00"  # section id 42
    assert watch_grows(wasm + b"\x0a\x01\x00") == wasm + b"\x0a\x01\x00"  # a second code section


def test_an_invalid_module_is_refused_before_any_rewrite(sandbox: Sandbox) -> None:
    # `global.get 1` with one global is invalid; after a rewrite that appended
    # globals it would name one of them and run. The cache validates first.
    wat = (
        '(module (memory (export "memory") 1) (global $g i32 (i32.const 7))'
        ' (func (export "_start") (drop (global.get $g)) (drop (memory.grow (i32.const 1)))))'
    )
    valid = bytes(wasmtime.wat2wasm(wat))
    assert valid.count(b"\x23\x00\x1a") == 1  # global.get 0, drop
    invalid = valid.replace(b"\x23\x00\x1a", b"\x23\x01\x1a")
    assert not _validates(invalid)
    ex = run(sandbox, invalid)
    assert ex.outcome is Outcome.INVALID_MODULE
    assert "global" in ex.detail
