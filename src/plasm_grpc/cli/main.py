"""`plasm`: talk to a Plasm node and verify receipts.

Tables for people; `--json` for scripts. A job's stdout goes to stdout
untouched so it can be piped; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from plasm.v1 import (
    capability_pb2,
    envelope_pb2,
    errors_pb2,
    job_pb2,
    manifest_pb2,
    reachability_pb2,
    receipt_pb2,
    service_pb2,
    service_pb2_grpc,
)
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from plasm_grpc import __version__
from plasm_grpc.api import codec
from plasm_grpc.api.verify import ReceiptInput, VerifyResult, verify_receipt
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import check_hex64, check_job_id, sha256_hex

DEFAULT_ADDR = "127.0.0.1:50151"
EXIT_USAGE = 2
EXIT_RPC = 1
EXIT_JOB_FAILED = 3
EXIT_UNVERIFIED = 4

err_console = Console(stderr=True, highlight=False)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_RPC) -> None:
        super().__init__(message)
        self.code = code


def die(message: str, code: int = EXIT_RPC) -> NoReturn:
    raise CliError(message, code)


# -- connection --------------------------------------------------------------


@dataclass(slots=True)
class Client:
    addr: str
    timeout: float
    channel: grpc.Channel
    stub: service_pb2_grpc.PlasmServiceStub

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            die(describe_rpc_error(err, self.addr))


def describe_rpc_error(err: grpc.RpcError, addr: str) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    reason = ""
    if isinstance(err, grpc.Call):
        for key, value in err.trailing_metadata() or ():
            if key == codec.REASON_KEY:
                reason = str(value)
    if code == grpc.StatusCode.UNAVAILABLE and reason == "ERROR_REASON_SHUTTING_DOWN":
        return f"plasmd at {addr} is shutting down and not accepting jobs: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach plasmd at {addr}: {details}\n"
            "Is the daemon running? Start it with `plasmd`, or point at it with --addr "
            "or $PLASM_ADDR."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"plasmd at {addr} did not answer in time (raise --timeout)"
    name = code.name if code is not None else "ERROR"
    tag = f" [{reason}]" if reason else ""
    return f"plasmd refused the request: {name}{tag}: {details}"


def connect(args: argparse.Namespace) -> Client:
    addr: str = args.addr
    max_bytes = 64 * 1024 * 1024
    channel = grpc.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ],
    )
    return Client(addr, args.timeout, channel, service_pb2_grpc.PlasmServiceStub(channel))


# -- helpers -------------------------------------------------------------------


def read_file(path: str, what: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        die(f"{what} {path} does not exist", EXIT_USAGE)
    except OSError as err:
        die(f"cannot read {what} {path}: {err.strerror}", EXIT_USAGE)


def load_manifest(path: str) -> manifest_pb2.JobManifest:
    """Parse a JSON manifest, validating it against schemas/job_manifest.schema.json."""
    import jsonschema

    raw = read_file(path, "manifest")
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        die(f"manifest {path} is not valid JSON: {err}", EXIT_USAGE)
    schema = json.loads(
        (files("plasm_grpc.schemas") / "job_manifest.schema.json").read_text("utf-8")
    )
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {e.message}")
        die(
            f"manifest {path} does not match the JobManifest schema:\n" + "\n".join(lines),
            EXIT_USAGE,
        )
    manifest = manifest_pb2.JobManifest()
    try:
        json_format.ParseDict(document, manifest)
    except json_format.ParseError as err:
        die(f"manifest {path}: {err}", EXIT_USAGE)
    return manifest


def parse_env(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            die(f"--env expects NAME=VALUE, got {pair!r}", EXIT_USAGE)
        out.append((name, value))
    return out


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def envelope_json(env: envelope_pb2.SignedEnvelope) -> dict[str, Any]:
    return json_format.MessageToDict(env)


def body_json(body: receipt_pb2.ReceiptBody) -> dict[str, Any]:
    return json_format.MessageToDict(body, always_print_fields_with_no_presence=True)


def verification_json(result: VerifyResult) -> dict[str, Any]:
    return {
        "valid": result.valid,
        "signerNodeId": result.signer_node_id,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks],
    }


_HEX64 = re.compile(r"\b([0-9a-f]{16})[0-9a-f]{48}\b")


def short(text: str) -> str:
    """Shorten 64-hex hashes and ids for tables; --json keeps them whole."""
    return _HEX64.sub(r"\1…", text)


def printable(text: str, limit: int = 300) -> str:
    """`text` on one line with control and format characters escaped (`\\x1b`),
    cut to `limit` characters: a peer's words can't move the cursor, recolour
    or hide what the terminal shows."""
    cut = text[:limit]
    safe = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return safe + "…" if len(text) > limit else safe


def show_verification(result: VerifyResult) -> None:
    table = Table(title="receipt verification", show_header=True, title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in result.checks:
        # Receipt and server text is data, never markup (a signed "detail" could
        # otherwise restyle or hide what the verifier shows).
        table.add_row(
            Text(printable(c.name)),
            "[green]ok[/]" if c.passed else "[red]FAILED[/]",
            Text(short(printable(c.detail, 4096))),
        )
    err_console.print(table)
    if result.valid:
        err_console.print(
            f"[green]receipt verified[/]: signed by node {escape(result.signer_node_id)}"
        )
    else:
        err_console.print("[red]receipt NOT verified[/]")


def show_body(body: receipt_pb2.ReceiptBody, title: str = "receipt") -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    outcome = receipt_pb2.Outcome.Name(body.outcome).removeprefix("OUTCOME_").lower()
    rows = [
        ("job id", body.job_id),
        ("outcome", outcome + (f" ({body.detail})" if body.detail else "")),
        ("exit code", str(body.exit_code)),
        ("trap", body.trap_code or "-"),
        ("fuel", f"{body.fuel_consumed:,} of {body.limits.max_fuel:,}"),
        ("wall time", f"{body.wall_time_us / 1000:.3f} ms"),
        ("module sha256", body.module_sha256),
        ("input sha256", body.input_sha256),
        ("stdout", f"{body.stdout_bytes} bytes, sha256 {body.stdout_sha256}"),
        ("stderr", f"{body.stderr_bytes} bytes, sha256 {body.stderr_sha256}"),
        ("executor", body.executor_node_id),
        ("runtime", f"{body.runtime.name} {body.runtime.version} ({body.runtime.wasi_version})"),
        ("finished", body.finished_at.ToJsonString()),
    ]
    for k, v in rows:
        table.add_row(k, Text(short(printable(v, 4096))))
    err_console.print(table)


# -- job events and attempts ---------------------------------------------------------
#
# Everything a node relays from peers (details, reasons, node ids) is untrusted:
# it goes through `printable` and is shown as `Text`, never as markup.


def node_label(node_id: str) -> str:
    if not node_id:
        return "(unnamed node)"
    if re.fullmatch(r"[0-9a-f]{64}", node_id):
        return node_id[:16] + "…"
    return printable(node_id, 20)


def _enum_label(enum: Any, value: int, prefix: str) -> str:
    """`plasm.v1` enum value name without its prefix; the number when this CLI
    does not know it (a newer node)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def _duration(ns: int) -> str:
    ms = max(ns, 0) / 1e6
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _outcome_label(outcome: int, exit_code: int) -> str:
    label = _enum_label(receipt_pb2.Outcome, outcome, "OUTCOME_").lower()
    return f"{label} (exit {exit_code})" if outcome == receipt_pb2.OUTCOME_NONZERO_EXIT else label


