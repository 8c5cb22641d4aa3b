"""k-buckets: LRU order, ping-before-evict, replacement cache, diversity."""

from __future__ import annotations

import pytest

from plasm_grpc.core.dht import (
    Contact,
    Key,
    PingRequest,
    Rejected,
    RejectReason,
    RoutingTable,
    bucket_index,
    distance,
)
from plasm_grpc.core.errors import InvalidIdError

OWN = "0" * 64


def node_in_bucket(index: int, n: int) -> str:
    """The id at distance 2**index + n from OWN (so it lands in bucket `index`)."""
    assert n < 2**index
    return f"{(1 << index) | n:064x}"


def contact(node_id: str, n: int) -> Contact:
    """A contact with a distinct /24 per n, so diversity limits do not apply."""
    return Contact(node_id=node_id, host=f"10.{n // 256}.{n % 256}.1", port=4000)


def fill(table: RoutingTable, index: int, count: int) -> list[Contact]:
    made = [contact(node_in_bucket(index, i), i) for i in range(count)]
    for c in made:
        assert table.observe(c, now=1.0) is None
    return made


def test_contacts_land_in_their_bucket_in_lru_order() -> None:
    table = RoutingTable(OWN, k=4, now=0.0)
    made = fill(table, 10, 3)
    assert table.bucket(10) == made
    assert bucket_index(Key.from_hex(OWN), made[0].key) == 10
    assert table.observe(made[0], now=2.0) is None
    assert table.bucket(10) == [made[1], made[2], made[0]]
    assert len(table) == 3
    assert made[1].node_id in table


def test_self_is_rejected() -> None:
    table = RoutingTable(OWN, now=0.0)
    me = Contact(node_id=OWN, host="10.0.0.1", port=1)
    assert table.observe(me, now=0.0) == Rejected(contact=me, reason=RejectReason.SELF)
    assert len(table) == 0


def test_full_bucket_pings_least_recently_seen_and_keeps_it_if_alive() -> None:
    table = RoutingTable(OWN, k=3, now=0.0)
    made = fill(table, 20, 3)
    newcomer = contact(node_in_bucket(20, 7), 7)
    request = table.observe(newcomer, now=2.0)
    assert request == PingRequest(contact=made[0], bucket=20)
    # While the ping is out, further newcomers only queue up.
    other = contact(node_in_bucket(20, 8), 8)
    assert table.observe(other, now=2.5) is None
    assert table.replacements(20) == [newcomer, other]
    table.ping_result(made[0].node_id, alive=True, now=3.0)
    assert table.bucket(20) == [made[1], made[2], made[0]]
    assert newcomer.node_id not in table


def test_dead_least_recently_seen_is_replaced_by_freshest_cached() -> None:
    table = RoutingTable(OWN, k=3, now=0.0)
    made = fill(table, 20, 3)
    newcomer = contact(node_in_bucket(20, 7), 7)
    fresher = contact(node_in_bucket(20, 8), 8)
    request = table.observe(newcomer, now=2.0)
    assert isinstance(request, PingRequest)
    table.observe(fresher, now=2.5)
    table.ping_result(request.contact.node_id, alive=False, now=3.0)
    assert table.bucket(20) == [made[1], made[2], fresher]
    assert table.replacements(20) == [newcomer]
    # The next newcomer triggers a fresh ping of the new least-recently seen.
    again = table.observe(contact(node_in_bucket(20, 9), 9), now=4.0)
    assert again == PingRequest(contact=made[1], bucket=20)


def test_remove_promotes_a_replacement() -> None:
    table = RoutingTable(OWN, k=2, now=0.0)
    made = fill(table, 30, 2)
    spare = contact(node_in_bucket(30, 5), 5)
    table.observe(spare, now=1.0)
    table.remove(made[1].node_id)
    assert table.bucket(30) == [made[0], spare]
    table.remove("f" * 64)  # unknown: no effect
    assert len(table) == 2


