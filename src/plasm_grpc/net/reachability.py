"""Reachability detection over the overlay: the asyncio adapter of
core/reachability.py (docs/reachability.md).

Helper side, `plasm.v1.Reachability/DialBack`: rate-limited per requester IP;
dials back the IP the request came from (the connection's address, never one
named in the request) on the requested port, from a fresh UDP socket (a fresh
one-shot endpoint with this node's identity), so a NAT that only lets in
answers from peers its host has contacted drops it; sends
`plasm.v1.Reachability/Probe` with the nonce and reports whether it was
answered.

Requester side: `check()` runs one round against connected peers and logs
`reachability_changed` when the verdict changes; `run()` repeats it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from plasm.v1 import reachability_pb2

from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.reachability import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    DialBackLimiter,
    Reachability,
    ReachabilityCheck,
)
from plasm_grpc.logs import EventLog
from plasm_grpc.net.endpoint import OverlayEndpoint
from plasm_grpc.net.errors import OverlayError, RequestRefusedError

__all__ = ["DIAL_BACK", "PROBE", "ReachabilityService", "ReachabilitySettings"]

DIAL_BACK = "plasm.v1.Reachability/DialBack"
PROBE = "plasm.v1.Reachability/Probe"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReachabilitySettings:
    max_helpers: int = 3
    dial_timeout: float = 5.0  # the helper's dial-back, handshake and Probe
    request_timeout: float = 10.0  # the requester's DialBack call
    retry_interval: float = 2.0  # between rounds while the verdict is unknown
    interval: float = 600.0  # between rounds once known
    dialbacks_per_ip: int = 4  # per minute, helper side

    def __post_init__(self) -> None:
        if self.request_timeout <= self.dial_timeout:
            raise ValueError("request_timeout must exceed dial_timeout")


class ReachabilityService:
    """Serves DialBack and Probe on `endpoint` and checks this node's own reachability."""

    def __init__(
        self,
        endpoint: OverlayEndpoint,
        key: NodeKey,
        *,
        settings: ReachabilitySettings | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = endpoint
        self._key = key
        self._settings = settings if settings is not None else ReachabilitySettings()
        self._events = events if events is not None else endpoint.events
        self._clock = clock
        self._check = ReachabilityCheck(
            max_helpers=self._settings.max_helpers,
            round_timeout=self._settings.request_timeout + 1.0,
        )
        self._limiter = DialBackLimiter(per_window=self._settings.dialbacks_per_ip)
        self._listeners: list[Callable[[Reachability, Reachability], None]] = []
        endpoint.handle(DIAL_BACK, self._on_dial_back)
        endpoint.handle(PROBE, self._on_probe)

    @property
    def status(self) -> Reachability:
        return self._check.status

    def on_change(self, listener: Callable[[Reachability, Reachability], None]) -> None:
        """Call `listener(old, new)` after every verdict change (e.g. DHT client mode)."""
        self._listeners.append(listener)

    # -- requester -----------------------------------------------------------------------

    async def check(self) -> Reachability:
        """One round with up to max_helpers connected peers; the verdict after it."""
        helpers = [p.node_id for p in self._endpoint.connections()]
        requests = self._check.start_round(
            helpers, self._clock(), lambda: os.urandom(MIN_NONCE_BYTES * 2)
        )
        await asyncio.gather(*(self._ask(r.helper, r.nonce) for r in requests))
        self._check.handle_timer(self._clock())
        while (changed := self._check.next_event()) is not None:
            self._events.event(
                "reachability_changed",
                old=changed.old.value,
                new=changed.new.value,
                successes=changed.successes,
                failures=changed.failures,
                address=f"{self._endpoint.host}:{self._endpoint.port}",
            )
            for listener in self._listeners:
                listener(changed.old, changed.new)
        return self._check.status

    async def run(self) -> None:
        """Check now and then forever (cancel to stop): often while unknown, rarely after."""
        while True:
            status = await self.check()
            s = self._settings
            await asyncio.sleep(s.retry_interval if status is Reachability.UNKNOWN else s.interval)

    async def _ask(self, helper: str, nonce: bytes) -> None:
        connection = self._endpoint.connection_to(helper)
        request = reachability_pb2.DialBackRequest(nonce=nonce, port=self._endpoint.port)
        try:
            if connection is None:
                raise OverlayError(f"no connection to {helper}")
            raw = await connection.request(
                DIAL_BACK, request.SerializeToString(), self._settings.request_timeout
            )
            response = reachability_pb2.DialBackResponse.FromString(raw)
        except (OverlayError, ValueError) as err:
            self._events.event(
                "reachability_helper_failed", level="debug", helper=helper, error=str(err)
            )
            self._check.helper_failed(helper, self._clock())
            return
        self._check.helper_answered(helper, response.dialled, self._clock())

    async def _on_probe(self, peer: str, payload: bytes) -> bytes:
        try:
            probe = reachability_pb2.ProbeRequest.FromString(payload)
        except ValueError:
            raise RequestRefusedError("malformed Probe") from None
        if not self._check.probe_received(peer, probe.nonce):
            raise RequestRefusedError("unknown nonce")
        return reachability_pb2.ProbeResponse(known=True).SerializeToString()

    # -- helper --------------------------------------------------------------------------

    async def _on_dial_back(self, peer: str, payload: bytes) -> bytes:
        try:
            request = reachability_pb2.DialBackRequest.FromString(payload)
        except ValueError:
            raise RequestRefusedError("malformed DialBackRequest") from None
        if not MIN_NONCE_BYTES <= len(request.nonce) <= MAX_NONCE_BYTES:
            raise RequestRefusedError("the nonce must have 16..64 bytes")
        if not 1 <= request.port <= 65535:
            raise RequestRefusedError("the port must be 1..65535")
        connection = self._endpoint.connection_to(peer)
        if connection is None:
            raise RequestRefusedError("no connection to the requester")
        if connection.relayed:
            raise RequestRefusedError("a dial-back needs a direct connection")
        ip = str(connection.address[0])  # where the request came from, nothing else
        if not self._limiter.allow(ip, self._clock()):
            self._events.event("reachability_dial_back_refused", peer_node_id=peer, ip=ip)
            raise RequestRefusedError("too many dial-backs for this IP")
        error = ""
        # A fresh endpoint: a new UDP socket (new source port), so the NAT's
        # mapping for the requester's own connection does not let the probe in.
        endpoint = OverlayEndpoint(
            self._key,
            host=self._endpoint.host,
            port=0,
            settings=self._endpoint.settings,
            events=EventLog(level="warning"),
        )
        try:
            async with asyncio.timeout(self._settings.dial_timeout):
                await self._probe(endpoint, ip, request.port, peer, request.nonce)
        except (OverlayError, OSError, ValueError, TimeoutError) as err:
            error = str(err) or type(err).__name__
        finally:
            await endpoint.close()
        self._events.event(
            "reachability_dialled_back",
            level="debug",
            peer_node_id=peer,
            address=f"{ip}:{request.port}",
            dialled=not error,
            error=error,
        )
        return reachability_pb2.DialBackResponse(dialled=not error, error=error).SerializeToString()

    async def _probe(
        self, endpoint: OverlayEndpoint, ip: str, port: int, node_id: str, nonce: bytes
    ) -> None:
        await endpoint.start()
        connection = await endpoint.connect(ip, port, node_id)
        raw = await connection.request(
            PROBE,
            reachability_pb2.ProbeRequest(nonce=nonce).SerializeToString(),
            self._settings.dial_timeout,
        )
        if not reachability_pb2.ProbeResponse.FromString(raw).known:
            raise OverlayError("the probe was not recognised")
