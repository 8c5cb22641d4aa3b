"""`plasm submit --watch`, `plasm watch` and `plasm cancel`: rendering a job's
events, attempts and untrusted text; Ctrl-C during a Submit; the commands
against a real plasmd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from conftest import Daemon, DaemonFactory, WasmModules, wait_until
from google.protobuf.timestamp_pb2 import Timestamp
from plasm.v1 import capability_pb2, errors_pb2, job_pb2, manifest_pb2, receipt_pb2, service_pb2
from test_cli_untrusted_text import evil_receipt
from test_daemon_lifecycle import plasm_command, run_cli

from plasm_grpc.api.client import PlasmClient
from plasm_grpc.api.jobs import JobRequest, ManifestDraft
from plasm_grpc.api.views import Attempt, Event
from plasm_grpc.cli import events as cli_events
from plasm_grpc.cli import submit as cli
from plasm_grpc.cli.events import JobProgress
from plasm_grpc.cli.main import parser
from plasm_grpc.cli.output import EXIT_JOB_FAILED, EXIT_RPC, EXIT_USAGE, CliError, printable

JOB = "0123456789abcdef0123456789abcdef"
A = "1a2b3c4d" * 8
B = "5e6f7a8b" * 8
C = "9c8d7e6f" * 8
K = job_pb2.JobEventKind


def ev(kind: int, at_ms: float = 0.0, **fields: Any) -> job_pb2.JobEvent:
    at = Timestamp()
    at.FromNanoseconds(1_700_000_000_000_000_000 + int(at_ms * 1_000_000))
    return job_pb2.JobEvent(job_id=JOB, kind=cast(Any, kind), at=at, **fields)


def render_events(job_id: str, events: list[job_pb2.JobEvent]) -> list[str]:
    return cli_events.render_events(job_id, [Event.from_pb(e) for e in events])


def attempts_summary(attempts: list[job_pb2.JobAttempt]) -> list[str]:
    return cli_events.attempts_summary([Attempt.from_pb(a) for a in attempts])


def remote_life() -> list[job_pb2.JobEvent]:
    """Declined by A, timed out on B after it was sent there, finished on C."""
    return [
        ev(K.JOB_EVENT_KIND_SUBMITTED, 0),
        ev(K.JOB_EVENT_KIND_SEARCHING, 0.1),
        ev(K.JOB_EVENT_KIND_OFFERED, 1, attempt=1, node_id=A),
        ev(
            K.JOB_EVENT_KIND_DECLINED,
            2,
            attempt=1,
            node_id=A,
            decline_reason=job_pb2.DECLINE_REASON_BUSY,
            detail="all 2 slots taken",
        ),
        ev(K.JOB_EVENT_KIND_OFFERED, 3, attempt=2, node_id=B),
        ev(K.JOB_EVENT_KIND_ACCEPTED, 4, attempt=2, node_id=B),
        ev(K.JOB_EVENT_KIND_TRANSFERRING, 5, attempt=2, node_id=B, module_bytes=1234),
        ev(K.JOB_EVENT_KIND_RUNNING, 6, attempt=2, node_id=B),
        ev(
            K.JOB_EVENT_KIND_ATTEMPT_FAILED,
            500,
            attempt=2,
            node_id=B,
            detail="timeout",
            may_have_run=True,
        ),
        ev(K.JOB_EVENT_KIND_OFFERED, 501, attempt=3, node_id=C),
        ev(K.JOB_EVENT_KIND_ACCEPTED, 502, attempt=3, node_id=C),
        ev(K.JOB_EVENT_KIND_RUNNING, 503, attempt=3, node_id=C),
        ev(
            K.JOB_EVENT_KIND_FINISHED,
            504.1,
            attempt=3,
            node_id=C,
            outcome=receipt_pb2.OUTCOME_SUCCESS,
        ),
    ]


# -- rendering -----------------------------------------------------------------------------


def test_a_remote_job_renders_one_line_per_attempt() -> None:
    assert render_events(JOB, remote_life()) == [
        f"job {JOB}: finished",
        "  #1 declined by 1a2b3c4d1a2b3c4d… (BUSY: all 2 slots taken)",
        "  #2 attempt failed on 5e6f7a8b5e6f7a8b…: timeout (may have run there)",
        "  #3 finished on 9c8d7e6f9c8d7e6f… in 3.1 ms: success",
    ]


@pytest.mark.parametrize(
    ("upto", "expected"),
    [
        (1, [f"job {JOB}: submitted"]),
        (2, [f"job {JOB}: searching for workers"]),
        (3, [f"job {JOB}: searching for workers", "  #1 offered to 1a2b3c4d1a2b3c4d…"]),
        (
            6,
            [
                f"job {JOB}: searching for workers",
                "  #1 declined by 1a2b3c4d1a2b3c4d… (BUSY: all 2 slots taken)",
                "  #2 accepted by 5e6f7a8b5e6f7a8b…",
            ],
        ),
        (
            7,
            [
                f"job {JOB}: searching for workers",
                "  #1 declined by 1a2b3c4d1a2b3c4d… (BUSY: all 2 slots taken)",
                "  #2 sending the module (1,234 bytes) and input to 5e6f7a8b5e6f7a8b…",
            ],
        ),
        (
            8,
            [
                f"job {JOB}: searching for workers",
                "  #1 declined by 1a2b3c4d1a2b3c4d… (BUSY: all 2 slots taken)",
                "  #2 running on 5e6f7a8b5e6f7a8b…",
            ],
        ),
    ],
)
def test_the_live_view_shows_where_each_attempt_is(upto: int, expected: list[str]) -> None:
    assert render_events(JOB, remote_life()[:upto]) == expected


def test_a_failed_job_shows_its_reason_and_a_cancel_request() -> None:
    events = [
        ev(K.JOB_EVENT_KIND_SUBMITTED),
        ev(K.JOB_EVENT_KIND_CANDIDATES, detail=f"{A} {B}"),
        ev(K.JOB_EVENT_KIND_OFFERED, attempt=1, node_id=A),
        ev(K.JOB_EVENT_KIND_CANCEL_REQUESTED),
        ev(
            K.JOB_EVENT_KIND_FAILED,
            error_reason=errors_pb2.ERROR_REASON_NO_WORKER,
            detail="every worker declined",
        ),
    ]
    assert render_events(JOB, events[:2]) == [
        f"job {JOB}: candidates: 1a2b3c4d1a2b3c4d… 5e6f7a8b5e6f7a8b…"
    ]
    assert render_events(JOB, events) == [
        f"job {JOB}: failed (NO_WORKER): every worker declined (cancel requested)",
        "  #1 offered to 1a2b3c4d1a2b3c4d…",
    ]


def test_a_detail_follows_the_phrase_where_it_adds_something() -> None:
    events = [
        ev(K.JOB_EVENT_KIND_SUBMITTED, detail="placement auto"),
        ev(K.JOB_EVENT_KIND_ACCEPTED, attempt=1, node_id=A, detail="running on this node"),
    ]
    assert render_events(JOB, events) == [
        f"job {JOB}: submitted (placement auto)",
        "  #1 accepted by 1a2b3c4d1a2b3c4d… (running on this node)",
    ]


def test_progress_lines_per_event_and_exit_codes() -> None:
    progress = JobProgress(JOB)
    lines = [progress.add(Event.from_pb(e)) for e in remote_life()]
    assert lines[0] == "2023-11-14T22:13:20Z submitted"
    assert (
        lines[-1]
        == "2023-11-14T22:13:20.504100Z #3 finished on 9c8d7e6f9c8d7e6f… in 3.1 ms: success"
    )
    assert progress.ended
    assert progress.exit_code() == 0
    assert progress.add(Event.from_pb(ev(K.JOB_EVENT_KIND_FAILED))) == "", "nothing after the end"
    nonzero = JobProgress(JOB)
    nonzero.add(
        Event.from_pb(
            ev(K.JOB_EVENT_KIND_FINISHED, outcome=receipt_pb2.OUTCOME_NONZERO_EXIT, exit_code=7)
        )
    )
    assert (
        nonzero.header()
        == f"job {JOB}: finished on (unnamed node) in 0.0 ms: nonzero_exit (exit 7)"
    )
    assert nonzero.exit_code() == 7
    failed = JobProgress(JOB)
    failed.add(
        Event.from_pb(ev(K.JOB_EVENT_KIND_FAILED, error_reason=errors_pb2.ERROR_REASON_NO_WORKER))
    )
    assert failed.exit_code() == EXIT_JOB_FAILED
    assert JobProgress(JOB).exit_code() == EXIT_JOB_FAILED


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    evil = "\x1b[2J\x1b]8;;https://x.invalid\x07click\u202e\nnext [bold]x[/]"
    assert printable(evil) == (
        "\\x1b[2J\\x1b]8;;https://x.invalid\\x07click\\u202e\\nnext [bold]x[/]"
    )
    assert printable("é ok ✓") == "é ok ✓"
    assert printable("x" * 500, 10) == "x" * 10 + "…"
    lines = render_events(
        JOB,
        [
            ev(
                K.JOB_EVENT_KIND_DECLINED,
                attempt=1,
                node_id="\x1b[31m" + "z" * 100,
                decline_reason=cast(Any, 99),  # a reason this CLI does not know
                detail=evil,
            ),
            ev(cast(Any, 77)),  # a kind this CLI does not know
        ],
    )
    assert "\x1b" not in "".join(lines)
    assert "\n" not in "".join(lines)
    assert lines[1] == "  #1 declined by \\x1b[31mzzzzzzzzzzzzzzz… (99: " + printable(evil) + ")"
    assert lines[0] == f"job {JOB}: event 77"


def test_terminal_escapes_in_a_signed_receipt_are_shown_escaped(tmp_path: Path) -> None:
    path = evil_receipt(tmp_path, detail="\x1b[2Jgone\u202e", trap_code="\x1b]0;owned\x07")
    proc = run_cli("verify", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr
    assert "\u202e" not in proc.stderr
    assert "\\x1b[2Jgone\\u202e" in proc.stderr
    assert "\\x1b]0;owned\\x07" in proc.stderr


def test_attempts_are_summarised_only_when_there_is_something_to_tell() -> None:
    one = [
        job_pb2.JobAttempt(node_id=A, result=job_pb2.ATTEMPT_RESULT_COMPLETED, may_have_run=True)
    ]
    assert attempts_summary(one) == []
    three = [
        job_pb2.JobAttempt(
            node_id=A,
            result=job_pb2.ATTEMPT_RESULT_DECLINED,
            decline_reason=job_pb2.DECLINE_REASON_BUSY,
            detail="all 2 slots taken",
            duration_us=400,
        ),
        job_pb2.JobAttempt(
            node_id=B,
            result=job_pb2.ATTEMPT_RESULT_TIMEOUT,
            detail="no answer in 2 s",
            may_have_run=True,
            duration_us=2_000_000,
        ),
        job_pb2.JobAttempt(
            node_id=C, result=job_pb2.ATTEMPT_RESULT_COMPLETED, may_have_run=True, duration_us=3100
        ),
    ]
    lines = attempts_summary(three)
    assert lines[:4] == [
        "3 attempts:",
        "  #1 1a2b3c4d1a2b3c4d…: declined (BUSY) in 0.4 ms: all 2 slots taken",
        "  #2 5e6f7a8b5e6f7a8b…: timeout in 2.00 s: no answer in 2 s (may have run there)",
        "  #3 9c8d7e6f9c8d7e6f…: completed in 3.1 ms",
    ]
    assert "may also have run on 5e6f7a8b5e6f7a8b…" in lines[4]
    assert "9c8d" not in lines[4]


# -- placement flags -----------------------------------------------------------------------------


def placement_of(*argv: str) -> capability_pb2.PlacementRequirements:
    args = parser().parse_args(["submit", "m.wasm", *argv])
    manifest = ManifestDraft()
    cli.apply_placement(manifest, args)
    return manifest.message.placement


def test_placement_flags() -> None:
    pb = capability_pb2
    assert placement_of().mode == pb.PLACEMENT_MODE_AUTO
    assert placement_of("--placement", "local").mode == pb.PLACEMENT_MODE_LOCAL
    assert placement_of("--local").mode == pb.PLACEMENT_MODE_LOCAL
    peer = placement_of("--peer", A)
    assert (peer.mode, peer.peer_node_id) == (pb.PLACEMENT_MODE_PEER, A)
    assert placement_of("--placement", "peer", "--peer", A).peer_node_id == A
    for argv in (
        ("--placement", "peer"),  # which peer?
        ("--placement", "auto", "--peer", A),
        ("--local", "--peer", A),
        ("--peer", "not-a-node-id"),
    ):
        with pytest.raises(CliError) as info:
            placement_of(*argv)
        assert info.value.code == EXIT_USAGE, argv


def test_the_manifest_placement_stands_unless_a_flag_overrides_it() -> None:
    args = parser().parse_args(["submit", "m.wasm"])
    placement = capability_pb2.PlacementRequirements(mode=capability_pb2.PLACEMENT_MODE_LOCAL)
    manifest = ManifestDraft(manifest_pb2.JobManifest(placement=placement))
    cli.apply_placement(manifest, args)
    assert manifest.placement_mode == "local"


# -- Ctrl-C during a Submit, against a fake node ---------------------------------------------------


@pytest.fixture(autouse=True)
def short_watch_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WATCH_GRACE_S", 0.2)


class FakeSubmit(Future[service_pb2.SubmitResponse]):
    """A Submit call; `armed` once the CLI waits for it (its done-callback is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = threading.Event()

    def add_done_callback(self, fn: Any) -> None:
        super().add_done_callback(fn)
        self.armed.set()


class FakeWatch:
    """A Watch call: yields `events`, then (optionally) interrupts the main thread."""

    def __init__(self, submit: FakeSubmit, interrupt: bool) -> None:
        self.events = [ev(K.JOB_EVENT_KIND_SUBMITTED)]
        self.submit = submit
        self.interrupt = interrupt
        self.cancelled = threading.Event()
        # Answer the Submit once every event is delivered, as a node does.
        self.then_answer: service_pb2.SubmitResponse | None = None

    def __iter__(self) -> Iterator[service_pb2.WatchResponse]:
        for event in self.events:
            yield service_pb2.WatchResponse(event=event)
        if self.then_answer is not None:
            self.submit.set_result(self.then_answer)
        if self.interrupt and self.submit.armed.wait(30):  # a Ctrl-C while the job runs
            signal.pthread_kill(cast(int, threading.main_thread().ident), signal.SIGINT)
        self.cancelled.wait(30)

    def cancel(self) -> None:
        self.cancelled.set()


class FakeNode:
    def __init__(self, *, cancel: str, interrupt: bool = True) -> None:
        self.cancel_mode = cancel
        self.submit = FakeSubmit()
        self.watch = FakeWatch(self.submit, interrupt)
        self.cancels: list[str] = []
        self.Submit = SimpleNamespace(future=lambda request, timeout: self.submit)

    def Watch(self, request: service_pb2.WatchRequest, timeout: float) -> FakeWatch:
        return self.watch

    def Cancel(
        self, request: service_pb2.CancelRequest, timeout: float
    ) -> service_pb2.CancelResponse:
        self.cancels.append(request.job_id)
        if self.cancel_mode == "second-ctrl-c":
            raise KeyboardInterrupt
        if self.cancel_mode == "answers":
            result = job_pb2.JobResult(job_id=request.job_id, outcome=receipt_pb2.OUTCOME_CANCELLED)
            self.submit.set_result(service_pb2.SubmitResponse(result=result))
        return service_pb2.CancelResponse(cancelled=True)


def submit_to(node: FakeNode) -> cli.SubmitOutcome:
    client = PlasmClient("fake:1", 30.0, None, node)
    request = JobRequest.from_pb(service_pb2.SubmitRequest(job_id=JOB))
    return cli.run_submit(client, request, watch=True, spinner=None)


def test_ctrl_c_cancels_the_job_and_waits_for_its_cancelled_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = FakeNode(cancel="answers")
    ran = submit_to(node)
    assert node.cancels == [JOB]
    assert ran.response.outcome == "CANCELLED"
    assert node.watch.cancelled.is_set(), "the watch is closed"
    err = capsys.readouterr().err
    assert f"cancelling job {JOB}; the node stops it and stores" in err.replace("\n", " ")


def test_a_second_ctrl_c_quits_at_once() -> None:
    node = FakeNode(cancel="second-ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        submit_to(node)
    assert node.cancels == [JOB]
    assert node.submit.cancelled(), "the Submit call is cancelled"
    assert node.watch.cancelled.is_set()


def test_after_ctrl_c_the_wait_for_the_result_is_bounded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "CANCEL_WAIT_S", 0.2)
    node = FakeNode(cancel="never answers")
    with pytest.raises(KeyboardInterrupt):
        submit_to(node)
    assert "did not answer within" in capsys.readouterr().err
    assert node.submit.cancelled()


def test_without_ctrl_c_the_result_comes_back_and_the_watch_is_closed() -> None:
    node = FakeNode(cancel="unused", interrupt=False)
    node.watch.events = [
        ev(K.JOB_EVENT_KIND_SUBMITTED),
        ev(K.JOB_EVENT_KIND_FINISHED, attempt=1, node_id=A, outcome=receipt_pb2.OUTCOME_SUCCESS),
    ]
    node.watch.then_answer = service_pb2.SubmitResponse(executor_node_id=A)
    ran = submit_to(node)
    assert ran.response.executor_node_id == A
    assert ran.shown_live
    assert node.cancels == []


def test_a_node_that_publishes_no_events_does_not_hold_up_the_result() -> None:
    node = FakeNode(cancel="unused", interrupt=False)
    node.watch.events = []
    node.submit.set_result(service_pb2.SubmitResponse())
    ran = submit_to(node)
    assert not ran.shown_live
    assert node.watch.cancelled.is_set()


def test_a_failed_submit_is_reported_as_the_node_error() -> None:
    node = FakeNode(cancel="unused", interrupt=False)
    node.watch.events = []
    node.submit.set_exception(grpc.RpcError("boom"))
    with pytest.raises(CliError) as info:
        submit_to(node)
    assert info.value.code == EXIT_RPC


# -- against a real plasmd ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(plasmd_module: DaemonFactory) -> Daemon:
    return plasmd_module()


def test_watch_of_an_unknown_job_fails_clearly(node: Daemon) -> None:
    # --timeout 2: the node waits for the job id until just before the deadline.
    proc = run_cli("--addr", node.addr, "--timeout", "2", "watch", JOB, "--json")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "NOT_FOUND [ERROR_REASON_JOB_NOT_FOUND]" in proc.stderr
    assert JOB in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cancel_of_an_unknown_job_fails_clearly(node: Daemon) -> None:
    proc = run_cli("--addr", node.addr, "cancel", JOB)
    assert proc.returncode == 1, proc.stderr
    assert "ERROR_REASON_JOB_NOT_FOUND" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["watch", "cancel"])
