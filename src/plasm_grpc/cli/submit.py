"""`plasm submit`, `plasm watch` and `plasm cancel`: run a job, watch it live,
cancel it on Ctrl-C.

This is the path a script takes many times a second, so it imports the client
and the verifier and nothing to draw unless stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from plasm_grpc.api.client import ApiError, PlasmClient, connect
from plasm_grpc.api.jobs import JobRequest, ManifestDraft
from plasm_grpc.api.views import Event, SubmitResult, envelope_json, envelope_json_text
from plasm_grpc.cli.events import (
    JobProgress,
    attempts_summary,
    exit_code_for,
    may_also_have_run,
)
from plasm_grpc.cli.output import (
    EXIT_JOB_FAILED,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    die,
    err_console,
    is_terminal,
    out_console,
    parse_env,
    print_json,
    printable,
    read_file,
    say,
    say_line,
    say_styled,
    stderr_is_terminal,
)
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.ids import check_hex64, sha256_hex

if TYPE_CHECKING:
    from rich.live import Live
    from rich.status import Status

CANCEL_WAIT_S = 10.0  # after Ctrl-C, how long to wait for the node's CANCELLED answer
WATCH_GRACE_S = 2.0  # after Submit answers, how long to wait for the watch to catch up


def load_manifest(path: str) -> ManifestDraft:
    """Parse a JSON manifest, validating it against schemas/job_manifest.schema.json."""
    from importlib.resources import files

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
    try:
        return ManifestDraft.from_document(document)
    except ValueError as err:
        die(f"manifest {path}: {err}", EXIT_USAGE)


def apply_placement(manifest: ManifestDraft, args: Any) -> None:
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
            manifest.peer_node_id = check_hex64(args.peer, "--peer")
        except InvalidIdError as err:
            die(str(err), EXIT_USAGE)
    if mode is not None:
        manifest.placement_mode = mode
    elif manifest.placement_mode is None:
        manifest.placement_mode = "auto"
    if manifest.placement_mode == "peer" and not manifest.peer_node_id:
        die("--placement peer needs --peer NODE_ID", EXIT_USAGE)


# -- running a Submit: watch it live, cancel it on Ctrl-C --------------------------------


class SubmitOutcome(NamedTuple):
    response: SubmitResult
    # The live view showed the job's end (so its attempts were shown too).
    shown_live: bool


class _Wake:
    SUBMIT_DONE = "submit done"
    WATCH_END = "watch ended"


class _Watch:
    """A Watch call read on a thread; events land on the caller's queue."""

    def __init__(
        self, client: PlasmClient, job_id: str, out: queue.Queue[Any], deadline: float
    ) -> None:
        # Longer than Submit's deadline: the watch must not end first.
        self._stream = client.watch(job_id, timeout=deadline + 15)
        self._out = out
        self.error: ApiError | None = None
        self.open = True
        threading.Thread(target=self._read, name="plasm-watch", daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self._out.put(event)
        except ApiError as err:
            self.error = err
        finally:
            self.open = False
            self._out.put(_Wake.WATCH_END)

    def stop(self) -> None:
        self._stream.cancel()


class _LiveView:
    """The job's progress on stderr: a rich Live on a terminal, else one line per event."""

    def __init__(self, progress: JobProgress, label: str) -> None:
        self.progress = progress
        self.label = label
        self._live: Live | None = None
        if stderr_is_terminal():
            from rich.live import Live

            self._live = Live(
                self._renderable(), console=err_console(), refresh_per_second=8, transient=False
            )
            self._live.start()

    def _renderable(self) -> Any:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        lines = [Text(line) for line in self.progress.attempt_lines()]
        header = Text(self.progress.header())
        if self.progress.ended:
            return Group(header, *(Text("  ") + line for line in lines))
        if not self.progress.events:
            header = Text(f"{self.label} (job {self.progress.job_id})")
        return Group(Spinner("dots", header), *(Text("  ") + line for line in lines))

    def add(self, event: Event) -> None:
        line = self.progress.add(event)
        if self._live is not None:
            self._live.update(self._renderable(), refresh=True)
        elif line:
            say_line(line)

    def stop(self) -> None:
        if self._live is not None:
            if not self.progress.events:
                self._live.transient = True  # nothing to keep: the spinner goes
            self._live.update(self._renderable(), refresh=True)
            self._live.stop()
            self._live = None


def _cancel_after_interrupt(client: PlasmClient, job_id: str) -> None:
    try:
        cancelled = client.cancel(job_id, timeout=5)
    except ApiError as err:
        say_line(
            f"could not cancel job {job_id}: {err}\n"
            f"waiting up to {CANCEL_WAIT_S:.0f} s for its result; Ctrl-C again to quit now"
        )
        return
    if cancelled:
        text = (
            f"cancelling job {job_id}; the node stops it and stores its receipt. Waiting up to "
            f"{CANCEL_WAIT_S:.0f} s for the result; Ctrl-C again to quit now"
        )
    else:
        text = f"job {job_id} had already ended; waiting for its result (Ctrl-C again to quit now)"
    say(text)


class _SubmitRun:
    """One Submit with its watch, its live view and its Ctrl-C handling."""

    def __init__(
        self, client: PlasmClient, request: JobRequest, watch: bool, spinner: str | None
    ) -> None:
        self.client = client
        self.request = request
        self.job_id = request.job_id
        self.wake: queue.Queue[Any] = queue.Queue()
        self.watch = watch
        self.watcher: _Watch | None = None
        self.future: Any = None
        self.view = _LiveView(JobProgress(self.job_id), spinner or "submitting") if watch else None
        self.status: Status | None = None
        if spinner is not None and self.view is None:
            from rich.markup import escape

            self.status = err_console().status(escape(spinner))
            self.status.start()
        self.cancel_deadline: float | None = None
        self.watch_deadline: float | None = None

    def start(self) -> None:
        # Watch first: the node waits for a job id it has not seen yet, so no event is missed.
        # A job allowed to run longer than --timeout gets the time it may take
        # (plus room to find a worker and answer), or it would be cut short.
        run_s = self.request.timeout_ms / 1000
        deadline = max(self.client.timeout, run_s + 30) if run_s else self.client.timeout
        if self.watch:
            self.watcher = _Watch(self.client, self.job_id, self.wake, deadline)
        self.future = self.client.start_submit(self.request, deadline)
        self.future.add_done_callback(lambda: self.wake.put(_Wake.SUBMIT_DONE))

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
                say(
                    f"the node did not answer within {CANCEL_WAIT_S:.0f} s; the job may still "
                    f"be running: plasm watch {self.job_id}"
                )
                raise KeyboardInterrupt from None
            return False
        self._handle(item)
        return False

    def _handle(self, item: Any) -> None:
        if isinstance(item, Event) and self.view is not None:
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
    client: PlasmClient,
    request: JobRequest,
    *,
    watch: bool,
    spinner: str | None,
    meanwhile: Callable[[], object] | None = None,
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
                    if meanwhile is not None:
                        meanwhile()  # while the node runs the job (it has its own core)
                if run.step():
                    break
            except KeyboardInterrupt:
                run.interrupted()
    finally:
        run.close()
    assert run.future is not None
    try:
        response = run.future.result()
    except ApiError as err:
        die(str(err))
    view = run.view
    return SubmitOutcome(response=response, shown_live=view is not None and view.progress.ended)


# -- the commands --------------------------------------------------------------------


def _manifest_from_args(args: argparse.Namespace, module: bytes) -> ManifestDraft:
    manifest = load_manifest(args.manifest) if args.manifest else ManifestDraft()
    if not module and not manifest.module_sha256:
        die("give a module file, or a manifest with module_sha256", EXIT_USAGE)
    if args.stdin is not None and args.stdin_file is not None:
        die("use --stdin or --stdin-file, not both", EXIT_USAGE)
    if args.stdin is not None:
        manifest.set_stdin(args.stdin.encode())
    elif args.stdin_file is not None:
        manifest.set_stdin(read_file(args.stdin_file, "stdin file"))
    if not manifest.args and (args.args or module):
        # argv[0] is the module's name, as a shell would give it.
        manifest.add_args([Path(args.module).name if args.module else "module.wasm"])
    manifest.add_args(args.args)
    for name, value in parse_env(args.env):
        manifest.add_env(name, value)
    for flag, field in (
        ("memory", "max_memory_bytes"),
        ("fuel", "max_fuel"),
        ("timeout_ms", "timeout_ms"),
        ("max_stdout", "max_stdout_bytes"),
        ("max_stderr", "max_stderr_bytes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            manifest.set_limit(field, value)
    apply_placement(manifest, args)
    if module and manifest.module_sha256 and manifest.module_sha256 != sha256_hex(module):
        die(f"{args.module} does not hash to the manifest's module_sha256", EXIT_USAGE)
    return manifest


def _load_the_verifier() -> None:
    """Import what checks and shows the receipt (cryptography's Ed25519, the
    receipt codec): done while the node runs the job, not before sending it."""
    import plasm_grpc.api.verify
    import plasm_grpc.cli.receipts  # noqa: F401


def cmd_submit(args: argparse.Namespace) -> int:
    module = read_file(args.module, "module") if args.module else b""
    manifest = _manifest_from_args(args, module)
    request = manifest.request(module=module, job_id=args.job_id or os.urandom(16).hex())
    client = connect(args.addr, args.timeout)
    people = not args.quiet and not args.json
    on_terminal = stderr_is_terminal()
    watch = args.watch if args.watch is not None else on_terminal and people
    spinner = None
    if on_terminal and people:
        spinner = f"running {args.module or manifest.module_sha256[:16]} on {args.addr}…"
    ran = run_submit(client, request, watch=watch, spinner=spinner, meanwhile=_load_the_verifier)
    from plasm_grpc.api.verify import ReceiptInput, verify_receipt
    from plasm_grpc.cli.receipts import body_of, show_body, show_verification, verification_json

    result = ran.response
    executor = result.executor_node_id
    verification = verify_receipt(
        result.receipt,
        # The node says who ran the job: the receipt must be theirs.
        expected_executor_node_id=args.expect_node or executor or None,
        stdout=result.stdout,
        stderr=result.stderr,
        module=module or None,
        job_input=ReceiptInput(args=request.args, env=request.env, stdin=request.stdin),
    )
    if args.receipt_out:
        Path(args.receipt_out).write_text(envelope_json_text(result.receipt), "utf-8")
    body = body_of(verification)
    outcome = result.outcome.lower()
    if args.json:
        print_json(
            {
                "jobId": result.job_id,
                "executorNodeId": executor,
                "attempts": [a.json() for a in result.attempts],
                "outcome": outcome,
                "exitCode": result.exit_code,
                "trapCode": result.trap_code,
                "detail": result.detail,
                "stdout": result.stdout.decode("utf-8", "replace"),
                "stderr": result.stderr.decode("utf-8", "replace"),
                "receipt": envelope_json(result.receipt),
                "receiptBody": body.json() if body is not None else None,
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
                say("")  # keep stdout byte-exact; separate on stderr
            if body is not None:
                show_body(body)
            show_verification(verification)
            if executor:
                say_line(f"executed by node {printable(executor, 64)}")
            if args.receipt_out:
                say(f"receipt written to {args.receipt_out}")
        attempts = attempts_summary(result.attempts)
        # Told even with --quiet when the job may have run on another node too.
        told = ran.shown_live or (args.quiet and not may_also_have_run(result.attempts))
        if attempts and not told:
            say_line("\n".join(attempts))
    if not verification.valid:
        return EXIT_UNVERIFIED
    if result.outcome in ("SUCCESS", "NONZERO_EXIT"):
        return exit_code_for(result.outcome, result.exit_code)
    if not args.json:
        say_styled((f"job ended: {outcome}", "red"), (f" {result.detail}", ""))
    return EXIT_JOB_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    client = connect(args.addr, args.timeout)
    progress = JobProgress(args.job_id)
    live = None
    if is_terminal(sys.stdout) and not args.json:
        from rich.live import Live
        from rich.text import Text

        live = Live(
            Text(f"waiting for job {args.job_id} …"), console=out_console(), refresh_per_second=8
        )
        live.start()
    try:
        for event in client.watch(args.job_id):
            line = progress.add(event)
            if args.json:
                sys.stdout.write(json.dumps(event.json(), sort_keys=True) + "\n")
                sys.stdout.flush()
            elif live is not None:
                from rich.console import Group
                from rich.text import Text

                live.update(Group(*(Text(line) for line in progress.lines())), refresh=True)
            elif line:
                say_line(line, to_stderr=False)
    except ApiError as err:
        die(str(err))
    finally:
        if live is not None:
            live.stop()
    if not progress.ended:
        die(f"the node ended the watch before job {args.job_id} ended")
    return progress.exit_code()


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        cancelled = connect(args.addr, args.timeout).cancel(args.job_id)
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json({"jobId": args.job_id, "cancelled": cancelled})
    elif cancelled:
        say(
            f"cancelling job {args.job_id}: the node stops it and stores its receipt "
            f"(plasm watch {args.job_id} shows its end)",
            to_stderr=False,
        )
    else:
        say(f"job {args.job_id} had already ended", to_stderr=False)
    return 0
