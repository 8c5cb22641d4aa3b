"""The iterative lookup state machine (Kademlia paper, section 2.3), stepped by hand."""

from __future__ import annotations

import pytest

from plasm_grpc.core.dht import Contact, Key, Lookup, distance

TARGET = Key(0)


def c(n: int) -> Contact:
    """A contact at distance n from TARGET."""
    return Contact(node_id=f"{n:064x}", host=f"10.0.{n % 256}.1", port=4000)


def test_keeps_alpha_in_flight_nearest_first() -> None:
    lookup = Lookup(TARGET, [c(50), c(10), c(40), c(30), c(20)], k=3, alpha=2)
    assert lookup.next_queries(0.0) == [c(10), c(20)]
    assert lookup.next_queries(0.0) == []  # alpha already in flight
    lookup.on_response(c(10), [c(5), c(6)], 0.1)
    assert lookup.next_queries(0.1) == [c(5)]
    assert not lookup.done


def test_terminates_when_k_nearest_have_answered() -> None:
    lookup = Lookup(TARGET, [c(8), c(9), c(100)], k=2, alpha=3)
    sent = lookup.next_queries(0.0)
    assert sent == [c(8), c(9)]  # only the k nearest are worth asking
    lookup.on_response(c(8), [c(3), c(1000)], 0.1)
    assert lookup.next_queries(0.1) == [c(3)]
    lookup.on_response(c(9), [], 0.2)
    lookup.on_response(c(3), [c(8)], 0.3)
    assert lookup.done
    assert lookup.result() == [c(3), c(8)]
    assert lookup.next_queries(0.4) == []
    stats = lookup.stats()
    assert (stats.queries, stats.answered, stats.failed, stats.hops) == (3, 3, 0, 1)


def test_failures_drop_out_and_the_next_nearest_is_asked() -> None:
    lookup = Lookup(TARGET, [c(1), c(2), c(3)], k=2, alpha=1)
    assert lookup.next_queries(0.0) == [c(1)]
    lookup.on_failure(c(1), 0.5)
    assert lookup.next_queries(0.5) == [c(2)]
    lookup.on_response(c(2), [], 0.6)
    assert lookup.next_queries(0.6) == [c(3)]
    lookup.on_response(c(3), [], 0.7)
    assert lookup.done
    assert lookup.result() == [c(2), c(3)]


def test_timer_fails_slow_queries() -> None:
    lookup = Lookup(TARGET, [c(1), c(2)], k=1, alpha=1, timeout=2.0)
    assert lookup.get_timer() is None
    lookup.next_queries(1.0)
    assert lookup.get_timer() == 3.0
    lookup.on_timer(2.9)
    assert lookup.next_queries(2.9) == []
    lookup.on_timer(3.0)
    assert lookup.next_queries(3.0) == [c(2)]
    # A late answer from the timed-out contact still counts: it is alive.
    lookup.on_response(c(1), [], 3.1)
    assert lookup.done
    assert lookup.result() == [c(1)]


def test_unsolicited_and_excluded_contacts_are_ignored() -> None:
    me = c(4)
    lookup = Lookup(TARGET, [c(7), me], k=3, alpha=3, exclude=[me.node_id])
    assert lookup.next_queries(0.0) == [c(7)]
    lookup.on_response(c(99), [c(1)], 0.1)  # never asked
    lookup.on_response(c(7), [me, c(7)], 0.2)
    assert lookup.done
    assert lookup.result() == [c(7)]


def test_exhausted_lookup_is_done_with_what_answered() -> None:
    lookup = Lookup(TARGET, [c(1), c(2)], k=20, alpha=3)
    lookup.next_queries(0.0)
    lookup.on_failure(c(1), 0.1)
    lookup.on_response(c(2), [], 0.1)
    assert lookup.done
    assert lookup.result() == [c(2)]
    empty = Lookup(TARGET, [])
    assert empty.done
    assert empty.result() == []


def test_result_is_sorted_by_distance() -> None:
    seeds = [c(n) for n in (90, 17, 33, 2, 61)]
    lookup = Lookup(TARGET, seeds, k=5, alpha=5)
    for peer in lookup.next_queries(0.0):
        lookup.on_response(peer, [], 0.1)
    assert lookup.done
    ds = [distance(x.key, TARGET) for x in lookup.result()]
    assert ds == sorted(ds)


@pytest.mark.parametrize(("k", "alpha", "timeout"), [(0, 3, 1.0), (20, 0, 1.0), (20, 3, 0.0)])
def test_bad_parameters(k: int, alpha: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Lookup(TARGET, [], k=k, alpha=alpha, timeout=timeout)