def test_a_malformed_job_id_is_a_usage_error(node: Daemon, command: str) -> None:
    proc = run_cli("--addr", node.addr, command, "not-a-job-id")
    assert proc.returncode == 2
    assert "32 lowercase hex" in proc.stderr


def test_submit_json_names_the_executor_and_its_attempts(node: Daemon, wasm: WasmModules) -> None:
    proc = run_cli(
        "--addr",
        node.addr,
        "submit",
        str(wasm.path("hello")),
        "--stdin",
        "abc",
        "--json",
        "--placement",
        "local",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stdout"] == "cba"
    assert out["executorNodeId"] == node.node_id
    assert [a["result"] for a in out["attempts"]] == ["ATTEMPT_RESULT_COMPLETED"]
    assert out["attempts"][0]["nodeId"] == node.node_id
    assert "expected_executor" in {c["name"] for c in out["verification"]["checks"]}


def test_a_finished_job_can_be_watched_and_is_not_cancelled(
    node: Daemon, wasm: WasmModules
) -> None:
    job_id = "ab" * 16
    submitted = run_cli(
        "--addr", node.addr, "submit", str(wasm.path("hello")), "--job-id", job_id, "--quiet"
    )
    assert submitted.returncode == 0, submitted.stderr

    watched = run_cli("--addr", node.addr, "watch", job_id, "--json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert {e["jobId"] for e in events} == {job_id}
    assert events[0]["kind"] == "JOB_EVENT_KIND_SUBMITTED"
    assert events[-1]["kind"] == "JOB_EVENT_KIND_FINISHED"
    assert events[-1]["nodeId"] == node.node_id
    assert events[-1]["outcome"] == "OUTCOME_SUCCESS"

    shown = run_cli("--addr", node.addr, "watch", job_id)
    assert shown.returncode == 0, shown.stderr
    assert f"finished on {node.node_id[:16]}…" in shown.stdout
    assert "success" in shown.stdout.splitlines()[-1]

    cancelled = run_cli("--addr", node.addr, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "had already ended" in cancelled.stdout


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLASM_ADDR"}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    return subprocess.Popen(
        [*plasm_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_plasm_cancel_stops_a_running_job_that_plasm_watch_follows(
    node: Daemon, wasm: WasmModules
) -> None:
    job_id = "cd" * 16
    loop = str(wasm.path("infinite_loop"))
    submit = spawn_cli("--addr", node.addr, "submit", loop, "--job-id", job_id, "--quiet")
    watch = spawn_cli("--addr", node.addr, "watch", job_id, "--json")
    try:
        wait_until(lambda: node.node_info().jobs_running == 1, 20, what="the job to run")
        cancel = run_cli("--addr", node.addr, "cancel", job_id)
        assert cancel.returncode == 0, cancel.stderr
        assert f"cancelling job {job_id}" in cancel.stdout
        watch_out, watch_err = finish(watch)
        _, submit_err = finish(submit)
    finally:
        for proc in (submit, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert watch.returncode == EXIT_JOB_FAILED, watch_err  # as submit exits for "cancelled"
    kinds = [json.loads(line)["kind"] for line in watch_out.splitlines()]
    assert "JOB_EVENT_KIND_CANCEL_REQUESTED" in kinds
    assert kinds[-1] == "JOB_EVENT_KIND_FINISHED"
    assert json.loads(watch_out.splitlines()[-1])["outcome"] == "OUTCOME_CANCELLED"
    assert submit.returncode == EXIT_JOB_FAILED, submit_err
    assert "cancelled" in submit_err


@pytest.mark.parametrize("watch", ["--watch", "--no-watch"])
def test_ctrl_c_during_submit_cancels_the_job(node: Daemon, wasm: WasmModules, watch: str) -> None:
    loop = str(wasm.path("infinite_loop"))
    proc = spawn_cli("--addr", node.addr, "submit", loop, "--placement", "local", watch)
    try:
        wait_until(lambda: node.node_info().jobs_running == 1, 20, what="the job to run")
        proc.send_signal(signal.SIGINT)
    finally:
        _, err = finish(proc)
    assert "Traceback" not in err
    assert "the node stops it and stores its receipt" in " ".join(err.split())
    assert "job ended: cancelled" in err
    if watch == "--watch":
        assert "cancel requested" in err
        finished = [line for line in err.splitlines() if "#1 finished on" in line]
        assert finished, err
        assert finished[0].endswith(": cancelled")
    assert proc.returncode == EXIT_JOB_FAILED, err
