"""Structured JSON logs: one event per line, on stderr (journald picks it up).

{"ts": "2026-11-22T14:00:00.123456Z", "level": "info", "event": "job_finished", ...}

Under systemd, stderr is a stream to the journal (`JOURNAL_STREAM` names it)
and each line becomes one entry whose MESSAGE is the JSON object. Each line
is then prefixed with its syslog priority (`<6>` for info), which journald
strips and stores as the entry's PRIORITY, so `journalctl -p warning` works
and `journalctl -o cat` still prints bare JSON for jq.

`capture_stray_output` routes what Python itself would print on stderr
(logging records of libraries and asyncio, warnings, exceptions in threads)
through the same log, so nothing unstructured reaches the journal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# syslog(3) priorities, as journald reads them from a "<N>" line prefix.
_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3}


class EventLog:
    def __init__(
        self, stream: TextIO | None = None, level: str = "info", *, syslog_prefix: bool = False
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._stream = stream if stream is not None else sys.stderr
        self._level = level
        self._threshold = LEVELS[level]
        self._prefix = syslog_prefix
        self._lock = threading.Lock()

    @property
    def level(self) -> str:
        return self._level

    def set_level(self, level: str) -> None:
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._level = level
        self._threshold = LEVELS[level]

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self._threshold

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
        if self._prefix:
            line = f"<{_PRIORITY[level]}>{line}"
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


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected (systemd.exec(5):
    JOURNAL_STREAM is "DEVICE:INODE" of it; a stream redirected elsewhere, or
    inherited by a child, does not match)."""
    env = os.environ if environ is None else environ
    device, sep, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def format_exception(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)).rstrip("\n")


class _Bridge(logging.Handler):
    """Python logging records (asyncio, grpc, aioquic) as `python_log` events."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.DEBUG)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = (
                "error"
                if record.levelno >= logging.ERROR
                else "warning"
                if record.levelno >= logging.WARNING
                else "info"
                if record.levelno >= logging.INFO
                else "debug"
            )
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info and record.exc_info[1] is not None:
                fields["traceback"] = format_exception(record.exc_info[1])
            self._log.event("python_log", level=level, **fields)
        except Exception:  # noqa: BLE001 - logging must never raise into its caller
            self.handleError(record)


def capture_stray_output(log: EventLog) -> None:
    """Send Python's own stderr output through `log`, as JSON events.

    Library logging (asyncio's "Task exception was never retrieved", grpc's
    and aioquic's warnings) and `warnings` become `python_log`; an exception
    escaping a thread becomes `thread_failed`; an unraisable one (in a
    finaliser) `unraisable_exception`. Only WARNING and above from libraries.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Bridge(log))
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    logging.raiseExceptions = False

    def thread_failed(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        err = args.exc_value
        log.error(
            "thread_failed",
            thread=args.thread.name if args.thread is not None else "",
            error=repr(err) if err is not None else args.exc_type.__name__,
            traceback=format_exception(err) if err is not None else "",
        )

    def unraisable(args: Any) -> None:
        err: BaseException | None = args.exc_value
        log.error(
            "unraisable_exception",
            error=repr(err),
            message=str(args.err_msg or ""),
            object=repr(args.object)[:200],
            traceback=format_exception(err) if err is not None else "",
        )

    threading.excepthook = thread_failed
    sys.unraisablehook = unraisable