def test_ip_and_subnet_limits_reject_with_reason() -> None:
    table = RoutingTable(OWN, now=0.0)
    ids = [node_in_bucket(40, i) for i in range(8)]
    same_ip = [Contact(node_id=ids[i], host="192.0.2.7", port=4000 + i) for i in range(3)]
    assert table.observe(same_ip[0], now=0.0) is None
    assert table.observe(same_ip[1], now=0.0) is None
    assert table.observe(same_ip[2], now=0.0) == Rejected(
        contact=same_ip[2], reason=RejectReason.IP_LIMIT
    )
    subnet = [Contact(node_id=ids[3 + i], host=f"192.0.2.{20 + i}", port=4000) for i in range(3)]
    assert table.observe(subnet[0], now=0.0) is None
    assert table.observe(subnet[1], now=0.0) is None
    assert table.observe(subnet[2], now=0.0) == Rejected(
        contact=subnet[2], reason=RejectReason.SUBNET_LIMIT
    )
    # Re-observing a contact already counted is not a violation.
    assert table.observe(same_ip[0], now=1.0) is None
    # Limits are per bucket: the same address is fine in another bucket.
    elsewhere = Contact(node_id=node_in_bucket(41, 0), host="192.0.2.7", port=4100)
    assert table.observe(elsewhere, now=0.0) is None


def test_ipv6_subnet_is_a_48() -> None:
    table = RoutingTable(OWN, now=0.0)
    hosts = ["2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:1:3::1", "2001:db8:1:4::1"]
    for i, host in enumerate(hosts):
        assert table.observe(Contact(node_id=node_in_bucket(50, i), host=host, port=1), 0.0) is None
    fifth = Contact(node_id=node_in_bucket(50, 9), host="2001:db8:1:5::1", port=1)
    assert table.observe(fifth, 0.0) == Rejected(contact=fifth, reason=RejectReason.SUBNET_LIMIT)
    other = Contact(node_id=node_in_bucket(50, 10), host="2001:db8:2::1", port=1)
    assert table.observe(other, 0.0) is None


def test_closest_is_brute_force_order() -> None:
    table = RoutingTable(OWN, now=0.0)
    made = [contact(f"{(i * 7919 + 1) << 200:064x}", i) for i in range(1, 40)]
    accepted = [c for c in made if table.observe(c, now=0.0) is None]
    target = Key.from_hex(f"{12345 << 200:064x}")
    want = sorted(accepted, key=lambda c: distance(c.key, target))[:20]
    assert table.closest(target, 20) == want


def test_stale_buckets_and_refresh_keys() -> None:
    table = RoutingTable(OWN, now=0.0)
    fill(table, 100, 1)
    assert table.stale_buckets(now=10.0, refresh_interval=3600.0) == []
    stale = table.stale_buckets(now=3601.0, refresh_interval=3600.0)
    assert stale == list(range(100, 256))  # nothing below the nearest non-empty bucket
    table.touch(200, now=3601.0)
    table.touch_key(table.random_key_in_bucket(150, b"\xff" * 32), now=3601.0)
    stale = table.stale_buckets(now=3601.0, refresh_interval=3600.0)
    assert 200 not in stale
    assert 150 not in stale
    assert 100 in stale
    own = Key.from_hex(OWN)
    for index in (0, 1, 77, 255):
        key = table.random_key_in_bucket(index, bytes(range(32)))
        assert bucket_index(own, key) == index


def test_contact_validation() -> None:
    with pytest.raises(InvalidIdError):
        Contact(node_id="xyz", host="h", port=1)
    with pytest.raises(InvalidIdError):
        Contact(node_id=OWN, host="", port=1)
    with pytest.raises(InvalidIdError):
        Contact(node_id=OWN, host="h", port=0)
    with pytest.raises(InvalidIdError):
        Contact(node_id=OWN, host="h", port=70000)
