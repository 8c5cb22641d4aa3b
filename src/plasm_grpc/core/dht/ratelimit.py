"""Per-peer token buckets for inbound DHT RPCs.

Each peer may make `burst` requests at once and `rate` per second after
that; a request over the limit is refused, not queued, so one peer's flood
costs it its own answers and nobody else's. The table of buckets is bounded:
the least recently active peers are forgotten first (a forgotten peer starts
again with a full bucket, which is no more than a new peer gets).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    refused: int = 0


class RateLimiter:
    def __init__(self, *, rate: float, burst: int, max_peers: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate, burst and max_peers must be positive")
        self._rate = rate
        self._burst = float(burst)
        self._max_peers = max_peers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, peer: str, now: float) -> bool:
        """Take one token from `peer`'s bucket; False when it is empty."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets[peer] = bucket
            while len(self._buckets) > self._max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        bucket.refused += 1
        return False

    def refused(self, peer: str) -> int:
        """Requests refused to `peer` while it was remembered."""
        bucket = self._buckets.get(peer)
        return 0 if bucket is None else bucket.refused

    def __len__(self) -> int:
        return len(self._buckets)
