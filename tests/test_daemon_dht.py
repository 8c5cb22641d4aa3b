"""Daemon-side DHT wiring: addresses, capabilities, ListPeers, a failed start."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from plasm.v1 import service_pb2

from plasm_grpc.api.facts import local_capabilities, total_memory
from plasm_grpc.api.service import DhtPeer, NodeFacts, PlasmServicer
from plasm_grpc.core.address import host_port
from plasm_grpc.core.dht.routing import Contact
from plasm_grpc.core.limits import ResourceLimits
from plasm_grpc.daemon.config import Config, GrpcConfig, JobsConfig, OverlayConfig
from plasm_grpc.daemon.node import start_node
from plasm_grpc.daemon.peering import advertised_addresses
from plasm_grpc.logs import EventLog
from plasm_grpc.net import DhtService, OverlayEndpoint

ID_A = "a" * 64
ID_B = "b" * 64


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
    assert advertised_addresses(overlay) == expected


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 7946, "127.0.0.1:7946"),
        ("::1", 7946, "[::1]:7946"),
        ("fe80::1", 1, "[fe80::1]:1"),
    ],
)
def test_addresses_bracket_ipv6_hosts(host: str, port: int, expected: str) -> None:
    assert host_port(host, port) == expected


def test_list_peers_brackets_an_ipv6_contact() -> None:
    peers = [
        DhtPeer(contact=Contact(node_id=ID_A, host="::1", port=7946), record=None, connected=True),
        DhtPeer(
            contact=Contact(node_id=ID_B, host="10.0.0.2", port=1), record=None, connected=False
        ),
    ]
    dht = cast(Any, SimpleNamespace(known_peers=lambda: peers))
    facts = NodeFacts(grpc_addresses=(), started_at_ns=0, dht=dht)
    servicer = PlasmServicer(cast(Any, None), facts, EventLog(io.StringIO()))
    response = asyncio.run(servicer.ListPeers(service_pb2.ListPeersRequest(), cast(Any, None)))
    assert [p.address for p in response.peers] == ["[::1]:7946", "10.0.0.2:1"]


def test_capabilities_are_computed_once_for_node_info_and_the_peer_record() -> None:
    runtime = SimpleNamespace(name="wasmtime", version="1.0", wasi_version="preview1")
    executor = cast(
        Any,
        SimpleNamespace(
            sandbox=SimpleNamespace(engine=SimpleNamespace(runtime=runtime)),
            max_limits=ResourceLimits(),
            free_slots=3,
            slots=4,
        ),
    )
    caps = local_capabilities(executor)
    assert (caps.free_job_slots, caps.total_job_slots) == (3, 4)
    assert caps.memory_bytes == total_memory() >= 0
    assert caps.runtime_version == "1.0"
    assert caps.max_limits == ResourceLimits()


def test_a_failed_start_closes_the_dht_and_the_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []

    def spy(cls: Any, what: str) -> None:
        real = cls.close

        async def close(self: Any) -> None:
            closed.append(what)
            await real(self)

        monkeypatch.setattr(cls, "close", close)

    spy(DhtService, "dht")
    spy(OverlayEndpoint, "overlay")
    real_server = grpc.aio.server

    def server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        made = real_server(*args, **kwargs)

        async def start() -> None:
            raise RuntimeError("the gRPC server failed to start")

        made.start = start  # type: ignore[method-assign]
        return made

    monkeypatch.setattr(grpc.aio, "server", server)
    config = Config(
        data_dir=tmp_path,
        grpc=GrpcConfig(listen="127.0.0.1:0"),
        overlay=OverlayConfig(listen="127.0.0.1:0"),
        jobs=JobsConfig(slots=1),
    )
    log = io.StringIO()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="failed to start"):
            await start_node(config, EventLog(log))

    asyncio.run(main())
    assert closed == ["dht", "overlay"]
    assert "startup_cleanup_failed" not in log.getvalue()
