"""Run one WASI preview1 job in wasmtime under hard limits.

Synchronous by design: the daemon calls `Sandbox.run` from worker threads.
wasmtime-py calls into the runtime through ctypes, which releases the GIL, so
a long compile or a running guest never blocks the asyncio event loop.

Limits and how each is enforced:

* linear memory: `Store.set_limits(memory_size=...)`; `memory.grow` past it
  returns -1 and tells the host nothing, so the module is compiled with its
  grows watched (`grow_watch`): a job that traps after a grow was refused
  because of its limit ends as MEMORY_LIMIT (a trap only: a guest that exits
  on purpose keeps its code; a grow refused by the module's own maximum does
  not count). A module whose initial memory is above the limit ends as
  MEMORY_LIMIT without running.
* fuel: `Config.consume_fuel`; running out traps as OUT_OF_FUEL.
* wall time: `Config.epoch_interruption` plus one ticker thread per engine.
  Each store's epoch deadline is one tick ahead and has a callback
  (`_EpochWatch`, through the C API's `wasmtime_store_epoch_deadline_callback`)
  that runs on the job's own thread at every tick, re-arms the deadline one
  tick further, or stops the guest: past the job's wall-clock deadline as
  TIMEOUT; when its `CancelFlag` is set (one job) or the sandbox is shutting
  down (`cancel_all`, every job) as CANCELLED. A job cancelled before it
  started ends CANCELLED without being compiled or instantiated.
* stdout/stderr: `fd_write` is provided by the sandbox itself (shadowing the
  WASI one) so bytes are counted as they are written and the guest is stopped
  the moment it crosses the cap. wasmtime's `stdout_custom` has no cap and runs
  on another thread.
* stack: `Config.max_wasm_stack`; overflow is a TRAP with code stack_overflow.
* module size and compiled size: checked in `ModuleCache`.
* tables: `Store.set_limits(table_elements=...)`.
* host calls: `fd_write` takes at most 1024 buffers; `poll_oneoff` (sleep)
  returns ENOTSUP, because no time limit can interrupt a blocked host call;
  exports are looked up by name, never all wrapped.

Host functions never raise: wasmtime-py keeps the last Python exception raised
in a host function in a module global, which is not safe with several jobs
running at once. To stop a guest they record why in thread-local state and
set the store's fuel to zero, so the guest traps on its next instruction.
The epoch callback is not a wasmtime-py host function but a raw ctypes one;
it never raises either (an exception there would be printed and the guest let
go on), and stops the guest by returning a `wasmtime_error_t`, after
recording why in the job's state.
"""

from __future__ import annotations

import ctypes
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi

from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.sandbox.cache import CompiledModule, ModuleCache, ModuleFailure
from plasm_grpc.sandbox.engine import SandboxEngine
from plasm_grpc.sandbox.grow_watch import REFUSED_PAGES_EXPORT, refused_pages

WASI_MODULE: Final = "wasi_snapshot_preview1"
PAGE: Final = 65536

# WASI preview1 errno values (not the host's).
_WASI_EBADF: Final = 8
_WASI_EFAULT: Final = 21
_WASI_EFBIG: Final = 22
_WASI_EINVAL: Final = 28
_WASI_ENOTSUP: Final = 58
_IOV_MAX: Final = 1024  # as Linux: more buffers in one fd_write are EINVAL

_STDOUT: Final = 1
_STDERR: Final = 2

SHUTDOWN_DETAIL: Final = "cancelled: the node is shutting down"


class CancelFlag:
    """A request to stop one job, set from any thread.

    The job's thread polls it before the guest starts and at every epoch tick
    while it runs; the first reason given is the one the receipt reports.
    """

    __slots__ = ("_lock", "_reason")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None

    def cancel(self, reason: str) -> bool:
        """Ask the job to stop. False if it was already asked."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            return True

    @property
    def cancelled(self) -> bool:
        # One attribute read: cheap enough for the epoch callback, and atomic.
        return self._reason is not None

    @property
    def reason(self) -> str:
        """Why the job was cancelled ("" if it was not)."""
        return self._reason or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What to run. `limits` must already be resolved (no zero fields)."""

    module_sha256: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    stdin: bytes
    limits: ResourceLimits


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    """How a job ended, with everything a receipt needs from the sandbox."""

    outcome: Outcome
    exit_code: int
    trap_code: str
    detail: str
    stdout: bytes
    stderr: bytes
    fuel_consumed: int
    wall_time_us: int
    started_at_ns: int
    finished_at_ns: int


