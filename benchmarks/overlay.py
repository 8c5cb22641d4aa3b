#!/usr/bin/env python3
"""Plasm overlay benchmark: Noise-authenticated RPCs over QUIC against bare aioquic.

One run measures, on loopback, with the serving side in its own process (so
both ends have a core, as two nodes would):

1. the floor, bare aioquic with the overlay's ALPN and certificate type:
   a) a round trip: 64 bytes written on an open stream and echoed back;
   b) a cold QUIC handshake (new socket, new connection, until 1-RTT keys);
   c) for context, bulk: 20 MB written on one stream to a sink;
2. Plasm (`plasm_grpc.net.OverlayEndpoint`):
   a) a warm RPC round trip (64-byte request and response) p50 and p99;
   b) a cold connect: QUIC handshake + Noise XX + identity proof check, p50;
   c) bulk: one 20 MB request (chunked, encrypted) answered with 8 bytes;

then prints the figures, the ratios against the targets and PASS/MISS:

* warm RPC p50 <= 1.5 x the raw round trip p50;
* cold connect p50 <= the raw handshake p50 + 1.5 ms;
* bulk >= 20 MB/s.

Misses are reported, never asserted: the script exits 0 whenever it could
measure, 1 only when it could not (the serving process did not start).

Usage:
    python benchmarks/overlay.py            # full run (about a minute)
    python benchmarks/overlay.py --quick    # smoke run (about 15 s)
    python benchmarks/overlay.py --json     # also print one JSON object (last line)

Internal mode (started by the script itself): overlay.py _serve
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any, Final

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from plasm_grpc.core.keys import NodeKey
from plasm_grpc.logs import EventLog
from plasm_grpc.net import ALPN, OverlayEndpoint, OverlaySettings
from plasm_grpc.net.certs import new_certificate

HOST: Final = "127.0.0.1"
ECHO: Final = "bench.v1.Echo/Call"
SINK: Final = "bench.v1.Sink/Call"
SMALL: Final = b"x" * 64
MB: Final = 1_000_000
BULK_BYTES: Final = 20 * MB
SETTINGS: Final = OverlaySettings()
TARGET_WARM_RATIO: Final = 1.5
TARGET_COLD_EXTRA_MS: Final = 1.5
TARGET_BULK_MBPS: Final = 20.0


# -- the serving process ------------------------------------------------------------------------


async def _raw_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Mode byte b"E": echo what arrives. b"S": count to end of stream, answer the count."""
    mode = await reader.readexactly(1)
    if mode == b"E":
        while data := await reader.read(65536):
            writer.write(data)
    else:
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        writer.write(total.to_bytes(8, "big"))
        writer.write_eof()


