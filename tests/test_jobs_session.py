"""The requester's job session (core.jobs.session), its events, candidate ranking
and the placement check of this node.

Pure: no sockets, no asyncio. Time is virtual: every input gets `now` by hand,
in binary fractions of a second so the wall-clock mapping is exact.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.errors import InvalidIdError
from plasm_grpc.core.jobs.events import DeclineReason, EventKind, JobEvent
from plasm_grpc.core.jobs.placement import (
    Candidate,
    Placement,
    PlacementMode,
    rank,
    unmet_requirement,
)
from plasm_grpc.core.jobs.session import (
    _ACCEPTS,
    AbortPending,
    Action,
    Attempt,
    AttemptResult,
    CancelLocal,
    CancelRemote,
    Fail,
    Finish,
    JobSession,
    RunLocal,
    Search,
    SendOffer,
    SendRun,
    SessionError,
    SessionSettings,
    State,
    Wait,
)
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.outcome import Outcome

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JOB = "0123456789abcdef0123456789abcdef"
T0 = 1000.0  # monotonic seconds when the session was created
WALL0 = 1_700_000_000_000_000_000  # wall clock (ns) at the same moment


def nid(i: int) -> str:
    return hashlib.sha256(bytes([i])).hexdigest()


OWN = nid(0)


def cand(i: int, *, free: int = 1, total: int = 4) -> Candidate:
    return Candidate(
        node_id=nid(i), host=f"10.0.0.{i}", port=4000 + i, free_slots=free, total_slots=total
    )


def make(
    mode: PlacementMode = PlacementMode.AUTO,
    *,
    peer: str = "",
    timeout_s: float = 60.0,
    **settings_kw: Any,
) -> JobSession:
    return JobSession(
        job_id=JOB,
        own_node_id=OWN,
        placement=Placement(mode=mode, peer_node_id=peer),
        settings=SessionSettings(**settings_kw),
        deadline=T0 + timeout_s,
        created=T0,
        created_wall_ns=WALL0,
    )


def kinds(events: list[JobEvent]) -> list[EventKind]:
    return [e.kind for e in events]


def offering(*candidates: Candidate, **kw: Any) -> JobSession:
    """A session whose first candidate has the offer (events popped)."""
    s = make(**kw)
    s.start(T0)
    s.candidates_found(list(candidates), T0)
    s.pop_events()
    return s


def running(*candidates: Candidate, has_module: bool = False, **kw: Any) -> JobSession:
    s = offering(*candidates, **kw)
    s.accepted(has_module, 100, T0 + 0.5)
    s.pop_events()
    return s


def decline_envelope() -> envelopes.SignedEnvelope:
    return envelopes.sign(NodeKey.from_seed(b"\x07" * 32), envelopes.DECLINE_DOMAIN, b"decline")


# -- start ---------------------------------------------------------------------------------


def test_local_placement_runs_here_at_once() -> None:
    s = make(PlacementMode.LOCAL, timeout_s=30.0)
    action = s.start(T0)
    assert action == RunLocal(attempt=1, timeout_s=30.0)
    assert s.state is State.LOCAL
    events = s.pop_events()
    assert kinds(events) == [EventKind.SUBMITTED, EventKind.ACCEPTED]
    assert events[0].detail == "placement local"
    assert events[0].attempt == 0
    assert events[1].attempt == 1
    assert events[1].node_id == OWN
    assert events[1].detail == "running on this node"
    [attempt] = s.attempts
    assert attempt.local
    assert attempt.node_id == OWN
    assert attempt.may_have_run
    assert attempt.result is None


def test_peer_placement_naming_this_node_runs_here_without_a_search() -> None:
    s = make(PlacementMode.PEER, peer=OWN)
    action = s.start(T0)
    assert action == RunLocal(attempt=1, timeout_s=60.0)
    assert kinds(s.pop_events()) == [EventKind.SUBMITTED, EventKind.ACCEPTED]
    assert s.attempts[0].local


def test_peer_placement_naming_another_node_searches_for_it() -> None:
    s = make(PlacementMode.PEER, peer=nid(5))
    assert s.start(T0) == Search(timeout_s=5.0)
    assert s.state is State.SEARCHING
    events = s.pop_events()
    assert kinds(events) == [EventKind.SUBMITTED, EventKind.SEARCHING]
    assert events[0].detail == "placement peer"
    assert events[1].detail == f"looking up peer {nid(5)}"
    assert s.attempts == []


def test_auto_placement_searches_within_the_search_timeout_and_the_deadline() -> None:
    s = make(search_timeout_s=4.0)
    assert s.start(T0) == Search(timeout_s=4.0)
    assert s.pop_events()[1].detail == "looking for capable workers"
    assert make(timeout_s=1.5, search_timeout_s=4.0).start(T0) == Search(timeout_s=1.5)
    assert make(timeout_s=1.0).start(T0 + 3.0) == Search(timeout_s=0.0)


# -- search and offers ----------------------------------------------------------------------


def test_candidates_skip_this_node_and_the_first_gets_the_offer() -> None:
    s = make()
    s.start(T0)
    s.pop_events()
    action = s.candidates_found([cand(0), cand(1), cand(2)], T0 + 0.25)
    assert action == SendOffer(attempt=1, candidate=cand(1), timeout_s=2.0)
    assert s.state is State.OFFERING
    assert s.current == cand(1)
    events = s.pop_events()
    assert kinds(events) == [EventKind.CANDIDATES, EventKind.OFFERED]
    assert events[0].detail == f"2 worker(s): {nid(1)[:12]}…, {nid(2)[:12]}…"
    assert events[1].attempt == 1
    assert events[1].node_id == nid(1)
    assert events[1].detail == "10.0.0.1:4001"
    assert s.attempts == [Attempt(number=1, node_id=nid(1), started=T0 + 0.25)]


def test_candidates_event_names_eight_and_counts_the_rest() -> None:
    s = make()
    s.start(T0)
    s.pop_events()
    s.candidates_found([cand(i) for i in range(1, 12)], T0)
    detail = s.pop_events()[0].detail
    assert detail.startswith("11 worker(s): ")
    assert detail.endswith(" and 3 more")
    assert detail.count("…") == 8
    assert nid(8)[:12] in detail
    assert nid(9)[:12] not in detail


def test_nodes_already_tried_are_not_offered_again() -> None:
    # Only reachable by a session that searches after an attempt; set that up directly.
    s = make()
    s.state = State.SEARCHING
    s.attempts.append(Attempt(number=1, node_id=nid(1), started=T0, result=AttemptResult.DECLINED))
    action = s.candidates_found([cand(1), cand(0), cand(2)], T0)
    assert action == SendOffer(attempt=2, candidate=cand(2), timeout_s=2.0)
    assert s.pop_events()[0].detail.startswith("1 worker(s): ")


def test_offer_timeout_is_the_setting_or_the_time_left_whichever_is_less() -> None:
    s = make(timeout_s=10.0, offer_timeout_s=4.0)
    s.start(T0)
    assert s.candidates_found([cand(1), cand(2)], T0 + 7.0) == SendOffer(
        attempt=1, candidate=cand(1), timeout_s=3.0
    )
    assert s.declined(DeclineReason.BUSY, "full", T0 + 9.5) == SendOffer(
        attempt=2, candidate=cand(2), timeout_s=0.5
    )


def test_a_decline_moves_to_the_next_candidate_and_carries_the_signed_decline() -> None:
    s = offering(cand(1), cand(2))
    envelope = decline_envelope()
    action = s.declined(DeclineReason.LIMITS_TOO_HIGH, "fuel too high", T0 + 1.0, envelope)
    assert action == SendOffer(attempt=2, candidate=cand(2), timeout_s=2.0)
    events = s.pop_events()
    assert kinds(events) == [EventKind.DECLINED, EventKind.OFFERED]
    declined = events[0]
    assert declined.attempt == 1
    assert declined.node_id == nid(1)
    assert declined.decline_reason is DeclineReason.LIMITS_TOO_HIGH
    assert declined.detail == "fuel too high"
    assert declined.decline is envelope
    assert not declined.may_have_run
    assert events[1].attempt == 2
    assert events[1].node_id == nid(2)
    first = s.attempts[0]
    assert first.result is AttemptResult.DECLINED
    assert first.decline_reason is DeclineReason.LIMITS_TOO_HIGH
    assert first.detail == "fuel too high"
    assert first.finished == T0 + 1.0
    assert first.duration_s == 1.0
    assert not first.may_have_run


@pytest.mark.parametrize("has_module", [False, True])
def test_an_acceptance_sends_the_run_with_the_module_only_if_the_worker_lacks_it(
    has_module: bool,
) -> None:
    s = offering(cand(1), timeout_s=20.0)
    action = s.accepted(has_module, 4096, T0 + 4.0)
    assert action == SendRun(
        attempt=1, candidate=cand(1), send_module=not has_module, timeout_s=16.0
    )
    assert s.state is State.RUNNING
    assert s.current == cand(1)
    events = s.pop_events()
    assert kinds(events) == [EventKind.ACCEPTED, EventKind.TRANSFERRING]
    assert all(e.attempt == 1 and e.node_id == nid(1) for e in events)
    sent = 0 if has_module else 4096
    assert events[1].module_bytes == sent
    assert s.attempts[0].module_bytes_sent == sent
    assert s.attempts[0].may_have_run
    if has_module:
        assert events[1].detail == "the worker holds the module; sending the input"
    else:
        assert events[1].detail == "sending the module (4096 bytes) and the input"


def test_a_failure_after_acceptance_may_have_run_and_fails_over() -> None:
    s = running(cand(1), cand(2))
    action = s.attempt_failed(AttemptResult.DISCONNECTED, "connection lost", T0 + 2.0)
    assert action == SendOffer(attempt=2, candidate=cand(2), timeout_s=2.0)
    events = s.pop_events()
    assert kinds(events) == [EventKind.ATTEMPT_FAILED, EventKind.OFFERED]
    failed = events[0]
    assert failed.attempt == 1
    assert failed.node_id == nid(1)
    assert failed.may_have_run
    assert failed.detail == "disconnected: connection lost"
    first = s.attempts[0]
    assert first.result is AttemptResult.DISCONNECTED
    assert first.detail == "connection lost"
    assert first.may_have_run
    assert first.finished == T0 + 2.0


def test_a_failure_before_acceptance_did_not_run() -> None:
    s = offering(cand(1), cand(2))
    action = s.attempt_failed(AttemptResult.BAD_RECEIPT, "odd", T0 + 1.0)
    assert isinstance(action, SendOffer)
    failed = s.pop_events()[0]
    assert failed.kind is EventKind.ATTEMPT_FAILED
    assert failed.detail == "bad receipt: odd"
    assert not failed.may_have_run
    assert not s.attempts[0].may_have_run


def test_a_remote_result_finishes_the_job() -> None:
    s = running(cand(1))
    action = s.completed(Outcome.NONZERO_EXIT, 3, T0 + 0.75)
    assert action == Finish(attempt=1)
    assert s.state is State.DONE
    [finished] = s.pop_events()
    assert finished.kind is EventKind.FINISHED
    assert finished.kind.terminal
    assert finished.attempt == 1
    assert finished.node_id == nid(1)
    assert finished.outcome is Outcome.NONZERO_EXIT
    assert finished.exit_code == 3
    assert finished.detail == "nonzero_exit in 750.0 ms"
    attempt = s.attempts[0]
    assert attempt.result is AttemptResult.COMPLETED
    assert attempt.detail == "nonzero_exit"
    assert not attempt.may_have_run
    assert attempt.finished == T0 + 0.75


def test_a_local_result_finishes_the_job() -> None:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    s.pop_events()
    assert s.completed(Outcome.SUCCESS, 0, T0 + 0.5) == Finish(attempt=1)
    [finished] = s.pop_events()
    assert finished.kind is EventKind.FINISHED
    assert finished.node_id == OWN
    assert not s.attempts[0].may_have_run
    assert s.attempts[0].result is AttemptResult.COMPLETED


# -- running out of workers -----------------------------------------------------------------


def test_auto_falls_back_to_this_node_when_every_worker_declines() -> None:
    s = offering(cand(1), cand(2))
    s.declined(DeclineReason.BUSY, "full", T0 + 1.0)
    action = s.attempt_failed(AttemptResult.UNREACHABLE, "no route", T0 + 2.0)
    assert action == RunLocal(attempt=3, timeout_s=58.0)
    assert s.state is State.LOCAL
    events = s.pop_events()
    assert kinds(events) == [
        EventKind.DECLINED,
        EventKind.OFFERED,
        EventKind.ATTEMPT_FAILED,
        EventKind.ACCEPTED,
    ]
    assert events[-1].attempt == 3
    assert events[-1].node_id == OWN
    assert events[-1].detail == "running on this node (no worker took it)"
    assert [a.local for a in s.attempts] == [False, False, True]


def test_without_fallback_the_failure_names_every_worker_and_why() -> None:
    s = offering(cand(1), cand(2), cand(3), fallback_local=False)
    s.declined(DeclineReason.BUSY, "all slots taken", T0)
    s.accepted(False, 10, T0)
    s.attempt_failed(AttemptResult.TIMEOUT, "no result", T0 + 1.0)
    action = s.attempt_failed(AttemptResult.UNREACHABLE, "refused", T0 + 2.0)
    assert isinstance(action, Fail)
    assert action.error_reason == "NO_WORKER"
    assert action.release is None
    assert action.message == (
        "no worker ran the job: "
        f"{nid(1)[:16]}… declined (BUSY): all slots taken; "
        f"{nid(2)[:16]}… timeout: no result (it may have run the job); "
        f"{nid(3)[:16]}… unreachable: refused"
    )
    assert action.message == f"no worker ran the job: {s.failure_summary()}"
    assert s.state is State.FAILED
    failed = s.pop_events()[-1]
    assert failed.kind is EventKind.FAILED
    assert failed.error_reason == "NO_WORKER"
    assert failed.detail == action.message


def test_peer_placement_never_falls_back_and_names_the_peer() -> None:
    s = make(PlacementMode.PEER, peer=nid(4))
    s.start(T0)
    s.candidates_found([cand(4)], T0)
    action = s.declined(DeclineReason.SHUTTING_DOWN, "draining", T0 + 1.0)
    assert action == Fail(
        error_reason="NO_WORKER",
        message=f"peer {nid(4)} did not run the job: {nid(4)[:16]}… declined (SHUTTING_DOWN): "
        "draining",
    )
    assert all(not a.local for a in s.attempts)


@pytest.mark.parametrize("mode", [PlacementMode.AUTO, PlacementMode.PEER])
def test_no_candidates_fails_with_the_search_detail(mode: PlacementMode) -> None:
    s = make(mode, peer=nid(4) if mode is PlacementMode.PEER else "", fallback_local=False)
    s.start(T0)
    s.pop_events()
    action = s.candidates_found([cand(0)], T0, detail="nobody provides wasi/64MiB")
    assert isinstance(action, Fail)
    assert action.error_reason == "NO_WORKER"
    assert action.message.endswith(": nobody provides wasi/64MiB")
    events = s.pop_events()
    assert kinds(events) == [EventKind.CANDIDATES, EventKind.FAILED]
    assert events[0].detail == "nobody provides wasi/64MiB"


def test_a_failed_search_fails_with_its_detail_or_a_default() -> None:
    s = make(fallback_local=False)
    s.start(T0)
    assert s.search_failed("the DHT lookup timed out", T0 + 5.0) == Fail(
        error_reason="NO_WORKER", message="no worker ran the job: the DHT lookup timed out"
    )
    s = make(fallback_local=False)
    s.start(T0)
    assert s.candidates_found([], T0) == Fail(
        error_reason="NO_WORKER", message="no worker ran the job: no capable worker found"
    )


def test_a_failed_search_falls_back_to_this_node_in_auto() -> None:
    s = make()
    s.start(T0)
    assert s.search_failed("no overlay", T0 + 0.5) == RunLocal(attempt=1, timeout_s=59.5)


@pytest.mark.parametrize("fallback", [True, False])
def test_at_most_max_attempts_workers_get_an_offer(fallback: bool) -> None:
    s = offering(*(cand(i) for i in range(1, 6)), max_attempts=3, fallback_local=fallback)
    offered = [nid(1)]
    action: Action = SendOffer(attempt=1, candidate=cand(1), timeout_s=2.0)
    while isinstance(action, SendOffer):
        action = s.declined(DeclineReason.BUSY, "full", T0 + 1.0)
        if isinstance(action, SendOffer):
            offered.append(action.candidate.node_id)
    assert offered == [nid(1), nid(2), nid(3)]
    if fallback:
        assert action == RunLocal(attempt=4, timeout_s=59.0)
    else:
        assert isinstance(action, Fail)
        assert action.error_reason == "NO_WORKER"
        assert nid(4)[:16] not in action.message


def test_max_attempts_one_offers_to_one_worker() -> None:
    s = offering(cand(1), cand(2), max_attempts=1, fallback_local=False)
    action = s.attempt_failed(AttemptResult.TIMEOUT, "slow", T0 + 2.0)
    assert isinstance(action, Fail)
    assert [a.node_id for a in s.attempts] == [nid(1)]


def test_a_passed_deadline_fails_even_with_candidates_and_fallback_left() -> None:
    s = offering(cand(1), cand(2), timeout_s=3.0)
    action = s.declined(DeclineReason.BUSY, "full", T0 + 3.0)
    assert action == Fail(
        error_reason="DEADLINE_EXCEEDED",
        message=f"the deadline passed before a result came back: {nid(1)[:16]}… declined "
        "(BUSY): full",
    )
    assert len(s.attempts) == 1
    # A job that was sent when the deadline passed: the client is told where it may have run.
    s = offering(cand(1), cand(2), timeout_s=3.0)
    s.accepted(True, 0, T0 + 1.0)
    action = s.attempt_failed(AttemptResult.TIMEOUT, "no result in time", T0 + 3.0)
    assert isinstance(action, Fail)
    assert action.error_reason == "DEADLINE_EXCEEDED"
    assert nid(1)[:16] in action.message
    assert "it may have run the job" in action.message
    s = make(timeout_s=1.0)
    s.start(T0)
    assert isinstance(s.candidates_found([cand(1)], T0 + 1.5), Fail)
    assert s.attempts == []


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_before_start_fails_at_once() -> None:
    s = make()
    assert s.cancel(T0) == Fail(
        error_reason="CANCELLED", message="cancelled before any node ran the job"
    )
    assert kinds(s.pop_events()) == [EventKind.CANCEL_REQUESTED, EventKind.FAILED]
    assert s.state is State.FAILED


def test_cancel_while_searching_aborts_the_search() -> None:
    s = make()
    s.start(T0)
    s.pop_events()
    assert s.cancel(T0 + 1.0) == AbortPending()
    assert s.cancel(T0 + 1.25) == Wait()
    assert s.aborted(T0 + 1.5) == Fail(
        error_reason="CANCELLED", message="cancelled before any node ran the job"
    )
    events = s.pop_events()
    assert kinds(events) == [EventKind.CANCEL_REQUESTED, EventKind.FAILED]
    assert events[1].error_reason == "CANCELLED"
    assert s.attempts == []


def test_a_search_that_answers_after_cancel_offers_to_nobody() -> None:
    s = make()
    s.start(T0)
    s.cancel(T0)
    action = s.candidates_found([cand(1)], T0 + 1.0)
    assert action == Fail(error_reason="CANCELLED", message="cancelled before any node ran the job")
    assert s.attempts == []


def test_cancel_while_offering_aborts_and_releases_the_candidate() -> None:
    s = offering(cand(1), cand(2))
    assert s.cancel(T0 + 1.0) == AbortPending()
    action = s.aborted(T0 + 1.5)
    assert action == Fail(
        error_reason="CANCELLED", message="cancelled before any node ran the job", release=cand(1)
    )
    attempt = s.attempts[0]
    assert attempt.result is AttemptResult.CANCELLED
    assert not attempt.may_have_run
    assert len(s.attempts) == 1
    assert kinds(s.pop_events()) == [EventKind.CANCEL_REQUESTED, EventKind.FAILED]


def test_an_acceptance_after_cancel_releases_the_lease() -> None:
    s = offering(cand(1), cand(2))
    s.cancel(T0)
    action = s.accepted(True, 100, T0 + 1.0)
    assert action == Fail(
        error_reason="CANCELLED", message="cancelled before any node ran the job", release=cand(1)
    )
    assert s.attempts[0].result is AttemptResult.CANCELLED
    assert not s.attempts[0].may_have_run
    assert kinds(s.pop_events()) == [EventKind.CANCEL_REQUESTED, EventKind.FAILED]


def test_a_decline_after_cancel_offers_to_nobody_else() -> None:
    s = offering(cand(1), cand(2))
    s.cancel(T0)
    action = s.declined(DeclineReason.BUSY, "full", T0 + 1.0)
    assert action == Fail(error_reason="CANCELLED", message="cancelled before any node ran the job")
    assert len(s.attempts) == 1


@pytest.mark.parametrize("accepted", [False, True])
def test_an_attempt_failure_after_cancel_fails_cancelled(accepted: bool) -> None:
    s = running(cand(1), cand(2)) if accepted else offering(cand(1), cand(2))
    s.cancel(T0)
    action = s.attempt_failed(AttemptResult.TIMEOUT, "gone", T0 + 1.0)
    assert action == Fail(error_reason="CANCELLED", message="cancelled; no result")
    assert len(s.attempts) == 1
    events = s.pop_events()
    assert kinds(events) == [
        EventKind.CANCEL_REQUESTED,
        EventKind.ATTEMPT_FAILED,
        EventKind.FAILED,
    ]
    assert events[1].may_have_run is accepted


def test_cancel_while_running_remotely_asks_the_worker() -> None:
    s = running(cand(1), cand(2))
    assert s.cancel(T0 + 1.0) == CancelRemote(candidate=cand(1))
    assert s.state is State.RUNNING
    assert s.cancel(T0 + 1.5) == Wait()
    [requested] = s.pop_events()
    assert requested.kind is EventKind.CANCEL_REQUESTED
    # The worker answers with its (CANCELLED) result: that is the job's result.
    assert s.completed(Outcome.CANCELLED, 0, T0 + 2.0) == Finish(attempt=1)


def test_cancel_while_running_here_cancels_locally() -> None:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    s.pop_events()
    assert s.cancel(T0 + 1.0) == CancelLocal()
    assert s.cancel(T0 + 1.0) == Wait()
    assert kinds(s.pop_events()) == [EventKind.CANCEL_REQUESTED]
    assert s.state is State.LOCAL


# -- local refusal and progress -------------------------------------------------------------


def test_a_local_refusal_is_the_answer() -> None:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    s.pop_events()
    action = s.local_refused("BUSY", "all 4 slots and the queue are full", T0 + 0.25)
    assert action == Fail(error_reason="BUSY", message="all 4 slots and the queue are full")
    [failed] = s.pop_events()
    assert failed.kind is EventKind.FAILED
    assert failed.error_reason == "BUSY"
    assert failed.detail == "all 4 slots and the queue are full"
    assert s.attempts[0].result is AttemptResult.ERROR
    assert s.attempts[0].finished == T0 + 0.25


def test_a_local_refusal_did_not_run_the_job() -> None:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    s.local_refused("BUSY", "full", T0)
    assert not s.attempts[0].may_have_run


def test_worker_progress_is_reported_once_per_kind_per_attempt() -> None:
    s = running(cand(1), cand(2))
    s.worker_progress(EventKind.QUEUED, T0 + 1.0)
    s.worker_progress(EventKind.QUEUED, T0 + 1.5)
    s.worker_progress(EventKind.RUNNING, T0 + 2.0)
    s.worker_progress(EventKind.RUNNING, T0 + 2.5)
    s.worker_progress(EventKind.FINISHED, T0 + 2.5)  # not progress: ignored
    events = s.pop_events()
    assert kinds(events) == [EventKind.QUEUED, EventKind.RUNNING]
    assert [(e.attempt, e.node_id) for e in events] == [(1, nid(1))] * 2
    s.attempt_failed(AttemptResult.DISCONNECTED, "gone", T0 + 3.0)
    s.accepted(True, 0, T0 + 3.0)
    s.pop_events()
    s.worker_progress(EventKind.RUNNING, T0 + 4.0)
    s.worker_progress(EventKind.QUEUED, T0 + 4.0)
    s.worker_progress(EventKind.RUNNING, T0 + 4.0)
    events = s.pop_events()
    assert kinds(events) == [EventKind.RUNNING, EventKind.QUEUED]
    assert {(e.attempt, e.node_id) for e in events} == {(2, nid(2))}


def test_local_progress_is_reported_for_the_local_attempt() -> None:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    s.pop_events()
    s.worker_progress(EventKind.RUNNING, T0)
    s.worker_progress(EventKind.RUNNING, T0)
    [event] = s.pop_events()
    assert (event.kind, event.attempt, event.node_id) == (EventKind.RUNNING, 1, OWN)


# -- the transitions table ------------------------------------------------------------------


def _new() -> JobSession:
    return make()


def _searching() -> JobSession:
    s = make()
    s.start(T0)
    return s


def _local() -> JobSession:
    s = make(PlacementMode.LOCAL)
    s.start(T0)
    return s


def _done() -> JobSession:
    s = _local()
    s.completed(Outcome.SUCCESS, 0, T0)
    return s


def _failed() -> JobSession:
    s = make()
    s.cancel(T0)
    return s


IN_STATE: dict[State, Callable[[], JobSession]] = {
    State.NEW: _new,
    State.SEARCHING: _searching,
    State.OFFERING: lambda: offering(cand(1)),
    State.RUNNING: lambda: running(cand(1)),
    State.LOCAL: _local,
    State.DONE: _done,
    State.FAILED: _failed,
}

CALL: dict[str, Callable[[JobSession], object]] = {
    "start": lambda s: s.start(T0),
    "candidates_found": lambda s: s.candidates_found([cand(1)], T0),
    "search_failed": lambda s: s.search_failed("x", T0),
    "declined": lambda s: s.declined(DeclineReason.BUSY, "x", T0),
    "accepted": lambda s: s.accepted(False, 1, T0),
    "worker_progress": lambda s: s.worker_progress(EventKind.QUEUED, T0),
    "attempt_failed": lambda s: s.attempt_failed(AttemptResult.TIMEOUT, "x", T0),
    "completed": lambda s: s.completed(Outcome.SUCCESS, 0, T0),
    "local_refused": lambda s: s.local_refused("BUSY", "x", T0),
    "cancel": lambda s: s.cancel(T0),
    "aborted": lambda s: s.aborted(T0),
}


def test_the_table_names_every_input_and_every_state_can_be_built() -> None:
    inputs = {
        name
        for name in vars(JobSession)
        if not name.startswith("_") and callable(getattr(JobSession, name))
    } - {"pop_events", "failure_summary"}
    assert set(_ACCEPTS) == inputs == set(CALL)
    for state, build in IN_STATE.items():
        assert build().state is state


@pytest.mark.parametrize(
    ("name", "state"),
    [(n, st_) for n in _ACCEPTS for st_ in State if st_ not in _ACCEPTS[n]],
    ids=lambda v: v if isinstance(v, str) else v.value,
)
def test_an_input_the_state_does_not_take_raises_and_changes_nothing(
    name: str, state: State
) -> None:
    s = IN_STATE[state]()
    s.pop_events()
    attempts = [(a.number, a.result, a.may_have_run) for a in s.attempts]
    with pytest.raises(SessionError, match=f"^{name} in state {state.value}$"):
        CALL[name](s)
    assert s.state is state
    assert s.pop_events() == []
    assert [(a.number, a.result, a.may_have_run) for a in s.attempts] == attempts


@pytest.mark.parametrize(
    ("name", "state"),
    [(n, st_) for n in _ACCEPTS for st_ in _ACCEPTS[n]],
    ids=lambda v: v if isinstance(v, str) else v.value,
)
def test_an_input_the_state_takes_does_not_raise(name: str, state: State) -> None:
    s = IN_STATE[state]()
    if name == "aborted":
        s.cancel(T0)
    CALL[name](s)


def test_terminal_states_take_nothing_and_live_states_take_cancel() -> None:
    for name, states in _ACCEPTS.items():
        assert not states & {State.DONE, State.FAILED}, name
    assert _ACCEPTS["cancel"] == frozenset(State) - {State.DONE, State.FAILED}


# -- events ---------------------------------------------------------------------------------


def test_event_times_map_the_monotonic_clock_to_the_wall_clock() -> None:
    s = make()
    s.start(T0 + 0.5)
    s.candidates_found([cand(1)], T0 + 1.25)
    s.declined(DeclineReason.BUSY, "full", T0 + 3.0)
    assert [e.at_ns for e in s.pop_events()] == [
        WALL0 + 500_000_000,
        WALL0 + 500_000_000,
        WALL0 + 1_250_000_000,
        WALL0 + 1_250_000_000,
        WALL0 + 3_000_000_000,
        WALL0 + 3_000_000_000,  # ACCEPTED of the local fallback
    ]


@FAST
@given(steps=st.lists(st.floats(min_value=0, max_value=1e5), min_size=1, max_size=6))
def test_event_times_never_go_backwards(steps: list[float]) -> None:
    s = make(PlacementMode.LOCAL, timeout_s=1e6)
    now = T0
    s.start(now)
    for i, step in enumerate(steps):
        now += step
        s.worker_progress(EventKind.QUEUED if i % 2 else EventKind.RUNNING, now)
        s.cancel(now)
    s.completed(Outcome.SUCCESS, 0, now)
    times = [e.at_ns for e in s.pop_events()]
    assert times == sorted(times)
    assert times[-1] == WALL0 + int((now - T0) * 1e9)


def test_events_validate_themselves() -> None:
    with pytest.raises(ValueError, match="attempt"):
        JobEvent(job_id=JOB, kind=EventKind.OFFERED, at_ns=0, attempt=-1)
    with pytest.raises(ValueError, match="error reason"):
        JobEvent(job_id=JOB, kind=EventKind.FAILED, at_ns=0)
    assert {k for k in EventKind if k.terminal} == {EventKind.FINISHED, EventKind.FAILED}


# -- random sessions ------------------------------------------------------------------------

POOL = [cand(i) for i in range(6)]  # cand(0) is this node
_LOCAL_REASONS = ["BUSY", "PLACEMENT_UNAVAILABLE"]
# What the adapter reports through attempt_failed (declines and results have their own inputs).
_FAILURES = [
    AttemptResult.UNREACHABLE,
    AttemptResult.TIMEOUT,
    AttemptResult.DISCONNECTED,
    AttemptResult.BAD_RECEIPT,
    AttemptResult.ERROR,
]


def _feed(s: JobSession, name: str, now: float, data: st.DataObject) -> Action | None:
    if name == "candidates_found":
        pool = POOL
        if s.placement.mode is PlacementMode.PEER:  # the adapter looks up the named peer only
            pool = [c for c in POOL if c.node_id == s.placement.peer_node_id]
        found = data.draw(st.lists(st.sampled_from(pool), unique=True, max_size=len(pool)))
        return s.candidates_found(found, now, detail="none")
    if name == "search_failed":
        return s.search_failed("lookup failed", now)
    if name == "declined":
        return s.declined(data.draw(st.sampled_from(DeclineReason)), "no", now)
    if name == "accepted":
        return s.accepted(data.draw(st.booleans()), data.draw(st.integers(0, 10**6)), now)
    if name == "worker_progress":
        s.worker_progress(data.draw(st.sampled_from(EventKind)), now)
        return None
    if name == "attempt_failed":
        return s.attempt_failed(data.draw(st.sampled_from(_FAILURES)), "failed", now)
    if name == "completed":
        return s.completed(data.draw(st.sampled_from(Outcome)), data.draw(st.integers(0, 255)), now)
    if name == "local_refused":
        return s.local_refused(data.draw(st.sampled_from(_LOCAL_REASONS)), "refused", now)
    if name == "cancel":
        return s.cancel(now)
    assert name == "aborted"
    return s.aborted(now)


_STATE_OF: dict[type, set[State]] = {
    Search: {State.SEARCHING},
    SendOffer: {State.OFFERING},
    SendRun: {State.RUNNING},
    RunLocal: {State.LOCAL},
    Finish: {State.DONE},
    Fail: {State.FAILED},
    CancelRemote: {State.RUNNING},
    CancelLocal: {State.LOCAL},
    AbortPending: {State.SEARCHING, State.OFFERING},
    Wait: {State.SEARCHING, State.OFFERING, State.RUNNING, State.LOCAL},
}


@FAST
@given(
    data=st.data(),
    mode=st.sampled_from(PlacementMode),
    peer=st.sampled_from([OWN, nid(1), nid(2)]),
    max_attempts=st.integers(1, 4),
    fallback_local=st.booleans(),
    timeout_s=st.sampled_from([0.0, 2.0, 10.0, 120.0]),
)
def test_random_sessions_keep_their_invariants(
    data: st.DataObject,
    mode: PlacementMode,
    peer: str,
    max_attempts: int,
    fallback_local: bool,
    timeout_s: float,
) -> None:
    s = make(
        mode,
        peer=peer if mode is PlacementMode.PEER else "",
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        fallback_local=fallback_local,
        offer_timeout_s=3.0,
    )
    now = T0
    events: list[JobEvent] = []
    attempts_at_cancel: int | None = None
    action: Action | None = s.start(now)
    for _ in range(40):
        # -- the action agrees with the state, and the attempt record
        if action is not None:
            assert s.state in _STATE_OF[type(action)], (action, s.state)
        if isinstance(action, SendOffer):
            assert now < s.deadline
            assert action.timeout_s == min(3.0, s.deadline - now)
            assert action.candidate.node_id != OWN
            assert action.attempt == len(s.attempts)
            assert s.attempts[-1].node_id == action.candidate.node_id
        if isinstance(action, SendRun):
            assert action.attempt == len(s.attempts)
            assert action.candidate == s.current
        if isinstance(action, RunLocal):
            assert action.attempt == len(s.attempts)
            assert s.attempts[-1].local
        if isinstance(action, Finish):
            assert action.attempt == len(s.attempts)
            assert s.attempts[-1].result is AttemptResult.COMPLETED
            assert not s.attempts[-1].may_have_run
        if isinstance(action, Fail) and action.error_reason == "CANCELLED":
            assert s.cancelled
        if s.cancelled:
            assert attempts_at_cancel is not None
            assert len(s.attempts) == attempts_at_cancel
        assert [a.number for a in s.attempts] == list(range(1, len(s.attempts) + 1))
        assert sum(not a.local for a in s.attempts) <= max_attempts
        assert all(not a.local for a in s.attempts[:-1])
        remote = [a.node_id for a in s.attempts if not a.local]
        assert len(remote) == len(set(remote))
        assert OWN not in remote
        assert all(a.result is not None for a in s.attempts[:-1])
        for a in s.attempts:
            if a.result in (AttemptResult.DECLINED, AttemptResult.COMPLETED):
                assert not a.may_have_run
        if mode is PlacementMode.LOCAL:
            assert all(a.local for a in s.attempts)
        if mode is PlacementMode.PEER:  # the named peer only; here only if it is this node
            if peer == OWN:
                assert all(a.local for a in s.attempts)
            else:
                assert {a.node_id for a in s.attempts} <= {peer}
        # -- events: pulled once, in time order, one terminal event at most, and last
        new = s.pop_events()
        for e in new:
            assert e.job_id == JOB
            assert e.attempt <= len(s.attempts)
            assert e.at_ns == WALL0 + int((now - T0) * 1e9)
        events += new
        terminal = [e for e in events if e.kind.terminal]
        assert len(terminal) <= 1
        assert (len(terminal) == 1) == (s.state in (State.DONE, State.FAILED))
        if terminal:
            assert events[-1] is terminal[0]
            break
        # -- the next input: any the state takes (an abort only after a cancel)
        names = sorted(n for n, states in _ACCEPTS.items() if s.state in states and n != "start")
        if not s.cancelled and "aborted" in names:
            names.remove("aborted")
        # Cancel is always possible: draw it rarely, so sessions get far enough to fail over.
        rest = [n for n in names if n != "cancel"]
        name = data.draw(st.sampled_from(sorted(rest) * 4 + ["cancel"]))
        now += data.draw(st.sampled_from([0.0, 0.25, 0.5, 2.0]))
        if name == "cancel" and not s.cancelled:
            attempts_at_cancel = len(s.attempts)
        action = _feed(s, name, now, data)
    assert events[0].kind is EventKind.SUBMITTED
    assert [e.at_ns for e in events] == sorted(e.at_ns for e in events)
    if s.state in (State.DONE, State.FAILED):
        for name, call in CALL.items():
            with pytest.raises(SessionError):
                call(s)
            assert s.pop_events() == [], name


# -- placement ------------------------------------------------------------------------------


def test_placement_validation() -> None:
    assert Placement().mode is PlacementMode.AUTO
    Placement(mode=PlacementMode.PEER, peer_node_id=nid(1))
    with pytest.raises(InvalidIdError):
        Placement(mode=PlacementMode.PEER)
    with pytest.raises(InvalidIdError):
        Placement(mode=PlacementMode.PEER, peer_node_id=nid(1).upper())
    with pytest.raises(InvalidIdError):
        Placement(mode=PlacementMode.PEER, peer_node_id=nid(1)[:63])
    for mode in (PlacementMode.AUTO, PlacementMode.LOCAL):
        with pytest.raises(ValueError, match="only for PLACEMENT_MODE_PEER"):
            Placement(mode=mode, peer_node_id=nid(1))
    with pytest.raises(ValueError, match="min_memory_bytes"):
        Placement(min_memory_bytes=-1)


def test_unmet_requirement_names_the_first_requirement_a_node_does_not_meet() -> None:
    def unmet(placement: Placement) -> str | None:
        return unmet_requirement(
            placement, arch="x86_64", wasi_version="preview1", max_memory_bytes=1 << 30
        )

    assert unmet(Placement()) is None
    met = Placement(arch="x86_64", wasi_version="preview1", min_memory_bytes=1 << 30)
    assert unmet(met) is None
    assert unmet(Placement(arch="aarch64")) == (
        "job requires arch 'aarch64'; this node is 'x86_64'"
    )
    assert unmet(Placement(wasi_version="preview2")) == (
        "job requires WASI 'preview2'; this node runs 'preview1'"
    )
    assert unmet(Placement(min_memory_bytes=(1 << 30) + 1)) == (
        f"job requires {(1 << 30) + 1} bytes of memory; this node offers at most {1 << 30}"
    )
    # Architecture first, then WASI version, then memory.
    everything = Placement(arch="aarch64", wasi_version="preview2", min_memory_bytes=1 << 40)
    assert "arch" in (unmet(everything) or "")
    no_arch = Placement(wasi_version="preview2", min_memory_bytes=1 << 40)
    assert "WASI" in (unmet(no_arch) or "")


def _order(ranked: list[Candidate]) -> list[str]:
    return [c.node_id for c in ranked]


def test_rank_spreads_our_jobs_in_flight() -> None:
    a, b, c = cand(1, free=4), cand(2, free=4), cand(3, free=4)
    ranked = rank([a, b, c], in_flight={nid(1): 2, nid(2): 1}, rtt={}, salt=b"s")
    assert _order(ranked) == [nid(3), nid(2), nid(1)]


def test_rank_puts_saturated_workers_last_whatever_their_rtt() -> None:
    full = cand(1, free=2)  # two of ours already there
    idle = cand(2, free=8)
    ranked = rank([full, idle], in_flight={nid(1): 2, nid(2): 3}, rtt={nid(1): 0.001}, salt=b"")
    # idle has more of ours in flight, but full is expected to be full.
    assert _order(ranked) == [nid(2), nid(1)]
    ranked = rank([full, idle], in_flight={nid(1): 1, nid(2): 3}, rtt={nid(1): 0.001}, salt=b"")
    assert _order(ranked) == [nid(1), nid(2)]


def test_rank_expects_a_worker_advertising_no_free_slot_to_be_full() -> None:
    busy = cand(1, free=0)
    idle = cand(2, free=4)
    ranked = rank([busy, idle], in_flight={}, rtt={nid(1): 0.001}, salt=b"")
    assert _order(ranked) == [nid(2), nid(1)]


def test_rank_prefers_connected_workers_lowest_rtt_first() -> None:
    ws = [cand(1, free=9), cand(2, free=1), cand(3, free=1)]
    ranked = rank(ws, in_flight={}, rtt={nid(2): 0.05, nid(3): 0.01}, salt=b"x")
    assert _order(ranked) == [nid(3), nid(2), nid(1)]


def test_rank_breaks_ties_on_free_slots_then_the_salt() -> None:
    ws = [cand(1, free=1), cand(2, free=3), cand(3, free=2)]
    ranked = rank(ws, in_flight={}, rtt={}, salt=b"x")
    assert _order(ranked) == [nid(2), nid(3), nid(1)]


def test_rank_orders_full_ties_by_the_salted_hash() -> None:
    ws = [cand(i, free=2) for i in range(1, 7)]

    def by_salt(salt: bytes) -> list[str]:
        return sorted(
            (c.node_id for c in ws),
            key=lambda n: hashlib.sha256(salt + bytes.fromhex(n)).digest(),
        )

    orders = set()
    for i in range(16):
        salt = i.to_bytes(8, "big")
        ranked = _order(rank(ws, in_flight={}, rtt={}, salt=salt))
        assert ranked == by_salt(salt)
        assert ranked == _order(rank(list(reversed(ws)), in_flight={}, rtt={}, salt=salt))
        orders.add(tuple(ranked))
    assert len(orders) > 1  # different salts spread ties across nodes


@FAST
@given(
    frees=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    ours=st.lists(st.integers(0, 5), min_size=6, max_size=6),
    rtts=st.lists(st.none() | st.floats(0.001, 1.0), min_size=6, max_size=6),
    salt=st.binary(max_size=8),
)
def test_rank_is_a_permutation_sorted_by_its_documented_key(
    frees: list[int], ours: list[int], rtts: list[float | None], salt: bytes
) -> None:
    ws = [cand(i + 1, free=f) for i, f in enumerate(frees)]
    in_flight = {c.node_id: ours[i] for i, c in enumerate(ws) if ours[i]}
    rtt = {c.node_id: r for c, r in zip(ws, rtts, strict=False) if r is not None}
    ranked = rank(ws, in_flight=in_flight, rtt=rtt, salt=salt)
    assert sorted(_order(ranked)) == sorted(_order(ws))

    def documented(c: Candidate) -> tuple[bool, int, float, int]:
        ours = in_flight.get(c.node_id, 0)
        return (ours >= c.free_slots, ours, rtt.get(c.node_id, math.inf), -c.free_slots)

    keys = [documented(c) for c in ranked]
    assert keys == sorted(keys)
