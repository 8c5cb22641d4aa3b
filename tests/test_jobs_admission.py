"""The worker's offer book (core.jobs.admission): decide, leases and fairness.

Pure: no sockets, no asyncio. Times are arguments: `now_ns` (the worker's
wall clock, for the offer's deadline) and `now` (monotonic seconds, for leases).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasm_grpc.core.jobs.admission import (
    CLOCK_SKEW_NS,
    Decline,
    LeaseBook,
    LeaseError,
    Offer,
    WorkerLoad,
    WorkerPolicy,
    decide,
)
from plasm_grpc.core.jobs.events import DeclineReason
from plasm_grpc.core.limits import ResourceLimits

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NOW_NS = 1_700_000_000_000_000_000
REQ_A = "a" * 64
REQ_B = "b" * 64
JOB = "0123456789abcdef0123456789abcdef"

DEFAULTS = ResourceLimits(
    max_memory_bytes=64 << 20,
    max_fuel=10**9,
    timeout_ms=10_000,
    max_stdout_bytes=1 << 20,
    max_stderr_bytes=1 << 20,
)
MAXIMA = ResourceLimits(
    max_memory_bytes=256 << 20,
    max_fuel=10**11,
    timeout_ms=60_000,
    max_stdout_bytes=8 << 20,
    max_stderr_bytes=4 << 20,
)
POLICY = WorkerPolicy(
    accept_jobs=True,
    arch="x86_64",
    wasi_version="preview1",
    default_limits=DEFAULTS,
    max_limits=MAXIMA,
    max_module_bytes=1000,
    max_input_bytes=500,
    lease_ns=10_000_000_000,
    capacity=4,
    max_share=0.5,
)
OFFER = Offer(
    job_id=JOB,
    requester_node_id=REQ_A,
    module_sha256="c" * 64,
    module_size=100,
    input_size=10,
    input_sha256="d" * 64,
    limits=ResourceLimits(),
    deadline_ns=NOW_NS + 60_000_000_000,
)
LOAD = WorkerLoad(draining=False, capacity_left=4, held_by_requester=0, job_id_taken=False)


def reason(
    offer: Offer = OFFER, policy: WorkerPolicy = POLICY, load: WorkerLoad = LOAD
) -> DeclineReason | None:
    decline = decide(offer, policy, load, NOW_NS)
    return None if decline is None else decline.reason


# -- decide ----------------------------------------------------------------------------------


def test_a_fitting_offer_is_accepted() -> None:
    assert decide(OFFER, POLICY, LOAD, NOW_NS) is None
    matching = replace(OFFER, arch="x86_64", wasi_version="preview1", min_memory_bytes=1)
    assert decide(matching, POLICY, LOAD, NOW_NS) is None


def test_a_node_not_accepting_jobs_declines() -> None:
    decline = decide(OFFER, replace(POLICY, accept_jobs=False), LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.NOT_ACCEPTING, detail="this node does not run jobs for peers"
    )


def test_a_draining_node_declines() -> None:
    decline = decide(OFFER, POLICY, replace(LOAD, draining=True), NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.SHUTTING_DOWN, detail="the node is shutting down"
    )


def test_another_wasi_version_is_unsupported() -> None:
    decline = decide(replace(OFFER, wasi_version="preview2"), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.UNSUPPORTED_RUNTIME,
        detail="job requires WASI 'preview2'; this node runs 'preview1'",
    )


def test_another_arch_is_unsupported() -> None:
    decline = decide(replace(OFFER, arch="aarch64"), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.UNSUPPORTED_RUNTIME,
        detail="job requires arch 'aarch64'; this node is 'x86_64'",
    )


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ResourceLimits)])
def test_each_limit_above_the_maximum_is_too_high_and_at_it_is_fine(name: str) -> None:
    top = getattr(MAXIMA, name)
    at = replace(OFFER, limits=ResourceLimits(**{name: top}))
    assert decide(at, POLICY, LOAD, NOW_NS) is None
    above = replace(OFFER, limits=ResourceLimits(**{name: top + 1}))
    decline = decide(above, POLICY, LOAD, NOW_NS)
    assert decline is not None
    assert decline.reason is DeclineReason.LIMITS_TOO_HIGH
    assert name in decline.detail
    assert str(top + 1) in decline.detail


def test_a_memory_requirement_above_the_maximum_is_too_high() -> None:
    top = MAXIMA.max_memory_bytes
    assert reason(replace(OFFER, min_memory_bytes=top)) is None
    decline = decide(replace(OFFER, min_memory_bytes=top + 1), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.LIMITS_TOO_HIGH,
        detail=f"job requires {top + 1} bytes of memory; this node offers at most {top}",
    )


def test_module_size_is_checked_against_the_maximum() -> None:
    assert reason(replace(OFFER, module_size=1000)) is None
    decline = decide(replace(OFFER, module_size=1001), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.MODULE_TOO_LARGE,
        detail="module is 1001 bytes; this node accepts at most 1000",
    )


def test_input_size_is_checked_against_the_maximum() -> None:
    assert reason(replace(OFFER, input_size=500)) is None
    decline = decide(replace(OFFER, input_size=501), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.INPUT_TOO_LARGE,
        detail="input is 501 bytes; this node accepts at most 500",
    )


def test_a_deadline_past_by_more_than_the_clock_skew_is_too_short() -> None:
    past = NOW_NS - CLOCK_SKEW_NS - 500_000_000
    decline = decide(replace(OFFER, deadline_ns=past), POLICY, LOAD, NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.DEADLINE_TOO_SHORT,
        detail="the offer's deadline passed 2.5 s ago by this node's clock",
    )
    assert reason(replace(OFFER, deadline_ns=NOW_NS - CLOCK_SKEW_NS - 1)) is (
        DeclineReason.DEADLINE_TOO_SHORT
    )


@pytest.mark.parametrize(
    "deadline_ns",
    [NOW_NS - CLOCK_SKEW_NS, NOW_NS - 1, NOW_NS, NOW_NS + 1, 0],
    ids=["at-the-skew", "just-past", "now", "future", "none"],
)
def test_a_deadline_within_the_clock_skew_or_none_is_accepted(deadline_ns: int) -> None:
    assert reason(replace(OFFER, deadline_ns=deadline_ns)) is None


def test_a_job_id_already_held_is_a_duplicate() -> None:
    decline = decide(OFFER, POLICY, replace(LOAD, job_id_taken=True), NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.DUPLICATE_JOB, detail=f"this node already has a job {JOB}"
    )


def test_a_requester_holding_its_share_is_refused() -> None:
    assert POLICY.per_requester == 2
    assert reason(load=replace(LOAD, held_by_requester=1)) is None
    decline = decide(OFFER, POLICY, replace(LOAD, held_by_requester=2), NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.REQUESTER_LIMIT,
        detail="this requester holds 2 of this node's 4 job places; its share is 2",
    )
    assert reason(load=replace(LOAD, held_by_requester=3)) is DeclineReason.REQUESTER_LIMIT


def test_a_full_node_is_busy() -> None:
    assert reason(load=replace(LOAD, capacity_left=1)) is None
    decline = decide(OFFER, POLICY, replace(LOAD, capacity_left=0), NOW_NS)
    assert decline == Decline(
        reason=DeclineReason.BUSY, detail="all 4 job places (slots and queue) are taken"
    )
    assert reason(load=replace(LOAD, capacity_left=-1)) is DeclineReason.BUSY


def test_the_first_failing_check_names_the_reason() -> None:
    """Cheap stateless checks first: fixing each reveals the next, in this order."""
    offer = replace(
        OFFER,
        wasi_version="preview2",
        arch="aarch64",
        limits=ResourceLimits(max_fuel=MAXIMA.max_fuel + 1),
        min_memory_bytes=MAXIMA.max_memory_bytes + 1,
        module_size=2000,
        input_size=2000,
        deadline_ns=1,
    )
    policy = replace(POLICY, accept_jobs=False)
    load = WorkerLoad(draining=True, capacity_left=0, held_by_requester=9, job_id_taken=True)
    fixes = [
        (DeclineReason.NOT_ACCEPTING, lambda o, p, ld: (o, replace(p, accept_jobs=True), ld)),
        (DeclineReason.SHUTTING_DOWN, lambda o, p, ld: (o, p, replace(ld, draining=False))),
        (DeclineReason.UNSUPPORTED_RUNTIME, lambda o, p, ld: (replace(o, wasi_version=""), p, ld)),
        (DeclineReason.UNSUPPORTED_RUNTIME, lambda o, p, ld: (replace(o, arch=""), p, ld)),
        (
            DeclineReason.LIMITS_TOO_HIGH,
            lambda o, p, ld: (replace(o, limits=ResourceLimits()), p, ld),
        ),
        (DeclineReason.LIMITS_TOO_HIGH, lambda o, p, ld: (replace(o, min_memory_bytes=0), p, ld)),
        (DeclineReason.MODULE_TOO_LARGE, lambda o, p, ld: (replace(o, module_size=1), p, ld)),
        (DeclineReason.INPUT_TOO_LARGE, lambda o, p, ld: (replace(o, input_size=1), p, ld)),
        (DeclineReason.DEADLINE_TOO_SHORT, lambda o, p, ld: (replace(o, deadline_ns=0), p, ld)),
        (DeclineReason.DUPLICATE_JOB, lambda o, p, ld: (o, p, replace(ld, job_id_taken=False))),
        (
            DeclineReason.REQUESTER_LIMIT,
            lambda o, p, ld: (o, p, replace(ld, held_by_requester=0)),
        ),
        (DeclineReason.BUSY, lambda o, p, ld: (o, p, replace(ld, capacity_left=1))),
    ]
    for expected, fix in fixes:
        assert reason(offer, policy, load) is expected
        offer, policy, load = fix(offer, policy, load)
    assert reason(offer, policy, load) is None


# -- policy and fairness ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "share", "expected"),
    [(4, 0.5, 2), (5, 0.5, 2), (1, 0.5, 1), (3, 0.25, 1), (10, 0.01, 1), (7, 1.0, 7), (10, 0.3, 3)],
)
def test_per_requester_is_the_floor_of_the_share_and_at_least_one(
    capacity: int, share: float, expected: int
) -> None:
    assert replace(POLICY, capacity=capacity, max_share=share).per_requester == expected


@pytest.mark.parametrize(("capacity", "share", "expected"), [(100, 0.29, 29), (100, 0.57, 57)])
def test_per_requester_is_exact_for_decimal_shares(
    capacity: int, share: float, expected: int
) -> None:
    assert replace(POLICY, capacity=capacity, max_share=share).per_requester == expected


@FAST
@given(capacity=st.integers(1, 1000), share=st.floats(0.001, 1.0))
def test_another_requester_always_finds_room(capacity: int, share: float) -> None:
    """With max_share < 1, one requester at its share leaves a place for another."""
    policy = replace(POLICY, capacity=capacity, max_share=share)
    per = policy.per_requester
    assert 1 <= per <= capacity
    if per < capacity:
        load_b = WorkerLoad(
            draining=False, capacity_left=capacity - per, held_by_requester=0, job_id_taken=False
        )
        assert decide(replace(OFFER, requester_node_id=REQ_B), policy, load_b, NOW_NS) is None
    full_a = replace(LOAD, capacity_left=capacity - per, held_by_requester=per)
    assert reason(policy=policy, load=full_a) is DeclineReason.REQUESTER_LIMIT


@pytest.mark.parametrize("share", [0.0, -0.5, 1.0000001, 2.0, float("nan")])
def test_policy_refuses_a_share_outside_zero_to_one(share: float) -> None:
    with pytest.raises(ValueError, match="max_share"):
        replace(POLICY, max_share=share)


@pytest.mark.parametrize(("capacity", "lease_ns"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_policy_refuses_no_capacity_or_no_lease(capacity: int, lease_ns: int) -> None:
    with pytest.raises(ValueError, match="capacity and lease must be positive"):
        replace(POLICY, capacity=capacity, lease_ns=lease_ns)


def test_policy_takes_the_edges() -> None:
    assert replace(POLICY, capacity=1, lease_ns=1, max_share=1.0).per_requester == 1


# -- leases ----------------------------------------------------------------------------------


def offer_for(job: int, requester: str = REQ_A, **kw: Any) -> Offer:
    return replace(OFFER, job_id=f"{job:032x}", requester_node_id=requester, **kw)


def test_a_grant_resolves_limits_and_expires_a_lease_later() -> None:
    book = LeaseBook(POLICY)
    offer = offer_for(1, limits=ResourceLimits(max_fuel=5))
    lease = book.grant(offer, "L1", now=100.0)
    assert lease.lease_id == "L1"
    assert lease.job_id == offer.job_id
    assert lease.requester_node_id == REQ_A
    assert lease.offer is offer
    assert lease.limits == replace(DEFAULTS, max_fuel=5)
    assert lease.expires_ns == 100_000_000_000 + POLICY.lease_ns
    assert len(book) == 1
    assert book.has_job(offer.job_id)
    assert book.held(REQ_A) == 1
    assert book.held(REQ_B) == 0


def test_take_with_the_right_lease_removes_it() -> None:
    book = LeaseBook(POLICY)
    lease = book.grant(offer_for(1), "L1", now=1.0)
    assert book.take(lease.job_id, "L1", REQ_A) is lease
    assert len(book) == 0
    assert not book.has_job(lease.job_id)
    assert book.held(REQ_A) == 0
    with pytest.raises(LeaseError, match=f"^no lease for job {lease.job_id} "):
        book.take(lease.job_id, "L1", REQ_A)


def test_take_by_another_requester_or_with_another_lease_fails_and_keeps_it() -> None:
    book = LeaseBook(POLICY)
    lease = book.grant(offer_for(1), "L1", now=1.0)
    with pytest.raises(LeaseError) as wrong_requester:
        book.take(lease.job_id, "L1", REQ_B)
    assert wrong_requester.value.reason.startswith(f"no lease for job {lease.job_id} ")
    with pytest.raises(LeaseError) as wrong_lease:
        book.take(lease.job_id, "L2", REQ_A)
    assert wrong_lease.value.reason == (
        f"lease 'L2' does not match the one granted for {lease.job_id}"
    )
    with pytest.raises(LeaseError, match="no lease for job"):
        book.take(f"{99:032x}", "L1", REQ_A)
    assert book.has_job(lease.job_id)
    assert book.held(REQ_A) == 1
    assert book.take(lease.job_id, "L1", REQ_A) is lease


def test_held_counts_leases_per_requester() -> None:
    book = LeaseBook(POLICY)
    book.grant(offer_for(1), "a1", 0.0)
    book.grant(offer_for(2), "a2", 0.0)
    book.grant(offer_for(3, REQ_B), "b1", 0.0)
    assert (book.held(REQ_A), book.held(REQ_B), len(book)) == (2, 1, 3)
    book.take(f"{1:032x}", "a1", REQ_A)
    assert (book.held(REQ_A), book.held(REQ_B)) == (1, 1)
    book.take(f"{3:032x}", "b1", REQ_B)
    assert (book.held(REQ_A), book.held(REQ_B)) == (1, 0)
    assert REQ_B not in book._held  # no zero entries left behind


def test_expire_returns_and_removes_only_the_expired_leases() -> None:
    book = LeaseBook(replace(POLICY, lease_ns=10_000_000_000))
    early = book.grant(offer_for(1), "e", now=0.0)
    late = book.grant(offer_for(2, REQ_B), "l", now=5.0)
    assert book.next_expiry() == 10.0
    assert book.expire(9.5) == []
    assert book.expire(10.0) == []  # expiring *at* the instant is not yet expired
    assert book.expire(10.5) == [early]
    assert not book.has_job(early.job_id)
    assert book.has_job(late.job_id)
    assert (book.held(REQ_A), book.held(REQ_B)) == (0, 1)
    assert book.next_expiry() == 15.0
    with pytest.raises(LeaseError):
        book.take(early.job_id, "e", REQ_A)
    assert book.expire(100.0) == [late]
    assert book.next_expiry() is None
    assert len(book) == 0


def test_expire_returns_every_lease_gone_by_then() -> None:
    book = LeaseBook(replace(POLICY, lease_ns=1_000_000_000))
    leases = [book.grant(offer_for(i), f"l{i}", now=float(i)) for i in range(5)]
    assert sorted(lease.lease_id for lease in book.expire(3.5)) == ["l0", "l1", "l2"]
    assert sorted(lease.job_id for lease in leases[3:]) == sorted(book._by_job)
    assert book.next_expiry() == 4.0


def test_drop_forgets_only_the_requesters_own_lease() -> None:
    book = LeaseBook(POLICY)
    lease = book.grant(offer_for(1), "L1", now=0.0)
    assert book.drop(lease.job_id, REQ_B) is None
    assert book.has_job(lease.job_id)
    assert book.drop(f"{7:032x}", REQ_A) is None
    assert book.drop(lease.job_id, REQ_A) is lease
    assert not book.has_job(lease.job_id)
    assert book.held(REQ_A) == 0
    assert book.drop(lease.job_id, REQ_A) is None


def test_clear_returns_every_lease_and_empties_the_book() -> None:
    book = LeaseBook(POLICY)
    granted = {book.grant(offer_for(i, REQ_A if i % 2 else REQ_B), f"l{i}", 0.0) for i in range(4)}
    assert set(book.clear()) == granted
    assert len(book) == 0
    assert (book.held(REQ_A), book.held(REQ_B)) == (0, 0)
    assert book.next_expiry() is None
    assert book.clear() == []


_ops = st.lists(
    st.tuples(
        st.sampled_from(["grant", "take", "drop", "expire"]),
        st.integers(0, 5),  # job
        st.sampled_from([REQ_A, REQ_B]),
        st.integers(0, 3),  # seconds forward
    ),
    max_size=40,
)


@FAST
@given(ops=_ops)
def test_the_book_agrees_with_a_model(ops: list[tuple[str, int, str, int]]) -> None:
    """held() and len() always match a plain dict of live leases."""
    book = LeaseBook(replace(POLICY, lease_ns=5_000_000_000))
    model: dict[str, tuple[str, str, int]] = {}  # job -> (requester, lease id, expires ns)
    now = 0.0
    for op, job, requester, step in ops:
        now += step
        job_id = f"{job:032x}"
        if op == "grant" and job_id not in model:  # decide() refuses a job id already held
            book.grant(offer_for(job, requester), f"lease{job}", now)
            model[job_id] = (requester, f"lease{job}", int(now * 1e9) + 5_000_000_000)
        elif op == "take":
            held = model.get(job_id)
            if held is not None and held[0] == requester:
                assert book.take(job_id, held[1], requester).job_id == job_id
                del model[job_id]
            else:
                with pytest.raises(LeaseError):
                    book.take(job_id, f"lease{job}", requester)
        elif op == "drop":
            held = model.get(job_id)
            dropped = book.drop(job_id, requester)
            assert (dropped is not None) == (held is not None and held[0] == requester)
            if dropped is not None:
                del model[job_id]
        elif op == "expire":
            now_ns = int(now * 1e9)
            gone = {j for j, (_, _, exp) in model.items() if exp < now_ns}
            assert {lease.job_id for lease in book.expire(now)} == gone
            for j in gone:
                del model[j]
        assert len(book) == len(model)
        for r in (REQ_A, REQ_B):
            assert book.held(r) == sum(1 for req, _, _ in model.values() if req == r)
        expiries = [exp for _, _, exp in model.values()]
        assert book.next_expiry() == (min(expiries) / 1e9 if expiries else None)
