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
        self.engine = wasmtime.Engine(config)
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
                        "wasi=args,env,stdin;no-fs;no-net",
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

    def _tick(self) -> None:
        interval = self.settings.epoch_tick_ms / 1000
        while not self._stop.wait(interval):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)
