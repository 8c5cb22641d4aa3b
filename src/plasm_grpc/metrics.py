"""Prometheus metrics: counters, gauges and histograms, and their text exposition.

No dependency and no I/O: the daemon serves `Registry.expose()` over HTTP
(daemon/metrics_http.py). Instruments that code deep in the stack updates
(jobs by outcome, remote attempts, DHT lookups) are module-level here, so an
adapter counts with one line and no wiring; gauges that read live state
(jobs running, peers, connections) are callbacks the daemon registers on its
own per-node `Registry`.

**Threads.** Every update and every exposition happens on the event loop's
thread (the executor counts a job when its answer reaches the loop, not in
the worker thread that ran it), so a plain `+=` suffices: no locks on the
hot path. Code running in another thread must not update these.

Exposition is the Prometheus text format 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DHT_LOOKUPS",
    "DHT_LOOKUP_DURATION",
    "HOLE_PUNCHES",
    "JOBS",
    "JOBS_FAILED",
    "JOB_DURATION",
    "REGISTRY",
    "RELAY_DROPPED_FRAMES",
    "RELAY_FORWARDED_BYTES",
    "REMOTE_ATTEMPTS",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelValues = tuple[str, ...]


def _check_names(name: str, labels: Sequence[str]) -> None:
    if not _NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    for label in labels:
        if not _LABEL.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"invalid label name {label!r} for {name}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate label names for {name}")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        _check_names(name, labels)
        self.name = name
        self.help = help_text
        self.label_names: tuple[str, ...] = tuple(labels)

    def _key(self, values: LabelValues) -> LabelValues:
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {self.label_names}, got {len(values)} values"
            )
        return values

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    """A count that only goes up, per combination of label values."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name!r}")
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0}

    def inc(self, *label_values: str, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = self._key(label_values)
        self._values[key] = self._values.get(key, 0) + amount

    def touch(self, *label_values: str) -> None:
        """Show this label combination at 0 before it first counts (so rate() sees it)."""
        self._values.setdefault(self._key(label_values), 0)

    def value(self, *label_values: str) -> float:
        return self._values.get(self._key(label_values), 0)

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, key)} {_number(value)}"
            for key, value in sorted(self._values.items())
        ]


class Gauge(_Family):
    """A value read when scraped, from `read` (no label) or `collect` (one
    sample per label values): live state is never copied into the gauge."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        *,
        read: Callable[[], float] | None = None,
        labels: Sequence[str] = (),
        collect: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        if (read is None) == (collect is None):
            raise ValueError("a gauge reads one value (read) or labelled values (collect)")
        if read is not None and labels:
            raise ValueError("a gauge with labels collects its values")
        self._read = read
        self._collect = collect

    def samples(self) -> list[str]:
        if self._read is not None:
            return [f"{self.name} {_number(self._read())}"]
        assert self._collect is not None
        return [
            f"{self.name}{_labels(self.label_names, self._key(key))} {_number(value)}"
            for key, value in self._collect()
        ]


class Histogram(_Family):
    """Observations counted into buckets (upper bounds; +Inf is implied)."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help_text, labels)
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct and increasing")
        if math.isinf(bounds[-1]):
            bounds.pop()
        self.bounds: tuple[float, ...] = tuple(bounds)
        # Per label values: a count per bucket (not cumulative; the last is +Inf), and the sum.
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}
        if not labels:
            self.touch()

    def observe(self, value: float, *label_values: str) -> None:
        key = self._key(label_values)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.bounds) + 1)
            self._sums[key] = 0.0
        # bisect_left: a value equal to a bound belongs in that bound's bucket (le = "<=").
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sums[key] += value

    def touch(self, *label_values: str) -> None:
        key = self._key(label_values)
        if key not in self._counts:
            self._counts[key] = [0] * (len(self.bounds) + 1)
            self._sums[key] = 0.0

    def count(self, *label_values: str) -> int:
        return sum(self._counts.get(self._key(label_values), ()))

    def samples(self) -> list[str]:
        lines = []
        names = self.label_names
        for key, counts in sorted(self._counts.items()):
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(names, key)} {_number(self._sums[key])}")
            lines.append(f"{self.name}_count{_labels(names, key)} {running}")
        return lines


_F = TypeVar("_F", bound=_Family)


class Registry:
    """Metric families in registration order; `expose()` renders them all."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def register(self, family: _F) -> _F:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def names(self) -> list[str]:
        return list(self._families)

    def expose(self) -> str:
        lines: list[str] = []
        for family in self._families.values():
            lines.extend(family.header())
            lines.extend(family.samples())
        return "\n".join(lines) + "\n" if lines else ""


# -- the instruments the node's layers update -------------------------------------------

REGISTRY: Final = Registry()

_JOB_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOOKUP_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

JOBS: Final = REGISTRY.register(
    Counter(
        "plasm_jobs_total",
        "Jobs this node's sandbox ran to a signed receipt (its own and peers'), by outcome.",
        ("outcome",),
    )
)
JOB_DURATION: Final = REGISTRY.register(
    Histogram(
        "plasm_job_duration_seconds",
        "Jobs submitted to this node: seconds from Submit to the answer, by where they ran.",
        _JOB_BUCKETS,
        ("placement",),
    )
)
JOBS_FAILED: Final = REGISTRY.register(
    Counter(
        "plasm_jobs_failed_total",
        "Jobs submitted to this node that ended without a result, by error reason.",
        ("reason",),
    )
)
REMOTE_ATTEMPTS: Final = REGISTRY.register(
    Counter(
        "plasm_remote_attempts_total",
        "Attempts to run a job submitted here on a peer, by result.",
        ("result",),
    )
)
HOLE_PUNCHES: Final = REGISTRY.register(
    Counter(
        "plasm_hole_punches_total",
        "Hole punches this node tried after reaching a peer through a relay, by result.",
        ("result",),
    )
)
RELAY_FORWARDED_BYTES: Final = REGISTRY.register(
    Counter(
        "plasm_relay_forwarded_bytes_total",
        "Bytes this node forwarded as a relay (ciphertext of others' connections).",
    )
)
RELAY_DROPPED_FRAMES: Final = REGISTRY.register(
    Counter(
        "plasm_relay_dropped_frames_total",
        "Relayed frames this node dropped: over a rate or byte limit, or no such circuit.",
    )
)
DHT_LOOKUPS: Final = REGISTRY.register(
    Counter("plasm_dht_lookups_total", "DHT operations finished, by kind.", ("kind",))
)
DHT_LOOKUP_DURATION: Final = REGISTRY.register(
    Histogram(
        "plasm_dht_lookup_duration_seconds",
        "Seconds a DHT operation took, by kind.",
        _LOOKUP_BUCKETS,
        ("kind",),
    )
)
