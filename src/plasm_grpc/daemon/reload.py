"""What a SIGHUP may change in a running node, decided as data.

`plan_reload(running, loaded)` compares the running configuration with the
one just read and splits the keys that differ: those in `RELOADABLE` are
applied (the node swaps the settings its parts read per job or per request),
the rest keep their running values until the next restart. No I/O here;
reload_apply.py carries the plan out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from plasm_grpc.daemon.config import Config, validate

# Keys whose new value the running node takes. Everything else (listen
# addresses, data_dir, slots and queue, limits, sandbox, store, the DHT's
# timers, overlay connection limits, metrics.listen) is fixed when the node's
# parts are built, and changing it needs a restart.
RELOADABLE: Final[frozenset[str]] = frozenset(
    {
        "log.level",
        # The router reads these for each new job (jobs in flight keep theirs).
        "remote.fallback_local",
        "remote.max_attempts",
        "remote.offer_timeout_s",
        "remote.search_timeout_s",
        "remote.heartbeat_interval_s",
        "remote.heartbeat_misses",
        "remote.worker_cache_s",
        "remote.distrust_s",
        "remote.default_deadline_s",
        # The worker's policy, for each new offer; accept_jobs also re-advertises.
        "remote.accept_jobs",
        "remote.lease_s",
        "remote.max_share_per_requester",
        # Read when the node stops.
        "jobs.drain_timeout_s",
        "grpc.shutdown_grace_s",
        # Read for each new /metrics connection.
        "metrics.request_timeout_s",
        # Entries added are dialled (seeding the DHT); removed ones stay known
        # until the next restart.
        "overlay.bootstrap",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    config: Config
    """The node's configuration from now on: the loaded values of the applied
    keys, the running values of every other key."""
    applied: tuple[str, ...]
    ignored: tuple[str, ...]
    """Keys that differ but keep their running value until a restart."""
    bootstrap_added: tuple[str, ...] = ()
    bootstrap_removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.ignored)


def flatten(config: Config) -> dict[str, Any]:
    """Every key as its dotted name ("data_dir", "limits.max.max_fuel") -> value."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(f"{key}.", value)
            else:
                out[key] = value

    walk("", config)
    return out


def changed_keys(old: Config, new: Config) -> list[str]:
    before, after = flatten(old), flatten(new)
    return [key for key in before if before[key] != after[key]]


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with the dotted keys in `values` replaced."""

    def replace(obj: Any, prefix: str) -> Any:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            key = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            if key in values:
                changes[f.name] = values[key]
            elif dataclasses.is_dataclass(value) and any(k.startswith(key + ".") for k in values):
                changes[f.name] = replace(value, key + ".")
        return dataclasses.replace(obj, **changes) if changes else obj

    result: Config = replace(config, "")
    return result


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Which of `loaded`'s changes the running node takes (see `RELOADABLE`).

    Raises ConfigError if the combination does not validate (it is then not applied).
    """
    after = flatten(loaded)
    applied: list[str] = []
    ignored: list[str] = []
    values: dict[str, Any] = {}
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    for key in changed_keys(running, loaded):
        if key == "overlay.bootstrap":
            old, new = running.overlay.bootstrap, loaded.overlay.bootstrap
            added = tuple(e for e in new if e not in old)
            removed = tuple(e for e in old if e not in new)
            if added:
                applied.append(key)
                values[key] = old + added  # removed entries stay until a restart
            if removed:
                ignored.append(key)
        elif key in RELOADABLE:
            applied.append(key)
            values[key] = after[key]
        else:
            ignored.append(key)
    config = validate(with_values(running, values)) if values else running
    return ReloadPlan(
        config=config,
        applied=tuple(applied),
        ignored=tuple(ignored),
        bootstrap_added=added,
        bootstrap_removed=removed,
    )
