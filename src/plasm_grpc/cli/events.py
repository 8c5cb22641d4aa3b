"""A job's events and attempts as lines for people (pure: views in, text out).

Everything a node relays from peers (details, reasons, node ids) is untrusted:
it goes through `printable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from plasm_grpc.cli.output import EXIT_JOB_FAILED, node_label, printable, short

if TYPE_CHECKING:
    from plasm_grpc.api.views import Attempt, Event


def _duration(ns: int) -> str:
    ms = max(ns, 0) / 1e6
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _outcome_label(outcome: str, exit_code: int) -> str:
    label = outcome.lower()
    return f"{label} (exit {exit_code})" if outcome == "NONZERO_EXIT" else label


# Kinds whose detail, when the node gives one, follows the phrase in parentheses.
_DETAIL_IN_PARENTHESES = frozenset(
    {"SUBMITTED", "ACCEPTED", "QUEUED", "RUNNING", "CANCEL_REQUESTED"}
)
_TERMINAL_EVENTS = frozenset({"FINISHED", "FAILED"})


def event_phrase(event: Event, since_ns: int | None = None) -> str:
    """What one event says, e.g. "declined by 5e6f… (BUSY: all 2 slots taken)".

    `since_ns`: when the attempt (or job) began, for FINISHED's duration.
    """
    phrase = _phrase(event, since_ns)
    if event.kind in _DETAIL_IN_PARENTHESES and event.detail:
        return f"{phrase} ({printable(event.detail)})"
    return phrase


def _phrase(event: Event, since_ns: int | None) -> str:
    kind = event.kind
    node = node_label(event.node_id)
    detail = printable(event.detail)
    simple = {
        "SUBMITTED": "submitted",
        "SEARCHING": "searching for workers",
        "OFFERED": f"offered to {node}",
        "ACCEPTED": f"accepted by {node}",
        "QUEUED": f"queued on {node}",
        "RUNNING": f"running on {node}",
        "CANCEL_REQUESTED": "cancel requested",
    }
    if kind in simple:
        return simple[kind]
    if kind == "CANDIDATES":
        return f"candidates: {short(detail)}" if detail else "found candidates"
    if kind == "DECLINED":
        return f"declined by {node} ({event.decline_reason}{': ' + detail if detail else ''})"
    if kind == "TRANSFERRING":
        if event.module_bytes:
            return f"sending the module ({event.module_bytes:,} bytes) and input to {node}"
        return f"sending the input to {node} (it holds the module)"
    if kind == "ATTEMPT_FAILED":
        text = f"attempt failed on {node}: {detail or 'no detail'}"
        return text + " (may have run there)" if event.may_have_run else text
    if kind == "FINISHED":
        took = f" in {_duration(event.at_ns - since_ns)}" if since_ns is not None else ""
        return f"finished on {node}{took}: {_outcome_label(event.outcome, event.exit_code)}"
    if kind == "FAILED":
        return f"failed ({event.error_reason}){': ' + detail if detail else ''}"
    return f"event {kind}"


def describe_event(event: Event, since_ns: int | None = None) -> str:
    """One event as one line, for a log-like view (not a terminal)."""
    where = f"#{event.attempt} " if event.attempt else ""
    return f"{event.at} {where}{event_phrase(event, since_ns)}"


class JobProgress:
    """A job's events folded into lines: one for the job, one per attempt
    showing where that attempt got to. Pure: `lines()` after `add()`s."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.terminal: Event | None = None
        self.events = 0
        self._job_line = "waiting for the node"
        self._cancel_requested = False
        self._first_ns: int | None = None
        self._attempts: dict[int, str] = {}
        self._attempt_start: dict[int, int] = {}

    @property
    def ended(self) -> bool:
        return self.terminal is not None

    def add(self, event: Event) -> str:
        """Fold `event` in; returns it as one line, as `describe_event` would
        (with FINISHED's duration). Events after the terminal one are ignored."""
        if self.terminal is not None:
            return ""
        self.events += 1
        if self._first_ns is None:
            self._first_ns = event.at_ns
        if event.kind == "CANCEL_REQUESTED":
            self._cancel_requested = True
            return describe_event(event)
        if event.kind in _TERMINAL_EVENTS:
            self.terminal = event
        if event.attempt and event.kind != "FAILED":
            start = self._attempt_start.setdefault(event.attempt, event.at_ns)
            self._attempts[event.attempt] = event_phrase(event, start)
            if event.kind == "FINISHED":
                self._job_line = "finished"
            return describe_event(event, start)
        self._job_line = event_phrase(event, self._first_ns)
        return describe_event(event, self._first_ns)

    def header(self) -> str:
        cancel = " (cancel requested)" if self._cancel_requested else ""
        return f"job {printable(self.job_id, 64)}: {self._job_line}{cancel}"

    def attempt_lines(self) -> list[str]:
        return [f"#{n} {self._attempts[n]}" for n in sorted(self._attempts)]

    def lines(self) -> list[str]:
        return [self.header(), *("  " + line for line in self.attempt_lines())]

    def exit_code(self) -> int:
        """As `plasm submit` would exit for this ending."""
        end = self.terminal
        if end is None or end.kind != "FINISHED":
            return EXIT_JOB_FAILED
        return exit_code_for(end.outcome, end.exit_code)


def exit_code_for(outcome: str, exit_code: int) -> int:
    """0 for success, the guest's code (1-255) for a non-zero exit, else 3."""
    if outcome == "SUCCESS":
        return 0
    if outcome == "NONZERO_EXIT":
        return min(max(exit_code, 1), 255)
    return EXIT_JOB_FAILED


def render_events(job_id: str, events: Sequence[Event]) -> list[str]:
    """The lines a live view shows once `events` have arrived."""
    progress = JobProgress(job_id)
    for event in events:
        progress.add(event)
    return progress.lines()


def may_also_have_run(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Attempts, other than the last (whose result this is), that may have run the job."""
    return [a for a in attempts[:-1] if a.may_have_run]


def attempts_summary(attempts: Sequence[Attempt]) -> list[str]:
    """SubmitResponse.attempts as lines; [] when there is nothing to tell (one
    attempt that could not have run elsewhere)."""
    may_have_run = may_also_have_run(attempts)
    if len(attempts) <= 1:
        return []
    lines = [f"{len(attempts)} attempts:"]
    for n, a in enumerate(attempts, 1):
        result = a.result.lower()
        if a.result == "DECLINED":
            result += f" ({a.decline_reason})"
        detail = printable(a.detail)
        line = f"  #{n} {node_label(a.node_id)}: {result}"
        line += f" in {_duration(a.duration_us * 1000)}"
        if detail:
            line += f": {detail}"
        if a.may_have_run and n < len(attempts):
            line += " (may have run there)"
        lines.append(line)
    if may_have_run:
        nodes = ", ".join(node_label(a.node_id) for a in may_have_run)
        lines.append(
            f"note: the job may also have run on {nodes}: an attempt failed after the job was "
            "sent there. Only the result above was checked and counts."
        )
    return lines
