"""How a job can end. Values equal the proto enum `plasm.v1.Outcome`."""

from __future__ import annotations

import enum


class Outcome(enum.IntEnum):
    SUCCESS = 1
    NONZERO_EXIT = 2
    TRAP = 3
    OUT_OF_FUEL = 4
    TIMEOUT = 5
    MEMORY_LIMIT = 6
    OUTPUT_LIMIT = 7
    INVALID_MODULE = 8
    UNKNOWN_IMPORT = 9
    COMPILE_LIMIT = 10
    CANCELLED = 11

    @property
    def label(self) -> str:
        return self.name.lower()