# Kinds whose detail, when the node gives one, follows the phrase in parentheses.
_DETAIL_IN_PARENTHESES = frozenset(
    {
        job_pb2.JOB_EVENT_KIND_SUBMITTED,
        job_pb2.JOB_EVENT_KIND_ACCEPTED,
        job_pb2.JOB_EVENT_KIND_QUEUED,
        job_pb2.JOB_EVENT_KIND_RUNNING,
        job_pb2.JOB_EVENT_KIND_CANCEL_REQUESTED,
    }
)


def event_phrase(event: job_pb2.JobEvent, since_ns: int | None = None) -> str:
    """What one event says, e.g. "declined by 5e6f… (BUSY: all 2 slots taken)".

    `since_ns`: when the attempt (or job) began, for FINISHED's duration.
    """
    phrase = _phrase(event, since_ns)
    if event.kind in _DETAIL_IN_PARENTHESES and event.detail:
        return f"{phrase} ({printable(event.detail)})"
    return phrase


def _phrase(event: job_pb2.JobEvent, since_ns: int | None) -> str:
    kind = event.kind
    node = node_label(event.node_id)
    detail = printable(event.detail)
    if kind == job_pb2.JOB_EVENT_KIND_SUBMITTED:
        return "submitted"
    if kind == job_pb2.JOB_EVENT_KIND_SEARCHING:
        return "searching for workers"
    if kind == job_pb2.JOB_EVENT_KIND_CANDIDATES:
        return f"candidates: {short(detail)}" if detail else "found candidates"
    if kind == job_pb2.JOB_EVENT_KIND_OFFERED:
        return f"offered to {node}"
    if kind == job_pb2.JOB_EVENT_KIND_DECLINED:
        reason = _enum_label(job_pb2.DeclineReason, event.decline_reason, "DECLINE_REASON_")
        return f"declined by {node} ({reason}{': ' + detail if detail else ''})"
    if kind == job_pb2.JOB_EVENT_KIND_ACCEPTED:
        return f"accepted by {node}"
    if kind == job_pb2.JOB_EVENT_KIND_TRANSFERRING:
        if event.module_bytes:
            return f"sending the module ({event.module_bytes:,} bytes) and input to {node}"
        return f"sending the input to {node} (it holds the module)"
    if kind == job_pb2.JOB_EVENT_KIND_QUEUED:
        return f"queued on {node}"
    if kind == job_pb2.JOB_EVENT_KIND_RUNNING:
        return f"running on {node}"
    if kind == job_pb2.JOB_EVENT_KIND_ATTEMPT_FAILED:
        text = f"attempt failed on {node}: {detail or 'no detail'}"
        return text + " (may have run there)" if event.may_have_run else text
    if kind == job_pb2.JOB_EVENT_KIND_FINISHED:
        took = ""
        if since_ns is not None:
            took = f" in {_duration(event.at.ToNanoseconds() - since_ns)}"
        return f"finished on {node}{took}: {_outcome_label(event.outcome, event.exit_code)}"
    if kind == job_pb2.JOB_EVENT_KIND_FAILED:
        reason = _enum_label(errors_pb2.ErrorReason, event.error_reason, "ERROR_REASON_")
        return f"failed ({reason}){': ' + detail if detail else ''}"
    if kind == job_pb2.JOB_EVENT_KIND_CANCEL_REQUESTED:
        return "cancel requested"
    return f"event {_enum_label(job_pb2.JobEventKind, kind, 'JOB_EVENT_KIND_')}"


_TERMINAL_EVENTS = (job_pb2.JOB_EVENT_KIND_FINISHED, job_pb2.JOB_EVENT_KIND_FAILED)


