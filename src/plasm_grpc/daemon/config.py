"""plasmd configuration: a TOML file whose every key is optional.

With no file at all the defaults give a working single node on loopback.
`plasmd --print-config` prints the effective configuration as TOML, and
docs/configuration.md documents each key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasm_grpc.core.limits import DEFAULT_LIMITS, MAXIMUM_LIMITS, ResourceLimits

DEFAULT_GRPC_LISTEN = "127.0.0.1:50151"


class ConfigError(ValueError):
    pass


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "plasm"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcConfig:
    # host:port for TCP; "" disables TCP. Anything but loopback must be chosen on purpose.
    listen: str = DEFAULT_GRPC_LISTEN
    # Path of a Unix socket to serve on as well; "" for none.
    unix_socket: str = ""
    # Largest request or response, in bytes (a module plus stdin must fit).
    max_message_bytes: int = 64 * 1024 * 1024
    # Seconds SIGTERM waits for in-flight RPCs after jobs have drained.
    shutdown_grace_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsConfig:
    # Jobs run at once; 0 means one per CPU core.
    slots: int = 0
    # Jobs that may wait for a slot before Submit answers RESOURCE_EXHAUSTED.
    queue: int = 256
    # Seconds SIGTERM waits for running jobs before exiting anyway.
    drain_timeout_s: float = 30.0
    max_module_bytes: int = 16 * 1024 * 1024
    max_stdin_bytes: int = 8 * 1024 * 1024
    max_args: int = 1024
    max_env: int = 1024
    max_arg_env_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    max_wasm_stack: int = 512 * 1024
    epoch_tick_ms: float = 10.0
    max_compiled_bytes: int = 128 * 1024 * 1024
    max_cached_modules: int = 128
    # Table elements a job may have (host memory not counted in max_memory_bytes).
    max_table_elements: int = 100_000
    # Reuse pre-mapped instance/memory slots instead of mapping memory per job.
    pooling: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    # Applied where a job leaves a limit at zero.
    default: ResourceLimits = DEFAULT_LIMITS
    # A job asking for more than these is refused.
    max: ResourceLimits = MAXIMUM_LIMITS


DEFAULT_OVERLAY_LISTEN = "127.0.0.1:7946"


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlayConfig:
    # UDP host:port for node-to-node QUIC; "" turns the overlay off.
    listen: str = DEFAULT_OVERLAY_LISTEN
    # Peers to connect to at start, as "NODE_ID@host:port" (the node id is the
    # identity the peer must prove; a different one is refused).
    bootstrap: tuple[str, ...] = ()
    # Seconds between reconnect attempts to a bootstrap peer that is not connected.
    reconnect_interval_s: float = 10.0
    max_connections: int = 256
    max_connections_per_ip: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    # Run the Kademlia DHT over the overlay (needs overlay.listen).
    enabled: bool = True
    # Seconds one DHT request to a peer may take, dialling included.
    rpc_timeout_s: float = 5.0
    # Inbound DHT requests each peer may make per second, after `burst` at once.
    rate_per_s: float = 50.0
    burst: int = 100
    # Lifetime of this node's signed peer record, and how often it is re-signed
    # and stored again (must be shorter).
    record_ttl_s: float = 7200.0
    republish_interval_s: float = 1800.0
    # A routing table bucket with no lookup or answer for this long is refreshed.
    refresh_interval_s: float = 3600.0
    # Seconds between saves of the routing table (dht_peers.pb) when it changed.
    snapshot_interval_s: float = 60.0
    # Most DHT requests this node has in flight at once.
    max_rpcs_in_flight: int = 64
    # Most peer records and provider entries this node holds for others.
    max_records: int = 4096
    max_provider_entries: int = 16384


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteConfig:
    # Run jobs that peers offer over the overlay (this node as a worker).
    accept_jobs: bool = True
    # Automatic placement: run a job here when no peer takes it.
    fallback_local: bool = True
    # Most workers one job is offered to before it fails.
    max_attempts: int = 5
    # Seconds a worker has to answer an offer (dialling included).
    offer_timeout_s: float = 2.0
    # Seconds a worker lookup through the DHT may take.
    search_timeout_s: float = 5.0
    # How long a Submit without a gRPC deadline may take, placement included.
    default_deadline_s: float = 600.0
    # While a job runs on a peer its status is checked this often; after
    # `heartbeat_misses` checks without an answer in a row the peer is
    # presumed gone and the job fails over.
    heartbeat_interval_s: float = 0.5
    heartbeat_misses: int = 3
    # Seconds a worker keeps a job place for an accepted offer whose job has
    # not arrived.
    lease_s: float = 10.0
    # Fairness: the share of this node's slots and queue one requester may hold.
    max_share_per_requester: float = 0.5
    # Seconds the workers found for a kind of job are reused before a new lookup.
    worker_cache_s: float = 30.0
    # Seconds a worker whose result or receipt did not check out is not used.
    distrust_s: float = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    # While this node is publicly reachable, relay for nodes that are not
    # (docs/reachability.md). The relay forwards only ciphertext, within
    # the limits below, per reservation.
    serve: bool = True
    max_reservations: int = 16
    reservation_s: float = 600.0
    max_bytes: int = 256 * 1024 * 1024
    rate_bytes_per_s: int = 1024 * 1024
    max_circuits: int = 8
    # While this node is not publicly reachable, hold reservations at this
    # many relays and advertise them instead of an address.
    use_relays: bool = True
    reservations: int = 2
    # Try a direct path to a node reached through a relay (hole punching).
    hole_punch: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    # "normal": a receipt is committed before it is acknowledged and survives a
    # crash or kill -9 of plasmd; "full": also fsync'd, so it survives power loss.
    sync: str = "normal"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    # host:port serving Prometheus text on GET /metrics (plain HTTP, no
    # authentication); "" serves nothing.
    listen: str = ""
    # Anything but a loopback address must be chosen on purpose.
    allow_non_loopback: bool = False
    # Seconds a client has to send a whole request, after connecting or after
    # the previous answer; then the connection is closed.
    request_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleConfig:
    # host:port serving the web console (docs/console.md) over plain HTTP; ""
    # (the default) serves nothing.
    listen: str = ""
    # Anything but a loopback address must be chosen on purpose.
    allow_non_loopback: bool = False
    # Seconds a client has to send a whole request, after connecting or after
    # the previous answer; then the connection is closed.
    request_timeout_s: float = 5.0
    # Connections at once (each open page holds one for its live events).
    max_connections: int = 32
    # Largest request body (only the actions take one: a Submit's module travels in it).
    max_body_bytes: int = 4 * 1024 * 1024
    # Events a page's live stream may fall behind before it is ended.
    events_backlog: int = 256
    # Submit and Cancel through the console: off unless set, and then only
    # with the token in token_file, sent as "Authorization: Bearer TOKEN".
    allow_actions: bool = False
    token_file: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    grpc: GrpcConfig = GrpcConfig()
    jobs: JobsConfig = JobsConfig()
    sandbox: SandboxConfig = SandboxConfig()
    limits: LimitsConfig = LimitsConfig()
    store: StoreConfig = StoreConfig()
    overlay: OverlayConfig = OverlayConfig()
    dht: DhtConfig = DhtConfig()
    remote: RemoteConfig = RemoteConfig()
    relay: RelayConfig = RelayConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    log: LogConfig = LogConfig()

    def effective_slots(self) -> int:
        return self.jobs.slots or (os.cpu_count() or 1)


def _build(base: Any, data: dict[str, Any], where: str) -> Any:
    """`base` with the keys in `data` replaced; keys not given keep base's values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table")
    known = {f.name: f for f in dataclasses.fields(base)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown key {path!r}; known: {', '.join(sorted(known))}")
        default = getattr(base, key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(default, value, path)
        elif isinstance(default, Path):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path} must be a non-empty path string")
            kwargs[key] = Path(value).expanduser()
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path} must be a list of strings, got {value!r}")
            kwargs[key] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path} must be true or false, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{path} must be a non-negative number, got {value!r}")
            kwargs[key] = float(value)
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{path} must be a non-negative integer, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{path} must be a string, got {value!r}")
            kwargs[key] = value
        else:  # pragma: no cover - every field type is handled above
            raise ConfigError(f"{path}: unsupported type")
    try:
        return dataclasses.replace(base, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def load_config(path: Path | None) -> Config:
    if path is None:
        return validate(Config())
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    try:
        config = _build(Config(), raw, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return validate(config)


def validate(config: Config) -> Config:
    if config.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"log.level must be debug, info, warning or error, got {config.log.level!r}"
        )
    if config.store.sync not in ("normal", "full"):
        raise ConfigError(f"store.sync must be normal or full, got {config.store.sync!r}")
    if not config.grpc.listen and not config.grpc.unix_socket:
        raise ConfigError("set grpc.listen or grpc.unix_socket (or both)")
    if config.grpc.listen:
        parse_host_port(config.grpc.listen)
    for name in (
        "max_memory_bytes",
        "max_fuel",
        "timeout_ms",
        "max_stdout_bytes",
        "max_stderr_bytes",
    ):
        if getattr(config.limits.default, name) > getattr(config.limits.max, name):
            raise ConfigError(f"limits.default.{name} is above limits.max.{name}")
        if getattr(config.limits.max, name) == 0:
            raise ConfigError(f"limits.max.{name} must be positive")
    if config.sandbox.epoch_tick_ms <= 0:
        raise ConfigError("sandbox.epoch_tick_ms must be positive")
    if config.jobs.max_module_bytes + config.jobs.max_stdin_bytes > config.grpc.max_message_bytes:
        raise ConfigError(
            "grpc.max_message_bytes must hold jobs.max_module_bytes + jobs.max_stdin_bytes"
        )
    if config.overlay.listen:
        parse_host_port(config.overlay.listen, "overlay.listen")
    for entry in config.overlay.bootstrap:
        parse_bootstrap(entry)
    _check_range(config.overlay.reconnect_interval_s, "overlay.reconnect_interval_s", 0.1, 3600)
    _check_range(config.overlay.max_connections, "overlay.max_connections", 1, 100_000)
    _check_range(
        config.overlay.max_connections_per_ip, "overlay.max_connections_per_ip", 1, 100_000
    )
    _check_dht(config.dht)
    _check_remote(config.remote)
    _check_relay(config.relay)
    _check_metrics(config.metrics)
    _check_console(config.console)
    # Ranges: the wire types (uint32 timeout_ms), wasm32 (4 GiB memory), and
    # what the runtime can reserve, so a bad value is a message, not a crash.
    _check_range(config.limits.max.max_memory_bytes, "limits.max.max_memory_bytes", 65536, 4 * GIB)
    _check_range(config.limits.max.timeout_ms, "limits.max.timeout_ms", 1, 24 * 3600 * 1000)
    _check_range(config.limits.max.max_fuel, "limits.max.max_fuel", 1, 2**63 - 1)
    _check_range(config.sandbox.max_wasm_stack, "sandbox.max_wasm_stack", 64 * 1024, 64 * MIB)
    _check_range(config.sandbox.epoch_tick_ms, "sandbox.epoch_tick_ms", 1, 1000)
    _check_range(config.sandbox.max_table_elements, "sandbox.max_table_elements", 1, 10_000_000)
    _check_range(config.jobs.slots, "jobs.slots", 0, 256)
    _check_range(config.jobs.queue, "jobs.queue", 0, 100_000)
    _check_range(config.grpc.max_message_bytes, "grpc.max_message_bytes", MIB, 2**31 - 1)
    out = config.limits.max.max_stdout_bytes + config.limits.max.max_stderr_bytes
    if out + MIB > config.grpc.max_message_bytes:
        raise ConfigError(
            "grpc.max_message_bytes must hold limits.max.max_stdout_bytes + max_stderr_bytes "
            f"+ 1 MiB for the receipt ({out + MIB} bytes); the job would run but its answer "
            "could not be sent"
        )
    return config


MIB = 1024 * 1024
GIB = 1024 * MIB


def _check_relay(relay: RelayConfig) -> None:
    _check_range(relay.max_reservations, "relay.max_reservations", 1, 100_000)
    _check_range(relay.reservation_s, "relay.reservation_s", 10, 24 * 3600)
    _check_range(relay.max_bytes, "relay.max_bytes", 64 * 1024, 2**62)
    _check_range(relay.rate_bytes_per_s, "relay.rate_bytes_per_s", 16 * 1024, 2**40)
    _check_range(relay.max_circuits, "relay.max_circuits", 1, 1024)
    _check_range(relay.reservations, "relay.reservations", 1, 4)


def _check_remote(remote: RemoteConfig) -> None:
    _check_range(remote.max_attempts, "remote.max_attempts", 1, 100)
    _check_range(remote.offer_timeout_s, "remote.offer_timeout_s", 0.05, 120)
    _check_range(remote.search_timeout_s, "remote.search_timeout_s", 0.05, 120)
    _check_range(remote.default_deadline_s, "remote.default_deadline_s", 1, 7 * 24 * 3600)
    _check_range(remote.heartbeat_interval_s, "remote.heartbeat_interval_s", 0.05, 60)
    _check_range(remote.heartbeat_misses, "remote.heartbeat_misses", 1, 100)
    _check_range(remote.lease_s, "remote.lease_s", 0.5, 3600)
    _check_range(remote.max_share_per_requester, "remote.max_share_per_requester", 0.01, 1)
    _check_range(remote.worker_cache_s, "remote.worker_cache_s", 0, 3600)
    _check_range(remote.distrust_s, "remote.distrust_s", 0, 30 * 24 * 3600)


def _check_metrics(metrics: MetricsConfig) -> None:
    _check_range(metrics.request_timeout_s, "metrics.request_timeout_s", 0.1, 300)
    if not metrics.listen:
        return
    host, _ = parse_host_port(metrics.listen, "metrics.listen")
    if not metrics.allow_non_loopback and not is_loopback(host):
        raise ConfigError(
            f"metrics.listen must be a loopback address (127.0.0.1, ::1 or localhost), got "
            f"{metrics.listen!r}: /metrics has no authentication. To serve it beyond this "
            "machine anyway, also set metrics.allow_non_loopback = true"
        )


def _check_console(console: ConsoleConfig) -> None:
    _check_range(console.request_timeout_s, "console.request_timeout_s", 0.1, 300)
    _check_range(console.max_connections, "console.max_connections", 1, 10_000)
    _check_range(console.max_body_bytes, "console.max_body_bytes", 1024, 256 * MIB)
    _check_range(console.events_backlog, "console.events_backlog", 1, 100_000)
    if console.allow_actions and not console.token_file:
        raise ConfigError(
            "console.allow_actions needs console.token_file: the actions are only taken "
            "with the token in that file"
        )
    if not console.listen:
        return
    host, _ = parse_host_port(console.listen, "console.listen")
    if not console.allow_non_loopback and not is_loopback(host):
        raise ConfigError(
            f"console.listen must be a loopback address (127.0.0.1, ::1 or localhost), got "
            f"{console.listen!r}: the console is plain HTTP. To serve it beyond this machine "
            "anyway, also set console.allow_non_loopback = true"
        )


def is_loopback(host: str) -> bool:
    """A loopback IP literal, or "localhost" (which resolves to loopback only)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: where it resolves is not known here


def _check_dht(dht: DhtConfig) -> None:
    _check_range(dht.rpc_timeout_s, "dht.rpc_timeout_s", 0.1, 120)
    _check_range(dht.rate_per_s, "dht.rate_per_s", 0.1, 100_000)
    _check_range(dht.burst, "dht.burst", 1, 100_000)
    # A record may not claim to live longer than 24 h (core.dht.records.MAX_RECORD_TTL).
    _check_range(dht.record_ttl_s, "dht.record_ttl_s", 60, 24 * 3600)
    _check_range(dht.republish_interval_s, "dht.republish_interval_s", 30, 24 * 3600)
    if dht.republish_interval_s >= dht.record_ttl_s:
        raise ConfigError(
            "dht.republish_interval_s must be shorter than dht.record_ttl_s, or a record"
            " expires before it is stored again"
        )
    _check_range(dht.refresh_interval_s, "dht.refresh_interval_s", 60, 7 * 24 * 3600)
    _check_range(dht.snapshot_interval_s, "dht.snapshot_interval_s", 1, 24 * 3600)
    _check_range(dht.max_rpcs_in_flight, "dht.max_rpcs_in_flight", 1, 10_000)
    _check_range(dht.max_records, "dht.max_records", 1, 10_000_000)
    _check_range(dht.max_provider_entries, "dht.max_provider_entries", 1, 10_000_000)


def _check_range(value: float, key: str, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value:g}")


def parse_host_port(value: str, key: str = "grpc.listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def parse_bootstrap(entry: str) -> tuple[str, str, int]:
    """ "NODE_ID@host:port" -> (node id, host, port)."""
    node_id, sep, address = entry.partition("@")
    if not sep or len(node_id) != 64 or any(c not in "0123456789abcdef" for c in node_id):
        raise ConfigError(
            f"overlay.bootstrap entries are NODE_ID@host:port with a 64-hex node id, got {entry!r}"
        )
    host, port = parse_host_port(address, "overlay.bootstrap")
    if port == 0:
        raise ConfigError(f"overlay.bootstrap needs a real port, got {entry!r}")
    return node_id, host, port


def _toml_string(value: str) -> str:
    # JSON string escapes are all valid TOML basic-string escapes; TOML also forbids raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(config: Config) -> str:
    """The effective configuration, as a TOML file plasmd would accept."""
    lines = [f"data_dir = {_toml_string(str(config.data_dir))}"]

    def emit(prefix: str, obj: Any) -> None:
        scalars = []
        nested = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((f.name, value))
            else:
                scalars.append((f.name, value))
        if scalars:
            lines.append("")
            lines.append(f"[{prefix}]")
            for key, value in scalars:
                if isinstance(value, str):
                    lines.append(f"{key} = {_toml_string(value)}")
                elif isinstance(value, tuple):
                    lines.append(f"{key} = [{', '.join(_toml_string(v) for v in value)}]")
                elif isinstance(value, bool):
                    lines.append(f"{key} = {'true' if value else 'false'}")
                else:
                    lines.append(f"{key} = {value}")
        for key, value in nested:
            emit(f"{prefix}.{key}", value)

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            emit(f.name, value)
    return "\n".join(lines) + "\n"
