"""Daemon-side DHT wiring that needs no network."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from plasm_grpc.daemon.node import _advertised_addresses


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 7946, ["127.0.0.1:7946"]),
        ("192.0.2.7", 4000, ["192.0.2.7:4000"]),
        ("::1", 7946, ["[::1]:7946"]),
        ("0.0.0.0", 7946, []),  # a wildcard is nobody's address: peers learn the real one
        ("::", 7946, []),
    ],
)
def test_the_peer_record_advertises_the_bound_overlay_address_unless_it_is_a_wildcard(
    host: str, port: int, expected: list[str]
) -> None:
    overlay = cast(Any, SimpleNamespace(host=host, port=port))
    assert _advertised_addresses(overlay) == expected