class JobProgress:
    """A job's events folded into lines: one for the job, one per attempt
    showing where that attempt got to. Pure: `lines()` after `add()`s."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.terminal: job_pb2.JobEvent | None = None
        self.events = 0
        self._job_line = "waiting for the node"
        self._cancel_requested = False
        self._first_ns: int | None = None
        self._attempts: dict[int, str] = {}
        self._attempt_start: dict[int, int] = {}

    @property
    def ended(self) -> bool:
        return self.terminal is not None

    def add(self, event: job_pb2.JobEvent) -> str:
        """Fold `event` in; returns it as one line, as `describe_event` would
        (with FINISHED's duration). Events after the terminal one are ignored."""
        if self.terminal is not None:
            return ""
        self.events += 1
        at = event.at.ToNanoseconds()
        if self._first_ns is None:
            self._first_ns = at
        if event.kind == job_pb2.JOB_EVENT_KIND_CANCEL_REQUESTED:
            self._cancel_requested = True
            return describe_event(event)
        if event.kind in _TERMINAL_EVENTS:
            self.terminal = event
        if event.attempt and event.kind != job_pb2.JOB_EVENT_KIND_FAILED:
            start = self._attempt_start.setdefault(event.attempt, at)
            self._attempts[event.attempt] = event_phrase(event, start)
            if event.kind == job_pb2.JOB_EVENT_KIND_FINISHED:
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
        if end is None or end.kind != job_pb2.JOB_EVENT_KIND_FINISHED:
            return EXIT_JOB_FAILED
        if end.outcome == receipt_pb2.OUTCOME_SUCCESS:
            return 0
        if end.outcome == receipt_pb2.OUTCOME_NONZERO_EXIT:
            return min(max(end.exit_code, 1), 255)
        return EXIT_JOB_FAILED


def render_events(job_id: str, events: Sequence[job_pb2.JobEvent]) -> list[str]:
    """The lines a live view shows once `events` have arrived."""
    progress = JobProgress(job_id)
    for event in events:
        progress.add(event)
    return progress.lines()


def describe_event(event: job_pb2.JobEvent, since_ns: int | None = None) -> str:
    """One event as one line, for a log-like view (not a terminal)."""
    where = f"#{event.attempt} " if event.attempt else ""
    return f"{event.at.ToJsonString()} {where}{event_phrase(event, since_ns)}"


def may_also_have_run(attempts: Sequence[job_pb2.JobAttempt]) -> list[job_pb2.JobAttempt]:
    """Attempts, other than the last (whose result this is), that may have run the job."""
    return [a for a in attempts[:-1] if a.may_have_run]


def attempts_summary(attempts: Sequence[job_pb2.JobAttempt]) -> list[str]:
    """SubmitResponse.attempts as lines; [] when there is nothing to tell (one
    attempt that could not have run elsewhere)."""
    may_have_run = may_also_have_run(attempts)
    if len(attempts) <= 1:
        return []
    lines = [f"{len(attempts)} attempts:"]
    for n, a in enumerate(attempts, 1):
        result = _enum_label(job_pb2.AttemptResult, a.result, "ATTEMPT_RESULT_").lower()
        if a.result == job_pb2.ATTEMPT_RESULT_DECLINED:
            reason = _enum_label(job_pb2.DeclineReason, a.decline_reason, "DECLINE_REASON_")
            result += f" ({reason})"
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


# -- running a Submit: watch it live, cancel it on Ctrl-C --------------------------------

CANCEL_WAIT_S = 10.0  # after Ctrl-C, how long to wait for the node's CANCELLED answer
WATCH_GRACE_S = 2.0  # after Submit answers, how long to wait for the watch to catch up


@dataclass(slots=True)
class SubmitOutcome:
    response: service_pb2.SubmitResponse
    # The live view showed the job's end (so its attempts were shown too).
    shown_live: bool


class _Wake:
    SUBMIT_DONE = "submit done"
    WATCH_END = "watch ended"


class _Watch:
    """A Watch call read on a thread; events land on the caller's queue."""

    def __init__(self, client: Client, job_id: str, out: queue.Queue[Any], deadline: float) -> None:
        # Longer than Submit's deadline: the watch must not end first.
        self._call = client.stub.Watch(
            service_pb2.WatchRequest(job_id=job_id), timeout=deadline + 15
        )
        self._out = out
        self.error: grpc.RpcError | None = None
        self.open = True
        threading.Thread(target=self._read, name="plasm-watch", daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._out.put(response.event)
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.open = False
            self._out.put(_Wake.WATCH_END)

    def stop(self) -> None:
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs: RpcContext.cancel


class _LiveView:
    """The job's progress on stderr: a rich Live on a terminal, else one line per event."""

    def __init__(self, progress: JobProgress, label: str) -> None:
        self.progress = progress
        self.label = label
        self._live: Live | None = None
        if err_console.is_terminal:
            self._live = Live(
                self._renderable(), console=err_console, refresh_per_second=8, transient=False
            )
            self._live.start()

    def _renderable(self) -> Any:
        lines = [Text(line) for line in self.progress.attempt_lines()]
        header = Text(self.progress.header())
        if self.progress.ended:
            return Group(header, *(Text("  ") + line for line in lines))
        if not self.progress.events:
            header = Text(f"{self.label} (job {self.progress.job_id})")
        return Group(Spinner("dots", header), *(Text("  ") + line for line in lines))

    def add(self, event: job_pb2.JobEvent) -> None:
        line = self.progress.add(event)
        if self._live is not None:
            self._live.update(self._renderable(), refresh=True)
        elif line:
            err_console.print(Text(line), soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            if not self.progress.events:
                self._live.transient = True  # nothing to keep: the spinner goes
            self._live.update(self._renderable(), refresh=True)
            self._live.stop()
            self._live = None


def _cancel_after_interrupt(client: Client, job_id: str) -> None:
    try:
        response: service_pb2.CancelResponse = client.stub.Cancel(
            service_pb2.CancelRequest(job_id=job_id), timeout=5
        )
    except grpc.RpcError as err:
        err_console.print(
            Text(
                f"could not cancel job {job_id}: {describe_rpc_error(err, client.addr)}\n"
                f"waiting up to {CANCEL_WAIT_S:.0f} s for its result; Ctrl-C again to quit now"
            )
        )
        return
    if response.cancelled:
        text = (
            f"cancelling job {job_id}; the node stops it and stores its receipt. Waiting up to "
            f"{CANCEL_WAIT_S:.0f} s for the result; Ctrl-C again to quit now"
        )
    else:
        text = f"job {job_id} had already ended; waiting for its result (Ctrl-C again to quit now)"
    err_console.print(text, markup=False)


class _SubmitRun:
    """One Submit with its watch, its live view and its Ctrl-C handling."""

    def __init__(
        self, client: Client, request: service_pb2.SubmitRequest, watch: bool, spinner: str | None
    ) -> None:
        self.client = client
        self.request = request
        self.job_id = request.job_id
        self.wake: queue.Queue[Any] = queue.Queue()
        self.watch = watch
        self.watcher: _Watch | None = None
        self.future: grpc.Future[service_pb2.SubmitResponse] | None = None
        self.view = _LiveView(JobProgress(self.job_id), spinner or "submitting") if watch else None
        self.status = None
        if spinner is not None and self.view is None:
            self.status = err_console.status(escape(spinner))
            self.status.start()
        self.cancel_deadline: float | None = None
        self.watch_deadline: float | None = None

    def start(self) -> None:
        # Watch first: the node waits for a job id it has not seen yet, so no event is missed.
        # A job allowed to run longer than --timeout gets the time it may take
        # (plus room to find a worker and answer), or it would be cut short.
        run_s = self.request.manifest.limits.timeout_ms / 1000
        deadline = max(self.client.timeout, run_s + 30) if run_s else self.client.timeout
        if self.watch:
            self.watcher = _Watch(self.client, self.job_id, self.wake, deadline)
        self.future = self.client.stub.Submit.future(self.request, timeout=deadline)
        self.future.add_done_callback(lambda _: self.wake.put(_Wake.SUBMIT_DONE))

    def step(self) -> bool:
        """Wait for and handle one thing; True when the run is over."""
        assert self.future is not None
        watcher, view = self.watcher, self.view
        if self.future.done():
            while not self.wake.empty():  # what already arrived counts
                self._handle(self.wake.get_nowait())
            if view is None or watcher is None or not watcher.open or view.progress.ended:
                return True
            if not view.progress.events:
                return True  # the node publishes no events for it (an older node)
            if self.watch_deadline is None:
                self.watch_deadline = time.monotonic() + WATCH_GRACE_S
        # Wake at least each second: a wait without a timeout may hold off Ctrl-C,
        # and a done-callback lost to an early Ctrl-C is caught up with.
        deadlines = [d for d in (self.cancel_deadline, self.watch_deadline) if d is not None]
        timeout = min([1.0, *(d - time.monotonic() for d in deadlines)])
        try:
            item = self.wake.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            now = time.monotonic()
            if self.watch_deadline is not None and now >= self.watch_deadline:
                return True
            if self.cancel_deadline is not None and now >= self.cancel_deadline:
                err_console.print(
                    f"the node did not answer within {CANCEL_WAIT_S:.0f} s; the job may still "
                    f"be running: plasm watch {self.job_id}",
                    markup=False,
                )
                raise KeyboardInterrupt from None
            return False
        self._handle(item)
        return False

    def _handle(self, item: Any) -> None:
        if isinstance(item, job_pb2.JobEvent) and self.view is not None:
            self.view.add(item)

    def interrupted(self) -> None:
        """Ctrl-C: the first one cancels the job; raises for a second one."""
        if self.future is None or self.cancel_deadline is not None:
            raise KeyboardInterrupt
        if self.status is not None:
            self.status.stop()
            self.status = None
        self.cancel_deadline = time.monotonic() + CANCEL_WAIT_S
        _cancel_after_interrupt(self.client, self.job_id)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        if self.view is not None:
            self.view.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.future is not None and not self.future.done():
            self.future.cancel()


def run_submit(
    client: Client,
    request: service_pb2.SubmitRequest,
    *,
    watch: bool,
    spinner: str | None,
) -> SubmitOutcome:
    """Submit `request`; with `watch`, show its events live meanwhile.

    The first Ctrl-C asks the node to cancel the job and waits (bounded) for
    the Submit to answer with the CANCELLED result; a second one raises
    KeyboardInterrupt at once.
    """
    run = _SubmitRun(client, request, watch, spinner)
    try:
        while True:
            try:
                if run.future is None:
                    run.start()
                if run.step():
                    break
            except KeyboardInterrupt:
                run.interrupted()
    finally:
        run.close()
    assert run.future is not None
    try:
        response: service_pb2.SubmitResponse = run.future.result()
    except grpc.RpcError as err:
        die(describe_rpc_error(err, client.addr))
    view = run.view
    return SubmitOutcome(response=response, shown_live=view is not None and view.progress.ended)


# -- commands --------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest) if args.manifest else manifest_pb2.JobManifest()
    module = read_file(args.module, "module") if args.module else b""
    if not module and not manifest.module_sha256:
        die("give a module file, or a manifest with module_sha256", EXIT_USAGE)
    if args.stdin is not None and args.stdin_file is not None:
        die("use --stdin or --stdin-file, not both", EXIT_USAGE)
    if args.stdin is not None:
        manifest.stdin = args.stdin.encode()
    elif args.stdin_file is not None:
        manifest.stdin = read_file(args.stdin_file, "stdin file")
    if not manifest.args and (args.args or module):
        # argv[0] is the module's name, as a shell would give it.
        manifest.args.append(Path(args.module).name if args.module else "module.wasm")
    manifest.args.extend(args.args)
    for name, value in parse_env(args.env):
        manifest.env.append(manifest_pb2.EnvVar(name=name, value=value))
    lim = manifest.limits
    for flag, field in (
        ("memory", "max_memory_bytes"),
        ("fuel", "max_fuel"),
        ("timeout_ms", "timeout_ms"),
        ("max_stdout", "max_stdout_bytes"),
        ("max_stderr", "max_stderr_bytes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(lim, field, value)
    apply_placement(manifest.placement, args)
    if module and manifest.module_sha256 and manifest.module_sha256 != sha256_hex(module):
        die(f"{args.module} does not hash to the manifest's module_sha256", EXIT_USAGE)
    job_id = args.job_id or secrets.token_hex(16)

    client = connect(args)
    request = service_pb2.SubmitRequest(manifest=manifest, module=module, job_id=job_id)
    people = not args.quiet and not args.json
    watch = args.watch if args.watch is not None else err_console.is_terminal and people
    spinner = None
    if err_console.is_terminal and people:
        spinner = f"running {args.module or manifest.module_sha256[:16]} on {args.addr}…"
    ran = run_submit(client, request, watch=watch, spinner=spinner)
    response = ran.response
    result = response.result
    executor = response.executor_node_id
    verification = verify_receipt(
        codec.envelope_from_pb(result.receipt),
        # The node says who ran the job: the receipt must be theirs.
        expected_executor_node_id=args.expect_node or executor or None,
        stdout=result.stdout,
        stderr=result.stderr,
        module=module or None,
        job_input=ReceiptInput(
            args=tuple(manifest.args), env=codec.env_pairs(manifest), stdin=manifest.stdin
        ),
    )
    if args.receipt_out:
        Path(args.receipt_out).write_text(
            json_format.MessageToJson(result.receipt, indent=2) + "\n", "utf-8"
        )
    outcome = receipt_pb2.Outcome.Name(result.outcome).removeprefix("OUTCOME_").lower()
    if args.json:
        print_json(
            {
                "jobId": result.job_id,
                "executorNodeId": executor,
                "attempts": [
                    json_format.MessageToDict(a, always_print_fields_with_no_presence=True)
                    for a in response.attempts
                ],
                "outcome": outcome,
                "exitCode": result.exit_code,
                "trapCode": result.trap_code,
                "detail": result.detail,
                "stdout": result.stdout.decode("utf-8", "replace"),
                "stderr": result.stderr.decode("utf-8", "replace"),
                "receipt": envelope_json(result.receipt),
                "receiptBody": body_json(verification.body) if verification.body else None,
                "verification": verification_json(verification),
            }
        )
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        if result.stderr:
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.flush()
        if not args.quiet:
            if result.stdout and not result.stdout.endswith(b"\n"):
                err_console.print()  # keep stdout byte-exact; separate on stderr
            if verification.body is not None:
                show_body(verification.body)
            show_verification(verification)
            if executor:
                err_console.print(
                    Text(f"executed by node {printable(executor, 64)}"), soft_wrap=True
                )
            if args.receipt_out:
                err_console.print(f"receipt written to {escape(args.receipt_out)}")
        attempts = attempts_summary(response.attempts)
        # Told even with --quiet when the job may have run on another node too.
        told = ran.shown_live or (args.quiet and not may_also_have_run(response.attempts))
        if attempts and not told:
            err_console.print(Text("\n".join(attempts)), soft_wrap=True)
    if not verification.valid:
        return EXIT_UNVERIFIED
    if result.outcome == receipt_pb2.OUTCOME_SUCCESS:
        return 0
    if result.outcome == receipt_pb2.OUTCOME_NONZERO_EXIT:
        return min(max(result.exit_code, 1), 255)
    if not args.json:
        err_console.print(f"[red]job ended: {outcome}[/] {escape(result.detail)}")
    return EXIT_JOB_FAILED


_PLACEMENT_MODES = {
    "auto": capability_pb2.PLACEMENT_MODE_AUTO,
    "local": capability_pb2.PLACEMENT_MODE_LOCAL,
    "peer": capability_pb2.PLACEMENT_MODE_PEER,
}


def apply_placement(placement: capability_pb2.PlacementRequirements, args: Any) -> None:
    """--placement, --local and --peer over the manifest's placement; auto when none says."""
    mode: str | None = args.placement
    for flag, implied in (("--local", "local" if args.local else None), ("--peer", args.peer)):
        if implied is None:
            continue
        wanted = "local" if flag == "--local" else "peer"
        if mode not in (None, wanted):
            die(f"{flag} contradicts --placement {mode}", EXIT_USAGE)
        mode = wanted
    if args.peer is not None:
        try:
            placement.peer_node_id = check_hex64(args.peer, "--peer")
        except InvalidIdError as err:
            die(str(err), EXIT_USAGE)
    if mode is not None:
        placement.mode = _PLACEMENT_MODES[mode]
    elif placement.mode == capability_pb2.PLACEMENT_MODE_UNSPECIFIED:
        placement.mode = capability_pb2.PLACEMENT_MODE_AUTO
    if placement.mode == capability_pb2.PLACEMENT_MODE_PEER and not placement.peer_node_id:
        die("--placement peer needs --peer NODE_ID", EXIT_USAGE)


def cmd_watch(args: argparse.Namespace) -> int:
    client = connect(args)
    progress = JobProgress(args.job_id)
    out = Console(highlight=False)
    live = None
    if out.is_terminal and not args.json:
        live = Live(Text(f"waiting for job {args.job_id} …"), console=out, refresh_per_second=8)
        live.start()
    try:
        call = client.stub.Watch(
            service_pb2.WatchRequest(job_id=args.job_id), timeout=client.timeout
        )
        for response in call:
            event = response.event
            line = progress.add(event)
            if args.json:
                document = json_format.MessageToDict(event)
                sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
                sys.stdout.flush()
            elif live is not None:
                live.update(Group(*(Text(line) for line in progress.lines())), refresh=True)
            elif line:
                out.print(Text(line), soft_wrap=True)
    except grpc.RpcError as err:
        die(describe_rpc_error(err, client.addr))
    finally:
        if live is not None:
            live.stop()
    if not progress.ended:
        die(f"the node ended the watch before job {args.job_id} ended")
    return progress.exit_code()


def cmd_cancel(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.CancelResponse = client.call(
        "Cancel", service_pb2.CancelRequest(job_id=args.job_id)
    )
    if args.json:
        print_json({"jobId": args.job_id, "cancelled": response.cancelled})
    elif response.cancelled:
        Console(highlight=False).print(
            f"cancelling job {args.job_id}: the node stops it and stores its receipt "
            f"(plasm watch {args.job_id} shows its end)",
            markup=False,
        )
    else:
        Console(highlight=False).print(f"job {args.job_id} had already ended", markup=False)
    return 0


def load_envelope(path: str) -> envelope_pb2.SignedEnvelope:
    """A receipt file: proto3 JSON of a SignedEnvelope or StoredReceipt, or binary."""
    raw = read_file(path, "receipt")
    env = envelope_pb2.SignedEnvelope()
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            die(f"receipt {path} is not valid JSON: {err}", EXIT_USAGE)
        if isinstance(document, dict) and "receipt" in document:
            document = document["receipt"]
        try:
            json_format.ParseDict(document, env, ignore_unknown_fields=False)
        except json_format.ParseError as err:
            die(f"receipt {path} is not a SignedEnvelope: {err}", EXIT_USAGE)
    else:
        try:
            env.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - protobuf raises several types here
            die(f"receipt {path} is neither JSON nor a binary SignedEnvelope", EXIT_USAGE)
    return env


def cmd_verify(args: argparse.Namespace) -> int:
    if args.job_id:
        client = connect(args)
        stored = client.call("GetReceipt", service_pb2.GetReceiptRequest(job_id=args.job_id))
        env = stored.receipt.receipt
    elif args.receipt:
        env = load_envelope(args.receipt)
    else:
        die("give a receipt file or --job-id", EXIT_USAGE)
    job_input = None
    if args.stdin_text is not None or args.input_args or args.input_env:
        job_input = ReceiptInput(
            args=tuple(args.input_args),
            env=tuple(parse_env(args.input_env)),
            stdin=(args.stdin_text or "").encode(),
        )
    if args.daemon:
        client = connect(args)
        request = service_pb2.VerifyRequest(
            receipt=env, expected_executor_node_id=args.expect_node or ""
        )
        if args.stdout_file:
            request.stdout = read_file(args.stdout_file, "stdout file")
        if args.stderr_file:
            request.stderr = read_file(args.stderr_file, "stderr file")
        if args.module:
            request.module = read_file(args.module, "module")
        if job_input is not None:
            request.input.args.extend(job_input.args)
            request.input.env.extend(manifest_pb2.EnvVar(name=k, value=v) for k, v in job_input.env)
            request.input.stdin = job_input.stdin
        response: service_pb2.VerifyResponse = client.call("Verify", request)
        if args.json:
            print_json(json_format.MessageToDict(response))
        else:
            for c in response.checks:
                mark = "[green]ok[/]" if c.passed else "[red]FAILED[/]"
                name, detail = printable(c.name), printable(c.detail, 4096)
                err_console.print(f"{mark} {escape(name)}: {escape(detail)}")
            err_console.print("[green]valid[/]" if response.valid else "[red]NOT valid[/]")
        return 0 if response.valid else EXIT_UNVERIFIED
    result = verify_receipt(
        codec.envelope_from_pb(env),
        expected_executor_node_id=args.expect_node or None,
        stdout=read_file(args.stdout_file, "stdout file") if args.stdout_file else None,
        stderr=read_file(args.stderr_file, "stderr file") if args.stderr_file else None,
        module=read_file(args.module, "module") if args.module else None,
        job_input=job_input,
    )
    if args.json:
        out = verification_json(result)
        out["receiptBody"] = body_json(result.body) if result.body else None
        print_json(out)
    else:
        if result.body is not None:
            show_body(result.body)
        show_verification(result)
    return 0 if result.valid else EXIT_UNVERIFIED


def _short_relay(relay: str) -> str:
    """ "<node id>@<host:port>" with the node id cut to 16 characters, for a table."""
    node_id, _, address = relay.partition("@")
    return f"{node_id[:16]}@{address}"


def _reachability_text(value: int) -> str:
    """ "public", "private" (behind a NAT or firewall) or "unknown" (not yet checked)."""
    if value == reachability_pb2.REACHABILITY_PUBLIC:
        return "public (peers can dial it)"
    if value == reachability_pb2.REACHABILITY_PRIVATE:
        return "private (peers cannot dial it: NAT or firewall)"
    return "unknown"


def cmd_info(args: argparse.Namespace) -> int:
    client = connect(args)
    info: service_pb2.GetNodeInfoResponse = client.call(
        "GetNodeInfo", service_pb2.GetNodeInfoRequest()
    )
    if args.json:
        print_json(json_format.MessageToDict(info, always_print_fields_with_no_presence=True))
        return 0
    caps = info.capabilities
    table = Table(
        title=f"plasmd {info.version} at {args.addr}", show_header=False, title_justify="left"
    )
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in (
        ("node id", info.node_id),
        ("listening", ", ".join(info.grpc_addresses)),
        ("started", info.started_at.ToJsonString()),
        (
            "platform",
            f"{caps.arch} {caps.os}, {caps.cores} cores, {caps.memory_bytes / 2**30:.1f} GiB",
        ),
        ("runtime", f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})"),
        ("job slots", f"{caps.free_job_slots} free of {caps.total_job_slots}"),
        (
            "jobs",
            f"{info.jobs_running} running, {info.jobs_queued} queued, "
            f"{info.jobs_completed} completed since start",
        ),
        ("overlay", info.overlay_address or "off"),
        ("reachability", _reachability_text(info.reachability) if info.overlay_address else "-"),
        ("relays", ", ".join(_short_relay(r) for r in info.relays) or "-"),
        ("peers", str(len(info.peers))),
        ("receipts stored", str(info.receipts_stored)),
        ("modules cached", str(info.cached_modules)),
        ("max memory", f"{caps.max_limits.max_memory_bytes / 2**20:.0f} MiB per job"),
        ("max time", f"{caps.max_limits.timeout_ms / 1000:g} s per job"),
    ):
        table.add_row(k, Text(v))
    Console(highlight=False).print(table)
    return 0


# -- status --------------------------------------------------------------------


def _rpc_reason(err: grpc.RpcError) -> str:
    if isinstance(err, grpc.Call):
        for key, value in err.trailing_metadata() or ():
            if key == codec.REASON_KEY:
                return str(value)
    return ""


def _uptime(seconds: float) -> str:
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if not days:
        parts.append(f"{minutes}m")
    if not days and not hours:
        parts.append(f"{s}s")
    return " ".join(parts)


def _metrics_target(value: str) -> tuple[str, int, str]:
    """`host:port`, or an http:// URL -> (host, port, path)."""
    rest = value.removeprefix("http://")
    address, _, path = rest.partition("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(
            f"--metrics takes host:port or http://host:port/metrics, got {value!r}", EXIT_USAGE
        )
    return host.strip("[]"), int(port), "/" + (path or "metrics")


def probe_metrics(value: str, timeout: float) -> dict[str, Any]:
    """GET the node's /metrics (no proxy: it listens on loopback)."""
    import http.client

    host, port, path = _metrics_target(value)
    url = f"http://{host_port_text(host, port)}{path}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(16 * 1024 * 1024)
    except (OSError, http.client.HTTPException) as err:
        return {"url": url, "reachable": False, "error": str(err) or type(err).__name__}
    finally:
        connection.close()
    if response.status != 200:
        return {"url": url, "reachable": False, "error": f"HTTP {response.status}"}
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"url": url, "reachable": True, "samples": samples}


def host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_status(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `plasm status` reports, as the --json object."""
    if args.metrics:
        _metrics_target(args.metrics)  # a usage error before anything is asked
    client = connect(args)
    try:
        return _gather_status(client, args)
    finally:
        client.channel.close()


def _gather_status(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"address": args.addr, "healthy": False, "warnings": []}
    warnings: list[str] = report["warnings"]
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        check = health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
        )
        report["health"] = str(health_pb2.HealthCheckResponse.ServingStatus.Name(check.status))
        info: service_pb2.GetNodeInfoResponse = client.stub.GetNodeInfo(
            service_pb2.GetNodeInfoRequest(), timeout=args.timeout
        )
    except grpc.RpcError as err:
        report.setdefault("health", "UNREACHABLE")
        report["error"] = describe_rpc_error(err, args.addr)
        return report
    serving = report["health"] == "SERVING"
    if not serving:
        warnings.append(f"the node is {report['health']}: it is stopping or not ready")
    started = info.started_at.ToNanoseconds() / 1e9
    caps = info.capabilities
    report.update(
        nodeId=info.node_id,
        version=info.version,
        startedAt=info.started_at.ToJsonString(),
        uptimeSeconds=round(max(0.0, time.time() - started), 1),
        grpcAddresses=list(info.grpc_addresses),
        overlayAddress=info.overlay_address,
        jobs={
            "running": info.jobs_running,
            "queued": info.jobs_queued,
            "completed": info.jobs_completed,
            "slots": caps.total_job_slots,
            "freeSlots": caps.free_job_slots,
        },
        receiptsStored=info.receipts_stored,
        cachedModules=info.cached_modules,
    )
    peers = {"connected": len(info.peers), "known": 0, "workers": 0}
    report["peers"] = peers
    if not info.overlay_address:
        report["dht"] = "off"
        warnings.append(
            "the overlay is off: jobs run only on this node and no peer can reach it "
            "(set overlay.listen)"
        )
    else:
        try:
            listed: service_pb2.ListPeersResponse = client.stub.ListPeers(
                service_pb2.ListPeersRequest(), timeout=args.timeout
            )
        except grpc.RpcError as err:
            if _rpc_reason(err) == "ERROR_REASON_DHT_UNAVAILABLE":
                report["dht"] = "off"
                warnings.append(
                    "the DHT is off (dht.enabled = false): automatic placement finds no workers"
                )
            else:
                report["dht"] = "unknown"
                warnings.append(f"ListPeers failed: {describe_rpc_error(err, args.addr)}")
        else:
            peers["known"] = len(listed.peers)
            peers["workers"] = sum(
                1 for p in listed.peers if p.record_content.capabilities.total_job_slots > 0
            )
            report["dht"] = "on" if listed.peers else "no peers"
            if not listed.peers:
                warnings.append(
                    "no peers: add overlay.bootstrap entries (NODE_ID@host:port) and open "
                    "the overlay's UDP port, or wait for peers to find this node"
                )
    if info.jobs_queued:
        warnings.append(
            f"all {caps.total_job_slots} job slots are busy and {info.jobs_queued} jobs wait"
        )
    if args.metrics:
        report["metrics"] = probe_metrics(args.metrics, min(args.timeout, 10.0))
        if not report["metrics"]["reachable"]:
            warnings.append(
                f"metrics: nothing answers at {report['metrics']['url']} "
                f"({report['metrics']['error']}); is metrics.listen set?"
            )
    else:
        report["metrics"] = None
    report["healthy"] = serving
    return report


def cmd_status(args: argparse.Namespace) -> int:
    report = node_status(args)
    if args.json:
        print_json(report)
        return 0 if report["healthy"] else EXIT_RPC
    out = Console(highlight=False)
    if "nodeId" not in report:
        out.print(Text(f"plasmd at {args.addr}: {report['health']}", style="bold red"))
        out.print(Text(report.get("error", "")))
        return EXIT_RPC
    colour = "green" if report["healthy"] else "red"
    out.print(
        Text.assemble(
            (f"plasmd {printable(report['version'], 40)} at {args.addr}: ", "bold"),
            (report["health"], f"bold {colour}"),
        )
    )
    jobs, peers = report["jobs"], report["peers"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    metrics = report["metrics"]
    for key, value in (
        ("node id", report["nodeId"]),
        ("uptime", f"{_uptime(report['uptimeSeconds'])} (since {report['startedAt']})"),
        ("gRPC", ", ".join(report["grpcAddresses"])),
        ("overlay", f"udp {report['overlayAddress']}" if report["overlayAddress"] else "off"),
        (
            "jobs",
            f"{jobs['running']} running, {jobs['queued']} queued, {jobs['completed']} "
            f"completed since start ({jobs['freeSlots']} of {jobs['slots']} slots free)",
        ),
        ("receipts", f"{report['receiptsStored']} stored"),
        (
            "peers",
            f"{peers['connected']} connected, {peers['known']} in the DHT routing table "
            f"({peers['workers']} take jobs)",
        ),
        ("DHT", report["dht"]),
        (
            "metrics",
            "not checked (--metrics HOST:PORT)"
            if metrics is None
            else f"{metrics['url']}: {metrics['samples']} samples"
            if metrics["reachable"]
            else f"{metrics['url']}: not answering",
        ),
    ):
        table.add_row(key, Text(printable(str(value))))
    out.print(table)
    for warning in report["warnings"]:
        out.print(Text.assemble(("warning: ", "bold yellow"), printable(warning)))
    return 0 if report["healthy"] else EXIT_RPC


def cmd_peers(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.connections:
        return _show_connections(client, args)
    response: service_pb2.ListPeersResponse = client.call(
        "ListPeers", service_pb2.ListPeersRequest()
    )
    if args.json:
        print_json(
            {
                "peers": [
                    json_format.MessageToDict(p, always_print_fields_with_no_presence=True)
                    for p in response.peers
                ]
            }
        )
        return 0
    _peer_table("DHT routing table (nearest first)", response.peers)
    if not response.peers:
        err_console.print("no peers known yet (add overlay.bootstrap peers, or wait for them)")
    return 0


def _show_connections(client: Client, args: argparse.Namespace) -> int:
    info: service_pb2.GetNodeInfoResponse = client.call(
        "GetNodeInfo", service_pb2.GetNodeInfoRequest()
    )
    if args.json:
        print_json(
            {
                "overlayAddress": info.overlay_address,
                "peers": [json_format.MessageToDict(p) for p in info.peers],
            }
        )
        return 0
    title = f"overlay connections of {info.node_id[:16]}… ({info.overlay_address or 'overlay off'})"
    table = Table(title=title, title_justify="left")
    for col in ("node id", "address", "direction", "rtt ms"):
        table.add_column(col)
    for p in info.peers:
        rtt = f"{p.rtt_us / 1000:.2f}" if p.rtt_us else "-"
        table.add_row(Text(p.node_id), Text(p.address), Text(p.direction), rtt)
    Console(highlight=False).print(table)
    if not info.peers:
        err_console.print("no open overlay connections (add overlay.bootstrap peers)")
    return 0


def _peer_table(title: str, peers: Any) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("node id", "address", "rtt ms", "arch", "runtime", "max memory", "slots free"):
        table.add_column(col)
    for p in peers:
        rtt = f"{p.rtt_us / 1000:.2f}" if p.connected and p.rtt_us else "-"
        if p.HasField("record_content"):
            caps = p.record_content.capabilities
            arch = caps.arch
            runtime = f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})"
            memory = f"{caps.max_limits.max_memory_bytes / 2**20:.0f} MiB"
            slots = f"{caps.free_job_slots}/{caps.total_job_slots}"
        else:
            arch = runtime = memory = slots = "?"
        table.add_row(
            Text(short(printable(p.node_id, 64))),
            Text(printable(p.address)),
            rtt,
            Text(printable(arch)),
            Text(printable(runtime)),
            memory,
            slots,
        )
    Console(highlight=False).print(table)


def cmd_peer(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.FindPeerResponse = client.call(
        "FindPeer", service_pb2.FindPeerRequest(node_id=args.node_id)
    )
    if args.json:
        print_json(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))
        return 0
    _peer_table(
        f"found in {response.duration_us / 1000:.1f} ms, {response.hops} hops, "
        f"{response.rpcs} RPCs",
        [response.peer],
    )
    record = response.peer.record_content
    err_console.print(
        f"record seq {record.seq}, expires {record.expires_at.ToJsonString()}, "
        f"addresses {', '.join(record.addresses) or '-'}",
        markup=False,
    )
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    import threading

    from plasm_grpc.cli.devnet import DevNet, DevnetError

    if not 1 <= args.nodes <= 200:
        die("--nodes must be between 1 and 200", EXIT_USAGE)
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="plasm-devnet-"))
    net = DevNet(root)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        err_console.print(f"starting {args.nodes} plasmd on loopback under {root} …", markup=False)
        try:
            net.start(args.nodes)
        except DevnetError as err:
            die(str(err))
        table = Table(
            title=f"devnet: {args.nodes} nodes (node 0 is the seed)", title_justify="left"
        )
        for col in ("node", "node id", "gRPC", "overlay (udp)"):
            table.add_column(col)
        for n in net.nodes:
            table.add_row(str(n.index), Text(short(n.node_id)), Text(n.grpc), Text(n.overlay))
        Console(highlight=False).print(table)
        err_console.print(
            f"addresses in {root / 'devnet.json'}, logs in {root}/node*/plasmd.log\n"
            f"try: plasm --addr {net.nodes[0].grpc} peers\n"
            "Ctrl-C stops every node.",
            markup=False,
        )
        if args.once:
            stop.set()
        while not stop.wait(0.5):
            dead = [n for n in net.nodes if n.process.poll() is not None]
            if dead:
                err_console.print(
                    f"node {dead[0].index} exited with {dead[0].process.returncode} "
                    f"(see {dead[0].log}); stopping the devnet",
                    markup=False,
                )
                net.stop()
                return EXIT_RPC
        err_console.print("stopping …", markup=False)
        codes = net.stop()
        bad = [i for i, code in enumerate(codes) if code != 0]
        if bad:
            err_console.print(f"nodes {bad} did not stop cleanly", markup=False)
            return EXIT_RPC
        err_console.print(f"stopped {len(codes)} nodes", markup=False)
        return 0
    finally:
        net.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def cmd_workers(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.FindWorkersResponse = client.call(
        "FindWorkers",
        service_pb2.FindWorkersRequest(
            wasi_version=args.wasi or "",
            min_memory_bytes=args.memory,
            arch=args.arch or "",
            min_free_slots=args.min_free_slots,
            limit=args.limit,
        ),
    )
    if args.json:
        print_json(
            {
                "capabilityClass": response.capability_class,
                "workers": [
                    json_format.MessageToDict(p, always_print_fields_with_no_presence=True)
                    for p in response.workers
                ],
            }
        )
        return 0
    _peer_table(f"workers for {response.capability_class} (best first)", response.workers)
    if not response.workers:
        err_console.print("no worker meets these requirements (none found through the DHT)")
    return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.ListReceiptsResponse = client.call(
        "ListReceipts",
        service_pb2.ListReceiptsRequest(page_size=args.limit, page_token=args.page_token or ""),
    )
    if args.json:
        print_json(json_format.MessageToDict(response))
        return 0
    table = Table(title="receipts (newest first)", title_justify="left")
    for col in ("job id", "finished", "outcome", "exit", "wall ms", "module"):
        table.add_column(col)
    for stored in response.receipts:
        b = stored.body
        table.add_row(
            Text(b.job_id),
            b.finished_at.ToJsonString(),
            receipt_pb2.Outcome.Name(b.outcome).removeprefix("OUTCOME_").lower(),
            str(b.exit_code),
            f"{b.wall_time_us / 1000:.2f}",
            Text(b.module_sha256[:16] + "…"),
        )
    Console(highlight=False).print(table)
    if response.next_page_token:
        err_console.print(f"more: plasm receipts --page-token {escape(response.next_page_token)}")
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.GetReceiptResponse = client.call(
        "GetReceipt", service_pb2.GetReceiptRequest(job_id=args.job_id)
    )
    env = response.receipt.receipt
    if args.out:
        Path(args.out).write_text(json_format.MessageToJson(env, indent=2) + "\n", "utf-8")
        err_console.print(f"receipt written to {escape(args.out)}")
    if args.json:
        print_json({"receipt": envelope_json(env), "body": body_json(response.receipt.body)})
    else:
        show_body(response.receipt.body)
    return 0


# -- argument parsing ----------------------------------------------------------------


def _nonneg(value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {value!r}"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return n


def _job_id(value: str) -> str:
    try:
        return check_job_id(value)
    except InvalidIdError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}


def _size(value: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 536870912, 512MiB or 1GiB, got {value!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plasm",
        description="Run WebAssembly jobs on a Plasm node and verify their signed receipts.",
        epilog="exit codes: 0 ok; 1 daemon error; 2 usage; 3 job did not succeed; "
        "4 receipt failed verification; for a job that exits non-zero, its exit code.",
    )
    p.add_argument(
        "--addr",
        default=os.environ.get("PLASM_ADDR", DEFAULT_ADDR),
        help="plasmd gRPC address: host:port or unix:/path "
        f"(default $PLASM_ADDR or {DEFAULT_ADDR})",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="RPC deadline in seconds")
    p.add_argument("--version", action="version", version=f"plasm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "submit",
        help="run a WASI module and verify its receipt",
        description="Submit a WASI module to the node, print its stdout, and "
        "verify the signed receipt against what was sent and received. Ctrl-C asks the "
        "node to cancel the job and waits up to 10 s for its cancelled receipt; a second "
        "Ctrl-C quits at once.",
    )
    s.add_argument("module", nargs="?", help="the .wasm file ('-' for standard input)")
    s.add_argument("--manifest", help="JSON JobManifest (validated against its JSON Schema)")
    s.add_argument("--stdin", help="text given to the guest on stdin")
    s.add_argument("--stdin-file", help="file given to the guest on stdin ('-' for ours)")
    s.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        help="argument for the guest (repeatable); argv[0] is the module name",
    )
    s.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the guest (repeatable); none are inherited",
    )
    s.add_argument("--memory", type=_nonneg, help="max linear memory in bytes")
    s.add_argument("--fuel", type=_nonneg, help="fuel budget (about one unit per instruction)")
    s.add_argument("--timeout-ms", type=_nonneg, help="wall-time budget in milliseconds")
    s.add_argument("--max-stdout", type=_nonneg, help="stdout cap in bytes")
    s.add_argument("--max-stderr", type=_nonneg, help="stderr cap in bytes")
    s.add_argument(
        "--placement",
        choices=sorted(_PLACEMENT_MODES),
        help="where the job runs: auto (the node picks a capable peer; the default), "
        "local (this node) or peer (the node given with --peer)",
    )
    s.add_argument("--local", action="store_true", help="same as --placement local")
    s.add_argument("--peer", metavar="NODE_ID", help="run on this node id (implies peer)")
    s.add_argument(
        "--job-id",
        type=_job_id,
        help="the job's id (32 lowercase hex); default: a random one, chosen here so the "
        "job can be watched and cancelled while it runs",
    )
    s.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the job's events live on stderr: offers, declines, where it runs "
        "(default: when stderr is a terminal, without --quiet or --json)",
    )
    s.add_argument("--expect-node", help="fail verification unless this node id signed")
    s.add_argument("--receipt-out", help="write the receipt (SignedEnvelope JSON) here")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the job's output")
    s.add_argument("--json", action="store_true", help="one JSON object for scripts")
    s.set_defaults(func=cmd_submit)

    wa = sub.add_parser(
        "watch",
        help="follow a job's events until it ends",
        description="Stream a job's events from the node it was submitted to: submitted, "
        "offered to a worker, declined (and why), accepted, running, finished or failed. "
        "Starts from the job's beginning and waits briefly for a job not submitted yet. "
        "Exits like `plasm submit`: 0 on success, the guest's code for a non-zero exit, "
        "3 when the job failed or ended otherwise.",
    )
    wa.add_argument("job_id", type=_job_id, help="32 lowercase hex")
    wa.add_argument("--json", action="store_true", help="one JSON object per event, per line")
    wa.set_defaults(func=cmd_watch)

    ca = sub.add_parser(
        "cancel",
        help="cancel a job submitted to the node",
        description="Ask the node to cancel a job it is running or placing: the guest is "
        "stopped wherever it runs, and the job's Submit is answered with a receipt saying "
        "cancelled. Exits 0 whether it was cancelled or had already ended, 1 when the node "
        "does not know the job.",
    )
    ca.add_argument("job_id", type=_job_id, help="32 lowercase hex")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=cmd_cancel)

    v = sub.add_parser(
        "verify",
        help="verify a receipt offline (or via the daemon)",
        description="Check a receipt's Ed25519 signature under the receipt "
        "domain, that its signer is its executor, and optionally "
        "that output, module and input match its hashes. Offline "
        "unless --daemon or --job-id is given.",
    )
    v.add_argument("receipt", nargs="?", help="receipt file (JSON or binary SignedEnvelope)")
    v.add_argument("--job-id", help="fetch this job's receipt from the node, verify offline")
    v.add_argument("--stdout-file", help="check this file against the receipt's stdout hash")
    v.add_argument("--stderr-file", help="check this file against the receipt's stderr hash")
    v.add_argument("--module", help="check this module file against the receipt's module hash")
    v.add_argument("--stdin-text", help="input check: the stdin text that was sent")
    v.add_argument(
        "--input-arg",
        dest="input_args",
        action="append",
        default=[],
        help="input check: an argument that was sent, argv[0] included (repeatable)",
    )
    v.add_argument(
        "--input-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="input check: an env var that was sent (repeatable)",
    )
    v.add_argument("--expect-node", help="require this signer node id")
    v.add_argument("--daemon", action="store_true", help="ask the node's Verify RPC instead")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    st = sub.add_parser(
        "status",
        help="is the node healthy: health, uptime, jobs, peers, DHT, warnings",
        description="One screen on a node's health: the gRPC health check, node id, "
        "version, uptime, addresses, jobs, receipts, peers and the DHT, and warnings "
        "(no peers, overlay off, metrics not answering). Exits 0 when the node is "
        "SERVING, 1 when it is unreachable or not serving.",
    )
    st.add_argument(
        "--metrics",
        default=os.environ.get("PLASM_METRICS", ""),
        metavar="HOST:PORT",
        help="also check the node's /metrics endpoint (default $PLASM_METRICS)",
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    i = sub.add_parser("info", help="node id, capabilities and state")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    pe = sub.add_parser(
        "peers",
        help="peers in the node's DHT routing table, with their capabilities",
        description="List the peers this node's DHT knows (nearest first): address, "
        "round-trip time when connected, and what their signed peer records say "
        "they can run ('?' until a record is known).",
    )
    pe.add_argument(
        "--connections", action="store_true", help="show open overlay connections instead"
    )
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func=cmd_peers)

    pf = sub.add_parser(
        "peer",
        help="look one node up by id through the DHT",
        description="Find NODE_ID's signed peer record through the DHT and show "
        "its addresses and capabilities, with the lookup's hops, RPCs and time.",
    )
    pf.add_argument("node_id", help="64 lowercase hex")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func=cmd_peer)

    w = sub.add_parser(
        "workers",
        help="find workers that can run a job, through the DHT",
        description="Look up the DHT's capability provider key for the job's WASI "
        "version and memory, and list the workers whose signed records meet every "
        "requirement, best first (most free slots, then lowest round-trip time).",
    )
    w.add_argument(
        "--memory",
        type=_size,
        default=0,
        help="memory the job needs: bytes, or with a KiB/MiB/GiB suffix (e.g. 512MiB)",
    )
    w.add_argument("--wasi", help="WASI version (default preview1)")
    w.add_argument("--arch", help="host architecture, e.g. x86_64 (default any)")
    w.add_argument(
        "--min-free-slots", type=_nonneg, default=0, help="free job slots the worker advertised"
    )
    w.add_argument("--limit", type=_nonneg, default=20, help="most workers to list (max 100)")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_workers)

    dn = sub.add_parser(
        "devnet",
        help="run a local network of N plasmd on loopback until Ctrl-C",
        description="Start N plasmd processes on 127.0.0.1 (node 0 is the seed, the "
        "others bootstrap from it through the DHT), each with its own data directory, "
        "log and kernel-chosen ports; print their addresses (also in DIR/devnet.json) "
        "and keep them running until Ctrl-C or SIGTERM, then stop them cleanly.",
    )
    dn.add_argument("--nodes", type=_nonneg, default=3, help="how many nodes (default 3)")
    dn.add_argument(
        "--dir", help="keep data directories and logs here (default: a temporary directory)"
    )
    dn.add_argument(
        "--once", action="store_true", help="start, print the addresses, then stop (a check)"
    )
    dn.set_defaults(func=cmd_devnet)

    r = sub.add_parser("receipts", help="list stored receipts, newest first")
    r.add_argument("--limit", type=_nonneg, default=20, help="receipts per page (max 1000)")
    r.add_argument("--page-token", help="from a previous page")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_receipts)

    g = sub.add_parser("receipt", help="show one stored receipt")
    g.add_argument("job_id")
    g.add_argument("--out", help="write the receipt (SignedEnvelope JSON) to this file")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_receipt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as err:
        err_console.print(f"[red]plasm:[/] {escape(str(err))}", soft_wrap=True)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
