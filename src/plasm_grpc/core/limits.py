"""Resource limits: a job's request resolved against the node's defaults and maxima."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from plasm_grpc.core.errors import LimitError

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    """Zero in a requested field means "the node's default"."""

    max_memory_bytes: int = 0
    max_fuel: int = 0
    timeout_ms: int = 0
    max_stdout_bytes: int = 0
    max_stderr_bytes: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 0:
                raise LimitError(f"{f.name} must be a non-negative integer, got {value!r}")


DEFAULT_LIMITS = ResourceLimits(
    max_memory_bytes=64 * MIB,
    max_fuel=10_000_000_000,
    timeout_ms=10_000,
    max_stdout_bytes=4 * MIB,
    max_stderr_bytes=1 * MIB,
)

MAXIMUM_LIMITS = ResourceLimits(
    max_memory_bytes=1024 * MIB,
    max_fuel=1_000_000_000_000,
    timeout_ms=300_000,
    max_stdout_bytes=32 * MIB,
    max_stderr_bytes=8 * MIB,
)


def resolve_limits(
    requested: ResourceLimits, defaults: ResourceLimits, maximum: ResourceLimits
) -> ResourceLimits:
    """Fill zeros from `defaults`; refuse anything above `maximum`.

    A limit above the maximum is an error, never silently lowered: a receipt
    must show the limits the client asked for.
    """
    if requested == _ALL_DEFAULT:  # the common case, without re-validating five times
        return _cap(defaults, maximum)
    resolved = requested
    for f in fields(requested):
        value = getattr(requested, f.name)
        if value == 0:
            value = min(getattr(defaults, f.name), getattr(maximum, f.name))
            resolved = replace(resolved, **{f.name: value})
        elif value > getattr(maximum, f.name):
            raise LimitError(
                f"{f.name}={value} is above this node's maximum {getattr(maximum, f.name)}"
            )
    return resolved


_ALL_DEFAULT = ResourceLimits()


def _cap(defaults: ResourceLimits, maximum: ResourceLimits) -> ResourceLimits:
    if all(getattr(defaults, f.name) <= getattr(maximum, f.name) for f in fields(defaults)):
        return defaults
    return ResourceLimits(
        **{
            f.name: min(getattr(defaults, f.name), getattr(maximum, f.name))
            for f in fields(defaults)
        }
    )