@dataclass(slots=True)
class _JobState:
    """Per-job state the host functions write to (one job per thread)."""

    max_stdout: int
    max_stderr: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stop_reason: Outcome | None = None
    exit_code: int = 0
    fuel_at_stop: int | None = None
    detail: str = ""


_current = threading.local()


def _state() -> _JobState:
    state: _JobState = _current.job
    return state


def _stop_guest(caller: wasmtime.Caller, state: _JobState, reason: Outcome) -> None:
    """Make the guest trap on its next instruction by taking all its fuel."""
    context = caller._context()
    remaining = ctypes.c_uint64(0)
    if not ffi.wasmtime_context_get_fuel(context, ctypes.byref(remaining)):
        state.fuel_at_stop = remaining.value
    ffi.wasmtime_context_set_fuel(context, 0)
    state.stop_reason = reason


def _fd_write(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    try:
        state = _state()
        if state.stop_reason is not None:
            return _WASI_EBADF  # the guest exited or hit a cap: nothing more gets out
        if fd == _STDOUT:
            sink, cap, name = state.stdout, state.max_stdout, "stdout"
        elif fd == _STDERR:
            sink, cap, name = state.stderr, state.max_stderr, "stderr"
        else:
            return _WASI_EBADF
        if not 0 <= iovs_len <= _IOV_MAX:
            # Bounded, so one host call cannot outlast the job's time and fuel.
            return _WASI_EINVAL
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return _WASI_EFAULT
        size = memory.data_len(caller)
        base = ctypes.addressof(memory.data_ptr(caller).contents)
        if iovs < 0 or iovs + 8 * iovs_len > size:
            return _WASI_EFAULT
        table = ctypes.string_at(base + iovs, 8 * iovs_len)  # at most 8 KiB
        total = 0
        for i in range(iovs_len):
            ptr, length = struct.unpack_from("<II", table, 8 * i)
            if ptr + length > size:
                return _WASI_EFAULT
            room = cap - len(sink)
            if length > room:
                sink += ctypes.string_at(base + ptr, room)
                state.detail = f"{name} exceeded its limit of {cap} bytes"
                _stop_guest(caller, state, Outcome.OUTPUT_LIMIT)
                return _WASI_EFBIG
            sink += ctypes.string_at(base + ptr, length)
            total += length
        if nwritten < 0 or nwritten + 4 > size:
            return _WASI_EFAULT
        ctypes.memmove(base + nwritten, struct.pack("<I", total), 4)
        return 0
    except Exception:  # noqa: BLE001 - a host call must never raise (see module doc)
        return _WASI_EFAULT


def _poll_oneoff(
    caller: wasmtime.Caller, subscriptions: int, events: int, count: int, nevents: int
) -> int:
    # A host call cannot be interrupted by the wall-time limit, so a guest may
    # not sleep or block: jobs compute, they do not wait.
    return _WASI_ENOTSUP


def _proc_exit(caller: wasmtime.Caller, code: int) -> None:
    state = _state()
    state.exit_code = ctypes.c_int32(code).value  # receipt exit_code is int32
    _stop_guest(caller, state, Outcome.SUCCESS if code == 0 else Outcome.NONZERO_EXIT)


def make_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """WASI preview1 with the sandbox's own fd_write, proc_exit and poll_oneoff."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        WASI_MODULE,
        "fd_write",
        wasmtime.FuncType([i32, i32, i32, i32], [i32]),
        _fd_write,
        access_caller=True,
    )
    linker.define_func(
        WASI_MODULE,
        "proc_exit",
        wasmtime.FuncType([i32], []),
        _proc_exit,
        access_caller=True,
    )
    linker.define_func(
        WASI_MODULE,
        "poll_oneoff",
        wasmtime.FuncType([i32, i32, i32, i32], [i32]),
        _poll_oneoff,
        access_caller=True,
    )
    linker.allow_shadowing = False
    return linker


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    # WasiConfig has no public stdin-from-bytes; the C API does, and it copies.
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new(
        ctypes.byref(vec),
        len(data),
        ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_ubyte)),
    )
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


# wasmtime_store_epoch_deadline_callback's callback, as wasmtime-py declares it
# (ctypes caches function types, so this is the very type its argtypes expect):
# (context, data, *epoch_deadline_delta, *update_kind) -> wasmtime_error_t*,
# the pointer as an address: 0 (NULL) lets the guest go on.
_EpochCallback: Final = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER: Final = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_UPDATE_DEADLINE_CONTINUE: Final = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
_STOP_MESSAGE: Final = b"plasm: the sandbox stopped the guest"


class _EpochWatch:
    """One job's epoch deadline callback: may the guest run one more tick?

    wasmtime calls `check` on the thread running the job's store, whenever the
    store's deadline (always the next tick) has passed. It keeps no reference
    to the store, so the store, this watch and its ctypes thunk all go when the
    job ends.
    """

    __slots__ = ("_deadline_ns", "_flag", "_limits", "_sandbox", "_state")

    def __init__(
        self,
        sandbox: Sandbox,
        flag: CancelFlag | None,
        state: _JobState,
        limits: ResourceLimits,
        *,
        deadline_ns: int,
    ) -> None:
        self._sandbox = sandbox
        self._flag = flag
        self._state = state
        self._limits = limits
        self._deadline_ns = deadline_ns  # on the time.perf_counter_ns() clock

    def check(self, context: Any, data: Any, delta: Any, kind: Any) -> int:
        try:
            state = self._state
            if state.stop_reason is None:  # else a host call is already stopping the guest
                stop = self._why_stop()
                if stop is None:
                    delta[0] = 1
                    kind[0] = _UPDATE_DEADLINE_CONTINUE
                    return 0
                state.stop_reason, state.detail = stop
        except BaseException:  # noqa: BLE001, S110 - never raise into wasmtime (module doc)
            pass  # no stop_reason: the guest ends as a TRAP with the stop message
        return _stop_error()

    def _why_stop(self) -> tuple[Outcome, str] | None:
        flag = self._flag
        if flag is not None and flag.cancelled:
            return Outcome.CANCELLED, flag.reason
        if self._sandbox.cancelled:
            return Outcome.CANCELLED, SHUTDOWN_DETAIL
        if time.perf_counter_ns() >= self._deadline_ns:
            return Outcome.TIMEOUT, _trap_detail(Outcome.TIMEOUT, "", self._limits)
        return None


def _stop_error() -> int:
    """A new wasmtime_error_t (wasmtime takes ownership) that ends the guest."""
    address: int | None = ctypes.cast(ffi.wasmtime_error_new(_STOP_MESSAGE), ctypes.c_void_p).value
    return address or 0


def _watch_epochs(store: wasmtime.Store, thunk: Callable[..., int]) -> None:
    """Make `thunk` the store's epoch callback, first called at the next tick.

    wasmtime keeps only the C function pointer: the caller keeps `thunk` (and
    so its watch) alive until the store is closed.
    """
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), thunk, None, _NO_FINALIZER)
    store.set_epoch_deadline(1)


_TRAP_OUTCOMES: Final[dict[wasmtime.TrapCode, Outcome]] = {
    wasmtime.TrapCode.OUT_OF_FUEL: Outcome.OUT_OF_FUEL,
    wasmtime.TrapCode.INTERRUPT: Outcome.TIMEOUT,
}


class Sandbox:
    """Compiles (through a cache) and runs jobs. Thread-safe."""

    def __init__(self, engine: SandboxEngine, cache: ModuleCache) -> None:
        self.engine = engine
        self.cache = cache
        self.cancelled = False

    def cancel_all(self) -> None:
        """Stop every running guest now (shutdown): they end as CANCELLED.

        A Store may only be touched by the thread running it, but the engine's
        epoch is shared and thread-safe: advancing it runs every store's epoch
        callback at its guest's next loop header or call, which sees
        `cancelled` and stops it. Jobs that have not started yet never will.
        """
        self.cancelled = True
        self.engine.expire_all_deadlines()

    def run(
        self, spec: JobSpec, module_bytes: bytes | None, cancel: CancelFlag | None = None
    ) -> Execution:
        """Compile (or find) and run one job; `cancel` stops this job alone."""
        stopped = _cancelled_before_start(self, cancel)
        if stopped is not None:  # queued, then cancelled: not even compiled
            return self._finish(
                spec,
                time.time_ns(),
                time.perf_counter_ns(),
                outcome=Outcome.CANCELLED,
                detail=stopped,
                state=_JobState(max_stdout=0, max_stderr=0),
                fuel_left=spec.limits.max_fuel,
            )
        compiled = self.cache.get_or_compile(spec.module_sha256, module_bytes)
        # Wall time covers instantiation and execution, not compiling.
        started_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        if isinstance(compiled, ModuleFailure):
            return self._finish(
                spec,
                started_ns,
                t0,
                outcome=compiled.outcome,
                detail=compiled.detail,
                state=_JobState(max_stdout=0, max_stderr=0),
                fuel_left=spec.limits.max_fuel,
            )
        return self._execute(spec, compiled, started_ns, t0, cancel)

    def _execute(
        self,
        spec: JobSpec,
        compiled: CompiledModule,
        started_ns: int,
        t0: int,
        cancel: CancelFlag | None,
    ) -> Execution:
        limits = spec.limits
        state = _JobState(max_stdout=limits.max_stdout_bytes, max_stderr=limits.max_stderr_bytes)
        stopped = _cancelled_before_start(self, cancel)
        if stopped is not None:  # cancelled while it compiled: never started
            return self._finish(
                spec,
                started_ns,
                t0,
                outcome=Outcome.CANCELLED,
                detail=stopped,
                state=state,
                fuel_left=limits.max_fuel,
            )
        watch = _EpochWatch(
            self, cancel, state, limits, deadline_ns=t0 + limits.timeout_ms * 1_000_000
        )
        thunk: Callable[..., int] = _EpochCallback(watch.check)
        store = wasmtime.Store(self.engine.engine)
        outcome = Outcome.SUCCESS
        trap_code = ""
        detail = ""
        instance: wasmtime.Instance | None = None
        fuel_left = limits.max_fuel
        _current.job = state
        try:
            _watch_epochs(store, thunk)
            store.set_limits(
                memory_size=limits.max_memory_bytes,
                table_elements=self.engine.settings.max_table_elements,
                instances=1,
                memories=1,
                tables=4,
            )
            store.set_fuel(limits.max_fuel)
            wasi = wasmtime.WasiConfig()
            wasi.argv = list(spec.args)
            wasi.env = [list(kv) for kv in spec.env]
            _set_stdin(wasi, spec.stdin)
            store.set_wasi(wasi)
            try:
                instance = compiled.pre.instantiate(store)
                # By name, in constant time: `instance.exports(store)` wraps every
                # export in Python, which a module with 100k exports turns into minutes.
                start = _export(store, instance, "_start")
                if not isinstance(start, wasmtime.Func):
                    raise wasmtime.WasmtimeError("_start is not a function")
                start(store)
            except wasmtime.Trap as trap:
                code = trap.trap_code
                outcome = _TRAP_OUTCOMES.get(code, Outcome.TRAP) if code else Outcome.TRAP
                trap_code = code.name.lower() if code else "unknown"
                detail = _trap_detail(outcome, trap_code, limits)
            except wasmtime.WasmtimeError as err:
                # proc_exit is the sandbox's own (_proc_exit), so wasmtime never
                # raises ExitTrap here: an exit is a stop_reason, handled below.
                outcome, detail = _classify_error(str(err), limits.max_memory_bytes)
            if state.stop_reason is not None:
                # The guest was stopped on purpose by a host call (exit or output
                # cap: fuel taken, fuel_at_stop kept) or by the epoch callback
                # (timeout or cancel: fuel untouched); the trap or error that
                # followed is not its outcome.
                outcome, trap_code, detail = state.stop_reason, "", state.detail
                fuel_left = (
                    state.fuel_at_stop if state.fuel_at_stop is not None else _fuel_left(store)
                )
            else:
                fuel_left = _fuel_left(store)
            if outcome is Outcome.TRAP and instance is not None:
                # memory.grow past the limit returns -1 rather than trapping; a
                # guest that then traps (abort, null dereference) ran out of memory.
                wanted = refused_pages(_export(store, instance, REFUSED_PAGES_EXPORT), store)
                if wanted * PAGE > limits.max_memory_bytes:
                    outcome = Outcome.MEMORY_LIMIT
                    detail = (
                        f"memory.grow to {wanted} pages ({wanted * PAGE} bytes) was refused at "
                        f"the job's memory limit of {limits.max_memory_bytes} bytes; the guest "
                        f"then trapped ({trap_code})"
                    )
                    trap_code = ""
        finally:
            _current.job = None
            store.close()  # no more callbacks from here on
            del thunk, watch
        return self._finish(
            spec,
            started_ns,
            t0,
            outcome=outcome,
            detail=detail,
            state=state,
            fuel_left=fuel_left,
            trap_code=trap_code,
        )

    def _finish(
        self,
        spec: JobSpec,
        started_ns: int,
        t0: int,
        *,
        outcome: Outcome,
        detail: str,
        state: _JobState,
        fuel_left: int,
        trap_code: str = "",
    ) -> Execution:
        elapsed_ns = time.perf_counter_ns() - t0
        return Execution(
            outcome=outcome,
            exit_code=state.exit_code if outcome in (Outcome.SUCCESS, Outcome.NONZERO_EXIT) else 0,
            trap_code=trap_code if outcome is Outcome.TRAP else "",
            detail=detail,
            stdout=bytes(state.stdout),
            stderr=bytes(state.stderr),
            fuel_consumed=max(0, spec.limits.max_fuel - fuel_left),
            wall_time_us=elapsed_ns // 1000,
            started_at_ns=started_ns,
            finished_at_ns=started_ns + elapsed_ns,
        )


def _cancelled_before_start(sandbox: Sandbox, cancel: CancelFlag | None) -> str | None:
    """Why a job that has not started must not start (None: it may)."""
    if cancel is not None and cancel.cancelled:
        return cancel.reason
    if sandbox.cancelled:  # queued behind a shutdown
        return SHUTDOWN_DETAIL
    return None


def _trap_detail(outcome: Outcome, trap_code: str, limits: ResourceLimits) -> str:
    if outcome is Outcome.TIMEOUT:
        return f"wall-time limit of {limits.timeout_ms} ms exceeded"
    if outcome is Outcome.OUT_OF_FUEL:
        return f"fuel limit of {limits.max_fuel} exhausted"
    return f"wasm trap: {trap_code}"


def _fuel_left(store: wasmtime.Store) -> int:
    try:
        return int(store.get_fuel())
    except wasmtime.WasmtimeError:
        return 0


# What the store limiter says when instantiation would start above the limit.
_INITIAL_MEMORY_REFUSED: Final = re.compile(r"memory minimum size of (\d+) pages exceeds")


def _classify_error(message: str, limit: int) -> tuple[Outcome, str]:
    """Map a non-trap WasmtimeError during instantiation or start."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # wasmtime puts the cause last ("Caused by: ..."); the first line is context.
    detail = lines[-1].removeprefix("0: ").strip() if lines else "unknown error"
    lowered = message.lower()
    initial = _INITIAL_MEMORY_REFUSED.search(message)
    if initial is not None:
        return Outcome.MEMORY_LIMIT, (
            f"the module needs {int(initial.group(1)) * PAGE} bytes of initial linear memory; "
            f"the job's memory limit is {limit} bytes"
        )
    if "memory" in lowered and ("limit" in lowered or "exceeds" in lowered):
        return Outcome.MEMORY_LIMIT, detail
    if "import" in lowered:
        return Outcome.UNKNOWN_IMPORT, detail
    return Outcome.TRAP, detail


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """One export by name (None if absent), without wrapping all of them."""
    from wasmtime._extern import wrap_extern

    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    found = ffi.wasmtime_instance_export_get(
        store._context(),  # no public by-name lookup in wasmtime-py 50
        ctypes.byref(instance._instance),
        encoded,
        len(encoded),
        ctypes.byref(item),
    )
    return wrap_extern(item) if found else None


__all__ = ["CancelFlag", "Execution", "JobSpec", "Sandbox", "make_linker"]
