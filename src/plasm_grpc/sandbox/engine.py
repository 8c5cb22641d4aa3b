"""The wasmtime engine shared by every job, and its epoch ticker."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from importlib.metadata import version
from typing import Final

import wasmtime

from plasm_grpc.core.receipt import RuntimeInfo

WASMTIME_VERSION: Final = version("wasmtime")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    max_wasm_stack: int = 512 * 1024
    epoch_tick_ms: float = 10.0
    opt_level: str = "speed"
    # The pooling allocator keeps instance and memory slots mapped and reuses
    # them, instead of an mmap/munmap per job (munmap in a many-threaded process
    # costs TLB shootdowns): it cut the daemon's sandbox CPU per job by ~35 %.
    # `pool_slots` bounds jobs running at once; `max_memory_bytes` must cover
    # the largest memory limit a job may ask for.
    pooling: bool = True
    pool_slots: int = 16
    # Table elements one job may have (each costs 8 bytes of host memory and is
    # not counted in the linear-memory limit).
    max_table_elements: int = 100_000
    # The longest timeout a job may have (limits.max.timeout_ms).
    max_timeout_ms: int = 300_000
    max_memory_bytes: int = 1024 * 1024 * 1024


def _enable_pooling(config: wasmtime.Config, settings: EngineSettings) -> None:
    # wasmtime-py 50 has no Python wrapper for this; the C API is in its _ffi.
    from wasmtime import _ffi as ffi

    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        slots = settings.pool_slots
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, settings.max_memory_bytes)
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pool, min(slots, 16))
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)


class EngineError(RuntimeError):
    """The engine could not be created with these settings."""


class SandboxEngine:
    """One wasmtime Engine configured for metering, plus the epoch ticker.

    The epoch deadline counts ticks, so something must advance the epoch: a
    daemon thread calls `increment_epoch` every `epoch_tick_ms`.
    """

    def __init__(self, settings: EngineSettings | None = None) -> None:
        # Imported here: runner imports this module.
        from plasm_grpc.sandbox.runner import make_linker

        self.settings = settings or EngineSettings()
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = self.settings.max_wasm_stack
        config.cranelift_opt_level = self.settings.opt_level
        if self.settings.pooling:
            _enable_pooling(config, self.settings)
        try:
            self.engine = wasmtime.Engine(config)
        except wasmtime.WasmtimeError as err:
            raise EngineError(f"cannot configure the wasmtime engine: {err}") from err
        self.linker = make_linker(self.engine)
        self.runtime = RuntimeInfo(
            name="wasmtime",
            version=WASMTIME_VERSION,
            wasi_version="preview1",
            config=tuple(
                sorted(
                    (
                        "consume_fuel=true",
                        "epoch_interruption=true",
                        f"epoch_tick_ms={self.settings.epoch_tick_ms:g}",
                        f"max_wasm_stack={self.settings.max_wasm_stack}",
                        f"cranelift_opt_level={self.settings.opt_level}",
                        "wasi=args,env,stdin,clocks,random;no-fs;no-net;no-poll",
                        f"max_table_elements={self.settings.max_table_elements}",
                        # A refused memory.grow is recorded by code added to the
                        # module (grow_watch), which costs fuel.
                        "memory_grow=watched",
                        "allocator=" + ("pooling" if self.settings.pooling else "on-demand"),
                    )
                )
            ),
        )
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    @property
    def fingerprint(self) -> str:
        """Identifies compiled artifacts this engine can load."""
        return ";".join((self.runtime.name, self.runtime.version, *self.runtime.config))

    def ticks_for(self, timeout_ms: int) -> int:
        # +1: the current tick may be about to end.
        return max(1, math.ceil(timeout_ms / self.settings.epoch_tick_ms)) + 1

    def expire_all_deadlines(self) -> None:
        """Advance the epoch past any deadline a running job can have."""
        for _ in range(self.ticks_for(self.settings.max_timeout_ms) + 1):
            self.engine.increment_epoch()

    def _tick(self) -> None:
        interval = self.settings.epoch_tick_ms / 1000
        while not self._stop.wait(interval):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)
