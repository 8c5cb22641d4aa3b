"""core/reachability.py: the dial-back round and the helper's rate limit, sans-I/O."""

from __future__ import annotations

import itertools

import pytest

from plasm_grpc.core.reachability import (
    DialBackLimiter,
    Reachability,
    ReachabilityChanged,
    ReachabilityCheck,
)

H = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]


def start(check: ReachabilityCheck, helpers: list[str] = H, now: float = 0.0) -> dict[str, bytes]:
    counter = itertools.count(1)
    out = check.start_round(helpers, now, lambda: next(counter).to_bytes(16, "big"))
    return {r.helper: r.nonce for r in out}


def test_a_majority_of_dial_backs_makes_the_node_public() -> None:
    check = ReachabilityCheck(max_helpers=3, round_timeout=10)
    sent = start(check)
    assert list(sent) == H[:3]  # at most max_helpers, in order
    assert check.get_timer() == 10
    for helper in H[:2]:
        assert check.probe_received(helper, sent[helper])
        check.helper_answered(helper, True, 1.0)
    check.helper_answered(H[2], False, 1.0)
    assert not check.running
    assert check.status is Reachability.PUBLIC
    assert check.next_event() == ReachabilityChanged(
        old=Reachability.UNKNOWN, new=Reachability.PUBLIC, successes=2, failures=1
    )
    assert check.next_event() is None


def test_a_helper_that_claims_success_without_a_probe_counts_as_a_failure() -> None:
    check = ReachabilityCheck(max_helpers=1, round_timeout=10)
    start(check)
    check.helper_answered(H[0], True, 1.0)
    assert check.status is Reachability.PRIVATE


def test_probes_need_the_nonce_issued_to_that_helper_once() -> None:
    check = ReachabilityCheck(max_helpers=2, round_timeout=10)
    assert not check.probe_received(H[0], bytes(16))  # no round
    sent = start(check)
    assert not check.probe_received(H[0], sent[H[1]])  # another helper's nonce
    assert not check.probe_received(H[2], sent[H[0]])  # not a helper
    assert check.probe_received(H[0], sent[H[0]])
    assert not check.probe_received(H[0], sent[H[0]])  # replayed


def test_no_answers_keep_the_status_and_the_deadline_ends_the_round() -> None:
    check = ReachabilityCheck(max_helpers=2, round_timeout=10)
    start(check)
    check.helper_failed(H[0], 1.0)
    check.handle_timer(9.9)
    assert check.running
    check.handle_timer(10.0)
    assert not check.running
    assert check.status is Reachability.UNKNOWN
    assert check.next_event() is None
    assert check.get_timer() is None


def test_private_then_public_and_a_tie_is_unknown() -> None:
    check = ReachabilityCheck(max_helpers=2, round_timeout=10)
    start(check)
    check.helper_answered(H[0], False, 1.0)
    check.helper_answered(H[1], False, 1.0)
    assert check.status is Reachability.PRIVATE
    sent = start(check, now=20)
    check.probe_received(H[0], sent[H[0]])
    check.helper_answered(H[0], True, 21)
    check.helper_answered(H[1], False, 21)
    assert check.status is Reachability.UNKNOWN
    events = [check.next_event(), check.next_event()]
    assert [e.new for e in events if e] == [Reachability.PRIVATE, Reachability.UNKNOWN]


def test_one_round_at_a_time_and_nothing_without_helpers() -> None:
    check = ReachabilityCheck()
    assert start(check, helpers=[]) == {}
    assert not check.running
    assert start(check, helpers=[H[0], H[0]]) == {H[0]: (1).to_bytes(16, "big")}
    assert start(check) == {}


def test_the_dial_back_limiter_bounds_each_ip_and_its_memory() -> None:
    limiter = DialBackLimiter(per_window=2, window=60, max_ips=2)
    assert limiter.allow("10.0.0.1", 0)
    assert limiter.allow("10.0.0.1", 1)
    assert not limiter.allow("10.0.0.1", 2)
    assert limiter.allow("10.0.0.2", 2)  # another IP has its own budget
    assert limiter.allow("10.0.0.1", 60.5)  # the first one left the window
    limiter.allow("10.0.0.3", 61)
    limiter.allow("10.0.0.4", 61)
    assert limiter.allow("10.0.0.1", 61)  # forgotten (max_ips): a fresh budget
    with pytest.raises(ValueError, match="must be positive"):
        DialBackLimiter(per_window=0)
