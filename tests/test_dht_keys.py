"""Properties of the XOR metric (Kademlia paper, section 2.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasm_grpc.core.dht import Key, bucket_index, closest, distance
from plasm_grpc.core.errors import InvalidIdError

keys = st.integers(min_value=0, max_value=(1 << 256) - 1).map(Key)


@given(keys, keys, keys)
def test_xor_is_a_metric(a: Key, b: Key, c: Key) -> None:
    assert distance(a, a) == 0
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(keys, keys)
def test_bucket_index_brackets_distance(a: Key, b: Key) -> None:
    if a == b:
        with pytest.raises(InvalidIdError):
            bucket_index(a, b)
        return
    i = bucket_index(a, b)
    assert 2**i <= distance(a, b) < 2 ** (i + 1)


@given(keys, st.lists(keys, max_size=40), st.integers(min_value=0, max_value=50))
def test_closest_matches_brute_force(target: Key, pool: list[Key], count: int) -> None:
    got = closest(target, pool, count)
    assert len(got) == min(count, len(set(pool)))
    ds = [distance(k, target) for k in got]
    assert ds == sorted(ds)
    rest = set(pool) - set(got)
    if got and rest:
        assert max(ds) < min(distance(k, target) for k in rest)


@given(keys)
def test_hex_and_bytes_round_trip(key: Key) -> None:
    assert Key.from_hex(key.hex) == key
    assert Key.from_bytes(key.to_bytes()) == key


@pytest.mark.parametrize("bad", ["", "0" * 63, "G" * 64, "A" * 64])
def test_bad_hex_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        Key.from_hex(bad)


def test_bad_bytes_and_range_are_rejected() -> None:
    with pytest.raises(InvalidIdError):
        Key.from_bytes(b"\x00" * 31)
    with pytest.raises(InvalidIdError):
        Key(1 << 256)
    with pytest.raises(InvalidIdError):
        Key(-1)
