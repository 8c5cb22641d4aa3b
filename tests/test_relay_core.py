"""core/relay.py: the relay's reservations and circuits and their limits, sans-I/O.

Time is always passed in: no sleeps, no wall clock.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasm_grpc.core.relay import (
    Circuit,
    ClosedCircuit,
    Cooldowns,
    Forward,
    Refused,
    RelayBook,
    RelayLimits,
    Reservation,
)

A, B, C, D, E = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)


def book(**limits: Any) -> RelayBook:
    return RelayBook(RelayLimits(**limits))


def reserved(relay: RelayBook, node_id: str, now: float) -> Reservation:
    out = relay.reserve(node_id, now)
    assert isinstance(out, Reservation), out
    return out


def opened(relay: RelayBook, requester: str, target: str, now: float) -> Circuit:
    out = relay.open_circuit(requester, target, now)
    assert isinstance(out, Circuit), out
    return out


def refused(out: object) -> str:
    assert isinstance(out, Refused), out
    return out.reason


# -- limits ------------------------------------------------------------------------------


def test_default_limits_are_valid() -> None:
    limits = RelayLimits()
    assert limits.max_reservations >= 1
    assert limits.duration_s > 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_reservations", 0, "max_reservations must be at least 1"),
        ("max_bytes", 0, "max_bytes must be at least 1"),
        ("rate_bytes_per_s", -1, "rate_bytes_per_s must be at least 1"),
        ("max_circuits", 0, "max_circuits must be at least 1"),
        ("duration_s", 0.0, "duration_s must be positive"),
        ("duration_s", -1.0, "duration_s must be positive"),
        ("duration_s", float("nan"), "duration_s must be positive"),
        ("circuit_idle_s", 0.0, "circuit_idle_s must be positive"),
        ("circuit_idle_s", float("nan"), "circuit_idle_s must be positive"),
    ],
)
def test_limits_reject_non_positive_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelayLimits(**{field: value})


def test_the_smallest_valid_limits_are_accepted() -> None:
    RelayLimits(
        max_reservations=1,
        duration_s=1e-9,
        max_bytes=1,
        rate_bytes_per_s=1,
        max_circuits=1,
        circuit_idle_s=1e-9,
    )


# -- reservation count -------------------------------------------------------------------


def test_the_reservation_past_the_maximum_is_refused_with_a_reason() -> None:
    relay = book(max_reservations=2)
    reserved(relay, A, 0.0)
    reserved(relay, B, 0.0)
    assert relay.reservations == 2
    reason = refused(relay.reserve(C, 0.0))
    assert "maximum of 2 reservations" in reason
    assert relay.reservation(C) is None
    assert relay.reservations == 2


def test_a_renewal_still_works_when_the_relay_is_full() -> None:
    relay = book(max_reservations=2, duration_s=10)
    reserved(relay, A, 0.0)
    reserved(relay, B, 0.0)
    renewed = reserved(relay, A, 5.0)
    assert renewed is relay.reservation(A)
    assert renewed.expires_at == 15.0
    assert relay.reservations == 2


def test_a_slot_frees_when_a_reservation_expires() -> None:
    relay = book(max_reservations=1, duration_s=10)
    reserved(relay, A, 0.0)
    refused(relay.reserve(B, 9.999))
    reserved(relay, B, 10.0)  # A's term ended at 10
    assert relay.reservation(A) is None
    assert relay.reservations == 1


def test_a_slot_frees_when_the_node_goes() -> None:
    relay = book(max_reservations=1)
    reserved(relay, A, 0.0)
    refused(relay.reserve(B, 1.0))
    relay.node_gone(A)
    assert relay.reservation(A) is None
    reserved(relay, B, 1.0)


def test_node_gone_for_an_unknown_node_is_harmless() -> None:
    relay = book()
    relay.node_gone(A)
    assert relay.reservations == 0
    assert relay.closed() == []


# -- duration ----------------------------------------------------------------------------


def test_a_reservation_expires_duration_after_it_was_made() -> None:
    relay = book(duration_s=30)
    made = reserved(relay, A, 100.0)
    assert made.node_id == A
    assert made.expires_at == 130.0
    assert made.bytes_used == 0
    relay.expire(129.999)
    assert relay.reservation(A) is made
    relay.expire(130.0)
    assert relay.reservation(A) is None


def test_a_renewal_extends_the_term_and_the_budget_resets_only_after_a_whole_term() -> None:
    relay = book(duration_s=30, max_bytes=1000, rate_bytes_per_s=1000, circuit_idle_s=1e6)
    made = reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    assert relay.forward(circuit.circuit_id, B, 400, 1.0) == Forward(A)
    assert made.bytes_used == 400
    renewed = reserved(relay, A, 20.0)
    assert renewed is made
    assert renewed.expires_at == 50.0
    # An early renewal keeps the bytes used: renewing every second must not
    # reset a holder's own limit.
    assert renewed.bytes_used == 400
    relay.expire(45.0)  # past the first term's end, inside the renewed one
    assert relay.reservation(A) is made
    assert relay.circuit(circuit.circuit_id) is circuit  # a renewal keeps the circuits
    again = reserved(relay, A, 31.0)  # a whole term after the first began
    assert again.bytes_used == 0
    assert again.expires_at == 61.0


def test_expiry_closes_the_reservations_circuits_and_closed_reports_them() -> None:
    relay = book(duration_s=10, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    reserved(relay, D, 5.0)
    first = opened(relay, B, A, 1.0)
    second = opened(relay, C, A, 2.0)
    other = opened(relay, B, D, 2.0)
    relay.expire(10.0)
    assert relay.reservation(A) is None
    assert relay.circuit(first.circuit_id) is None
    assert relay.circuit(second.circuit_id) is None
    assert relay.circuit(other.circuit_id) is other
    assert relay.circuits == 1
    closed = relay.closed()
    assert sorted(closed, key=lambda c: c.circuit_id) == [
        ClosedCircuit(first.circuit_id, B, A, "the reservation expired"),
        ClosedCircuit(second.circuit_id, C, A, "the reservation expired"),
    ]
    assert relay.closed() == []  # a pull: each closure is reported once


def test_renewing_an_expired_reservation_closes_its_circuits_and_starts_afresh() -> None:
    relay = book(duration_s=10, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    fresh = reserved(relay, A, 12.0)
    assert fresh.expires_at == 22.0
    assert fresh.circuits == set()
    assert relay.circuit(circuit.circuit_id) is None
    assert [c.reason for c in relay.closed()] == ["the reservation expired"]


def test_a_frame_after_the_term_is_dropped_and_the_circuit_closed() -> None:
    relay = book(duration_s=10, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    assert relay.forward(circuit.circuit_id, B, 10, 10.0) is None
    assert relay.dropped_frames == 1
    assert relay.reservation(A) is None
    assert relay.closed() == [ClosedCircuit(circuit.circuit_id, B, A, "the reservation expired")]


def test_node_gone_closes_the_circuits_it_is_either_end_of() -> None:
    relay = book(circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    reserved(relay, C, 0.0)
    to_a = opened(relay, B, A, 0.0)
    from_a = opened(relay, A, C, 0.0)
    unrelated = opened(relay, D, C, 0.0)
    relay.node_gone(A)
    assert relay.reservation(A) is None
    assert relay.circuit(unrelated.circuit_id) is unrelated
    assert sorted(relay.closed(), key=lambda c: c.circuit_id) == [
        ClosedCircuit(to_a.circuit_id, B, A, "peer disconnected"),
        ClosedCircuit(from_a.circuit_id, A, C, "peer disconnected"),
    ]
    held = relay.reservation(C)
    assert held is not None
    assert held.circuits == {unrelated.circuit_id}


# -- opening circuits --------------------------------------------------------------------


def test_a_circuit_joins_a_requester_to_a_node_with_a_reservation() -> None:
    relay = book()
    made = reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 3.0)
    assert (circuit.requester, circuit.target, circuit.last_active) == (B, A, 3.0)
    assert relay.circuit(circuit.circuit_id) is circuit
    assert made.circuits == {circuit.circuit_id}
    assert relay.circuits == 1


def test_a_circuit_to_a_node_without_a_reservation_is_refused() -> None:
    relay = book()
    reserved(relay, B, 0.0)  # the requester's own reservation does not count
    assert "no reservation" in refused(relay.open_circuit(B, A, 0.0))
    assert relay.circuits == 0


def test_a_circuit_to_an_expired_reservation_is_refused() -> None:
    relay = book(duration_s=10)
    reserved(relay, A, 0.0)
    assert "no reservation" in refused(relay.open_circuit(B, A, 10.0))


def test_a_node_cannot_open_a_circuit_to_itself() -> None:
    relay = book()
    reserved(relay, A, 0.0)
    assert "to itself" in refused(relay.open_circuit(A, A, 0.0))
    assert relay.circuits == 0


def test_circuits_per_reservation_are_capped() -> None:
    relay = book(max_circuits=2, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    reserved(relay, D, 0.0)
    first = opened(relay, B, A, 0.0)
    opened(relay, C, A, 0.0)
    assert "maximum of 2 circuits" in refused(relay.open_circuit(E, A, 0.0))
    opened(relay, E, D, 0.0)  # the cap is per reservation
    relay.close_circuit(first.circuit_id, "done")
    assert relay.closed() == [ClosedCircuit(first.circuit_id, B, A, "done")]
    opened(relay, E, A, 0.0)  # a closed circuit frees its place


def test_a_circuit_is_refused_once_the_byte_budget_is_used() -> None:
    relay = book(max_bytes=100, rate_bytes_per_s=1000, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    assert relay.forward(circuit.circuit_id, B, 100, 0.0) == Forward(A)  # exactly the budget
    assert relay.circuit(circuit.circuit_id) is circuit  # reaching it is not passing it
    assert "byte limit" in refused(relay.open_circuit(C, A, 0.0))
    reserved(relay, A, 1.0)  # renewing early: still no budget
    assert "byte limit" in refused(relay.open_circuit(C, A, 1.0))
    reserved(relay, A, relay.limits.duration_s)  # a whole term later: a new budget
    opened(relay, C, A, relay.limits.duration_s)


def test_close_circuit_of_an_unknown_circuit_is_harmless() -> None:
    relay = book()
    relay.close_circuit(12345, "whatever")
    assert relay.closed() == []


def test_circuit_ids_are_unique() -> None:
    relay = book(max_reservations=50, max_circuits=8, circuit_idle_s=1e6)
    ids: list[int] = []
    for n in range(40):
        target = f"{n:064x}"
        reserved(relay, target, 0.0)
        for m in range(5):
            ids.append(opened(relay, f"r{m}", target, 0.0).circuit_id)
        if n % 3 == 0:  # closing some must not make ids come back
            relay.close_circuit(ids[-1], "done")
    assert len(set(ids)) == len(ids)
    assert all(1 <= i <= 2**31 - 1 for i in ids)


def test_circuit_ids_start_where_asked_and_wrap_within_31_bits() -> None:
    # The frame header's top bit says which way a frame goes (net/circuits.py).
    relay = RelayBook(RelayLimits(circuit_idle_s=1e6), first_circuit_id=2**31 - 1)
    reserved(relay, A, 0.0)
    assert opened(relay, B, A, 0.0).circuit_id == 2**31 - 1
    assert opened(relay, C, A, 0.0).circuit_id == 1
    zero = RelayBook(RelayLimits(), first_circuit_id=0)
    reserved(zero, A, 0.0)
    assert opened(zero, B, A, 0.0).circuit_id == 1  # never 0


def test_circuit_ids_stay_unique_across_the_wrap() -> None:
    relay = book(circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    long_lived = opened(relay, B, A, 0.0)
    assert long_lived.circuit_id == 1
    relay._ids = itertools.count(2**31 - 1)  # stands for two billion circuits since
    opened(relay, C, A, 0.0)
    wrapped = opened(relay, D, A, 0.0)
    assert wrapped.circuit_id != long_lived.circuit_id
    assert relay.circuit(long_lived.circuit_id) is long_lived


# -- forwarding --------------------------------------------------------------------------


def test_a_frame_goes_to_the_other_end_in_both_directions() -> None:
    relay = book()
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    assert relay.forward(circuit.circuit_id, B, 10, 1.0) == Forward(A)
    assert relay.forward(circuit.circuit_id, A, 20, 2.0) == Forward(B)
    assert circuit.last_active == 2.0
    assert relay.reservation(A).bytes_used == 30  # type: ignore[union-attr]
    assert relay.forwarded_bytes == 30
    assert relay.dropped_frames == 0


def test_a_frame_from_a_third_node_or_on_an_unknown_circuit_is_dropped() -> None:
    relay = book()
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    assert relay.forward(circuit.circuit_id, C, 10, 1.0) is None
    assert relay.dropped_frames == 1
    assert relay.forward(circuit.circuit_id + 1, B, 10, 1.0) is None
    assert relay.dropped_frames == 2
    assert circuit.last_active == 0.0  # a dropped frame is not traffic
    assert relay.forwarded_bytes == 0
    assert relay.reservation(A).bytes_used == 0  # type: ignore[union-attr]


def test_a_frame_on_a_closed_circuit_is_dropped() -> None:
    relay = book()
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    relay.close_circuit(circuit.circuit_id, "done")
    assert relay.forward(circuit.circuit_id, B, 10, 1.0) is None
    assert relay.dropped_frames == 1


# -- rate --------------------------------------------------------------------------------


def test_a_burst_beyond_one_seconds_worth_is_dropped_then_forwarding_resumes() -> None:
    relay = book(rate_bytes_per_s=1000, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    circuit = opened(relay, B, A, 0.0)
    cid = circuit.circuit_id
    for _ in range(10):  # the bucket starts full: one second's worth goes at once
        assert relay.forward(cid, B, 100, 0.0) == Forward(A)
    assert relay.forward(cid, B, 1, 0.0) is None
    assert relay.forward(cid, A, 1, 0.0) is None  # the bucket is the reservation's, both ways
    assert relay.dropped_frames == 2
    assert relay.forward(cid, B, 100, 0.05) is None  # 50 bytes refilled: not enough
    assert relay.forward(cid, B, 100, 0.1) == Forward(A)  # 100 now
    assert relay.forward(cid, B, 1, 0.1) is None
    assert relay.forwarded_bytes == 1100
    assert relay.reservation(A).bytes_used == 1100  # type: ignore[union-attr]


def test_the_bucket_holds_at_most_one_seconds_worth() -> None:
    relay = book(rate_bytes_per_s=1000, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    cid = opened(relay, B, A, 0.0).circuit_id
    assert relay.forward(cid, B, 1000, 0.0) == Forward(A)
    # a long quiet spell refills the bucket, but only to one second's worth
    assert relay.forward(cid, B, 1000, 100.0) == Forward(A)
    assert relay.forward(cid, B, 1, 100.0) is None


def test_the_bucket_is_shared_by_every_circuit_of_a_reservation() -> None:
    relay = book(rate_bytes_per_s=1000, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    reserved(relay, C, 0.0)
    one = opened(relay, B, A, 0.0).circuit_id
    two = opened(relay, D, A, 0.0).circuit_id
    other = opened(relay, B, C, 0.0).circuit_id
    assert relay.forward(one, B, 600, 0.0) == Forward(A)
    assert relay.forward(two, D, 600, 0.0) is None
    assert relay.forward(other, B, 1000, 0.0) == Forward(C)  # another reservation's bucket


def test_a_frame_larger_than_one_seconds_worth_never_passes() -> None:
    relay = book(rate_bytes_per_s=1000, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    cid = opened(relay, B, A, 0.0).circuit_id
    assert relay.forward(cid, B, 1001, 100.0) is None
    assert relay.circuit(cid) is not None  # dropped, not closed


def test_a_renewal_does_not_discard_the_refill_accrued_before_it() -> None:
    relay = book(rate_bytes_per_s=1000, duration_s=600, circuit_idle_s=1e6)
    reserved(relay, A, 0.0)
    cid = opened(relay, B, A, 0.0).circuit_id
    assert relay.forward(cid, B, 1000, 0.0) == Forward(A)  # the bucket is empty at 0
    reserved(relay, A, 5.0)  # five quiet seconds later the node renews
    assert relay.forward(cid, B, 1000, 5.0) == Forward(A)  # the bucket refilled meanwhile


# -- bytes -------------------------------------------------------------------------------


def test_passing_the_byte_limit_closes_all_the_targets_circuits() -> None:
    relay = book(max_bytes=1000, rate_bytes_per_s=10_000, circuit_idle_s=1e6)
    made = reserved(relay, A, 0.0)
    reserved(relay, C, 0.0)
    first = opened(relay, B, A, 0.0)
    second = opened(relay, D, A, 0.0)
    other = opened(relay, B, C, 0.0)
    assert relay.forward(first.circuit_id, B, 600, 0.0) == Forward(A)
    assert relay.forward(second.circuit_id, A, 300, 0.0) == Forward(D)
    assert relay.forward(second.circuit_id, D, 101, 0.0) is None  # 1001 > 1000
    assert relay.dropped_frames == 1
    assert relay.forwarded_bytes == 900
    assert made.bytes_used == 1000
    assert made.circuits == set()
    assert relay.circuit(first.circuit_id) is None
    assert relay.circuit(second.circuit_id) is None
    assert relay.circuit(other.circuit_id) is other  # another reservation is untouched
    assert sorted(relay.closed(), key=lambda c: c.circuit_id) == [
        ClosedCircuit(first.circuit_id, B, A, "byte limit reached"),
        ClosedCircuit(second.circuit_id, D, A, "byte limit reached"),
    ]
    assert relay.reservation(A) is made  # the reservation lives on, its circuits do not
    assert "byte limit" in refused(relay.open_circuit(B, A, 1.0))


# -- idle circuits and deadlines ---------------------------------------------------------


def test_an_idle_circuit_closes_after_circuit_idle_s() -> None:
    relay = book(circuit_idle_s=30, duration_s=600)
    made = reserved(relay, A, 0.0)
    quiet = opened(relay, B, A, 0.0)
    busy = opened(relay, C, A, 0.0)
    assert relay.forward(busy.circuit_id, C, 10, 20.0) == Forward(A)
    relay.expire(29.999)
    assert relay.circuits == 2
    relay.expire(30.0)
    assert relay.circuit(quiet.circuit_id) is None
    assert relay.circuit(busy.circuit_id) is busy  # traffic at 20 keeps it until 50
    assert made.circuits == {busy.circuit_id}
    assert relay.closed() == [ClosedCircuit(quiet.circuit_id, B, A, "no traffic for 30 s")]
    relay.expire(50.0)
    assert relay.closed() == [ClosedCircuit(busy.circuit_id, C, A, "no traffic for 30 s")]
    assert relay.reservation(A) is made  # an idle circuit does not end the reservation


def test_next_deadline_is_the_earliest_expiry_or_idle_timeout() -> None:
    relay = book(duration_s=100, circuit_idle_s=30)
    assert relay.next_deadline() is None
    reserved(relay, A, 0.0)
    assert relay.next_deadline() == 100.0
    circuit = opened(relay, B, A, 10.0)
    assert relay.next_deadline() == 40.0
    assert relay.forward(circuit.circuit_id, B, 1, 25.0) == Forward(A)
    assert relay.next_deadline() == 55.0
    reserved(relay, C, 0.0)
    relay.reserve(A, 90.0)  # renews A to 190; C's term ends at 100; the circuit idled at 55
    assert relay.circuit(circuit.circuit_id) is None
    assert relay.next_deadline() == 100.0
    relay.expire(100.0)
    assert relay.next_deadline() == 190.0
    relay.expire(190.0)
    assert relay.next_deadline() is None
    assert relay.reservations == 0


# -- property ----------------------------------------------------------------------------

RATE = 1000
MAX_BYTES = 5000

_frame = st.tuples(
    st.integers(min_value=0, max_value=16).map(lambda k: k / 8),  # exact binary fractions
    st.booleans(),  # which end sends
    st.integers(min_value=0, max_value=1500),
)
_op = st.one_of(_frame, st.just("renew"), st.just("reopen"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=80))
def test_forwarded_bytes_never_exceed_the_byte_or_rate_limit(ops: list[object]) -> None:
    relay = book(max_bytes=MAX_BYTES, rate_bytes_per_s=RATE, duration_s=1e9, circuit_idle_s=1e9)
    made = reserved(relay, A, 0.0)
    circuit: Circuit | Refused = opened(relay, B, A, 0.0)
    now = 0.0
    total = 0  # since the reservation was made: renewals do not refill the bucket
    term = 0  # since the reservation was made or last renewed
    for op in ops:
        if op == "renew":
            assert reserved(relay, A, now) is made
            term = 0
            continue
        if op == "reopen":
            if not isinstance(circuit, Circuit) or relay.circuit(circuit.circuit_id) is None:
                circuit = relay.open_circuit(B, A, now)
            continue
        assert isinstance(op, tuple)
        dt, from_requester, size = op
        now += dt
        if not isinstance(circuit, Circuit):
            continue
        sender = B if from_requester else A
        dropped = relay.dropped_frames
        out = relay.forward(circuit.circuit_id, sender, size, now)
        if out is None:
            assert relay.dropped_frames == dropped + 1
        else:
            assert out == Forward(A if from_requester else B)
            total += size
            term += size
        assert term <= MAX_BYTES
        assert made.bytes_used <= MAX_BYTES
        assert total <= RATE * now + RATE
        assert relay.forwarded_bytes == total


def test_cooldowns_hold_until_their_time_and_forget_only_what_is_over() -> None:
    held = Cooldowns(max_keys=2)
    assert not held.active(A, 0.0)
    held.hold(A, 10.0, 0.0)
    assert held.active(A, 9.9)
    assert not held.active(A, 10.0)  # over at the instant given
    held.hold(B, 5.0, 0.0)
    held.hold(C, 20.0, 6.0)  # past max_keys: B's hold is over and forgotten, A's is kept
    assert held.active(A, 6.0)
    assert held.active(C, 6.0)
    assert not held.active(B, 0.0)
