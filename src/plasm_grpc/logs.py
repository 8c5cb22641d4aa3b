"""Structured JSON logs: one event per line, on stderr (journald picks it up).

{"ts": "2026-11-22T14:00:00.123456Z", "level": "info", "event": "job_finished", ...}
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Final, TextIO

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._stream = stream if stream is not None else sys.stderr
        self._threshold = LEVELS[level]
        self._lock = threading.Lock()

    def set_level(self, level: str) -> None:
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._threshold = LEVELS[level]

    def event(self, event: str, *, level: str = "info", **fields: Any) -> None:
        if LEVELS[level] < self._threshold:
            return
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": level,
            "event": event,
            **fields,
        }
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed log pipe must not take the node down

    def warning(self, event: str, **fields: Any) -> None:
        self.event(event, level="warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event(event, level="error", **fields)