async def serve_forever() -> None:
    certificate = new_certificate()
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        max_datagram_size=SETTINGS.max_datagram_size,
        max_data=8 * 1024 * 1024,
        max_stream_data=4 * 1024 * 1024,
    )
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(_raw_stream(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    raw: QuicServer = await serve(HOST, 0, configuration=configuration, stream_handler=on_stream)
    assert raw._transport is not None
    raw_port = raw._transport.get_extra_info("sockname")[1]

    endpoint = OverlayEndpoint(NodeKey.from_seed(os.urandom(32)), events=EventLog(io.StringIO()))

    async def echo(peer: str, payload: bytes) -> bytes:
        return payload

    async def sink(peer: str, payload: bytes) -> bytes:
        return len(payload).to_bytes(8, "big")

    endpoint.handle(ECHO, echo)
    endpoint.handle(SINK, sink)
    await endpoint.start()
    print(
        json.dumps({"raw_port": raw_port, "port": endpoint.port, "node_id": endpoint.node_id}),
        flush=True,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)  # EOF: the parent is done
    await stop.wait()
    await endpoint.close()
    raw.close()


# -- the measuring side -------------------------------------------------------------------------


def _client_configuration() -> QuicConfiguration:
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        verify_mode=ssl.CERT_NONE,
        server_name="plasm-overlay",
        max_datagram_size=SETTINGS.max_datagram_size,
        max_data=8 * 1024 * 1024,
        max_stream_data=4 * 1024 * 1024,
    )


async def _raw_connect(port: int) -> tuple[asyncio.DatagramTransport, QuicConnectionProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(QuicConnection(configuration=_client_configuration())),
        local_addr=(HOST, 0),
    )
    assert isinstance(protocol, QuicConnectionProtocol)
    protocol.connect((HOST, port))
    await asyncio.wait_for(protocol.wait_connected(), 10)
    return transport, protocol


async def _raw_close(
    transport: asyncio.DatagramTransport, protocol: QuicConnectionProtocol
) -> None:
    protocol.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(protocol.wait_closed(), 5)
    transport.close()


async def raw_round_trips(port: int, count: int) -> list[float]:
    transport, protocol = await _raw_connect(port)
    reader, writer = await protocol.create_stream()
    writer.write(b"E")
    samples = []
    for _ in range(count + count // 10):
        start = time.perf_counter()
        writer.write(SMALL)
        await asyncio.wait_for(reader.readexactly(len(SMALL)), 10)
        samples.append(time.perf_counter() - start)
    await _raw_close(transport, protocol)
    return samples[count // 10 :]  # the first tenth warms up


async def raw_handshakes(port: int, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        transport, protocol = await _raw_connect(port)
        samples.append(time.perf_counter() - start)
        await _raw_close(transport, protocol)
    return samples


async def raw_bulk(port: int, size: int) -> float:
    transport, protocol = await _raw_connect(port)
    reader, writer = await protocol.create_stream()
    data = os.urandom(size)
    start = time.perf_counter()
    writer.write(b"S" + data)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.readexactly(8), 120)
    elapsed = time.perf_counter() - start
    assert int.from_bytes(answer, "big") == size
    await _raw_close(transport, protocol)
    return size / elapsed / MB


async def _client_endpoint() -> OverlayEndpoint:
    endpoint = OverlayEndpoint(NodeKey.from_seed(os.urandom(32)), events=EventLog(io.StringIO()))
    await endpoint.start()
    return endpoint


async def plasm_round_trips(server: dict[str, Any], count: int) -> list[float]:
    endpoint = await _client_endpoint()
    connection = await endpoint.connect(HOST, server["port"], server["node_id"])
    samples = []
    for _ in range(count + count // 10):
        start = time.perf_counter()
        await connection.request(ECHO, SMALL, timeout=10)
        samples.append(time.perf_counter() - start)
    await endpoint.close()
    return samples[count // 10 :]


async def plasm_connects(server: dict[str, Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        endpoint = await _client_endpoint()  # a fresh node: no connection to reuse
        start = time.perf_counter()
        await endpoint.connect(HOST, server["port"], server["node_id"])
        samples.append(time.perf_counter() - start)
        await endpoint.close()
    return samples


async def plasm_bulk(server: dict[str, Any], size: int) -> float:
    endpoint = await _client_endpoint()
    connection = await endpoint.connect(HOST, server["port"], server["node_id"])
    data = os.urandom(size)
    start = time.perf_counter()
    answer = await connection.request(SINK, data, timeout=120)
    elapsed = time.perf_counter() - start
    assert int.from_bytes(answer, "big") == size
    await endpoint.close()
    return size / elapsed / MB


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(server: dict[str, Any], quick: bool) -> dict[str, float]:
    rtts = 300 if quick else 3000
    handshakes = 25 if quick else 150
    bulk_runs = 1 if quick else 3

    async def best(run: Callable[[], Awaitable[float]]) -> float:
        return max([await run() for _ in range(bulk_runs)])

    raw_rt = await raw_round_trips(server["raw_port"], rtts)
    raw_hs = await raw_handshakes(server["raw_port"], handshakes)
    plasm_rt = await plasm_round_trips(server, rtts)
    plasm_hs = await plasm_connects(server, handshakes)
    raw_mbps = await best(lambda: raw_bulk(server["raw_port"], BULK_BYTES))
    plasm_mbps = await best(lambda: plasm_bulk(server, BULK_BYTES))
    ms = 1000.0
    return {
        "raw_round_trip_p50_ms": statistics.median(raw_rt) * ms,
        "raw_round_trip_p99_ms": percentile(raw_rt, 0.99) * ms,
        "raw_handshake_p50_ms": statistics.median(raw_hs) * ms,
        "raw_bulk_mb_per_s": raw_mbps,
        "plasm_rpc_p50_ms": statistics.median(plasm_rt) * ms,
        "plasm_rpc_p99_ms": percentile(plasm_rt, 0.99) * ms,
        "plasm_connect_p50_ms": statistics.median(plasm_hs) * ms,
        "plasm_connect_p99_ms": percentile(plasm_hs, 0.99) * ms,
        "plasm_bulk_mb_per_s": plasm_mbps,
        "round_trips": float(rtts),
        "handshakes": float(handshakes),
    }


def report(figures: dict[str, float], quick: bool) -> list[tuple[str, bool]]:
    f = figures
    print(f"\nPlasm overlay benchmark ({'quick' if quick else 'full'} run)")
    print(
        f"python {platform.python_version()}, aioquic {version('aioquic')}, "
        f"{os.cpu_count()} CPUs, loopback, server in its own process, "
        f"datagrams of {SETTINGS.max_datagram_size} bytes\n"
    )
    rows = [
        ("raw aioquic round trip (64 B echo)", f"p50 {f['raw_round_trip_p50_ms']:.3f} ms",
         f"p99 {f['raw_round_trip_p99_ms']:.3f} ms"),
        ("raw aioquic handshake", f"p50 {f['raw_handshake_p50_ms']:.3f} ms", ""),
        ("raw aioquic bulk (context)", f"{f['raw_bulk_mb_per_s']:.1f} MB/s", ""),
        ("Plasm warm RPC (64 B)", f"p50 {f['plasm_rpc_p50_ms']:.3f} ms",
         f"p99 {f['plasm_rpc_p99_ms']:.3f} ms"),
        ("Plasm cold connect + Noise", f"p50 {f['plasm_connect_p50_ms']:.3f} ms",
         f"p99 {f['plasm_connect_p99_ms']:.3f} ms"),
        ("Plasm bulk (20 MB request)", f"{f['plasm_bulk_mb_per_s']:.1f} MB/s", ""),
    ]  # fmt: skip
    for name, a, b in rows:
        print(f"  {name:<38} {a:<18} {b}")

    warm_ratio = f["plasm_rpc_p50_ms"] / f["raw_round_trip_p50_ms"]
    cold_extra = f["plasm_connect_p50_ms"] - f["raw_handshake_p50_ms"]
    checks = [
        (
            f"warm RPC p50 / raw round trip p50 = {warm_ratio:.2f} (target <= {TARGET_WARM_RATIO})",
            warm_ratio <= TARGET_WARM_RATIO,
        ),
        (
            f"cold connect p50 - raw handshake p50 = {cold_extra:+.3f} ms "
            f"(target <= +{TARGET_COLD_EXTRA_MS} ms)",
            cold_extra <= TARGET_COLD_EXTRA_MS,
        ),
        (
            f"bulk = {f['plasm_bulk_mb_per_s']:.1f} MB/s (target >= {TARGET_BULK_MBPS} MB/s)",
            f["plasm_bulk_mb_per_s"] >= TARGET_BULK_MBPS,
        ),
    ]
    print()
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    return checks


def main() -> int:
    if sys.argv[1:2] == ["_serve"]:
        asyncio.run(serve_forever())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about 15 s")
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, __file__, "_serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            print("the serving process did not start", file=sys.stderr)
            return 1
        info = json.loads(line)
        figures = asyncio.run(measure(info, args.quick))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    checks = report(figures, args.quick)
    if args.json:
        print(json.dumps({**figures, "passed": [ok for _, ok in checks]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
