"""The settings the node's parts are built with, read from the configuration.

No I/O. The wiring (node.py) builds every part from these; a reload
(reload_apply.py) builds the router's and the worker's again and swaps them in.
"""

from __future__ import annotations

import platform

from plasm_grpc.core.jobs.admission import WorkerPolicy
from plasm_grpc.core.jobs.session import SessionSettings
from plasm_grpc.core.relay import RelayLimits
from plasm_grpc.daemon.config import Config
from plasm_grpc.jobs.executor import InputLimits
from plasm_grpc.net.relay import RelaySettings
from plasm_grpc.remote.router import RouterSettings
from plasm_grpc.sandbox.cache import CacheSettings
from plasm_grpc.sandbox.engine import EngineSettings


def engine_settings(config: Config) -> EngineSettings:
    return EngineSettings(
        max_wasm_stack=config.sandbox.max_wasm_stack,
        epoch_tick_ms=config.sandbox.epoch_tick_ms,
        pooling=config.sandbox.pooling,
        pool_slots=max(16, 2 * config.effective_slots()),
        max_memory_bytes=config.limits.max.max_memory_bytes,
        max_timeout_ms=config.limits.max.timeout_ms,
        max_table_elements=config.sandbox.max_table_elements,
    )


def cache_settings(config: Config) -> CacheSettings:
    return CacheSettings(
        directory=config.data_dir,
        max_module_bytes=config.jobs.max_module_bytes,
        max_compiled_bytes=config.sandbox.max_compiled_bytes,
        max_cached_modules=config.sandbox.max_cached_modules,
    )


def input_limits(config: Config) -> InputLimits:
    jobs = config.jobs
    return InputLimits(
        max_module_bytes=jobs.max_module_bytes,
        max_stdin_bytes=jobs.max_stdin_bytes,
        max_args=jobs.max_args,
        max_env=jobs.max_env,
        max_arg_env_bytes=jobs.max_arg_env_bytes,
    )


def worker_policy(config: Config, wasi_version: str) -> WorkerPolicy:
    jobs, remote = config.jobs, config.remote
    return WorkerPolicy(
        accept_jobs=remote.accept_jobs,
        arch=platform.machine(),
        wasi_version=wasi_version,
        default_limits=config.limits.default,
        max_limits=config.limits.max,
        max_module_bytes=jobs.max_module_bytes,
        max_input_bytes=jobs.max_stdin_bytes + jobs.max_arg_env_bytes,
        lease_ns=int(remote.lease_s * 1e9),
        capacity=config.effective_slots() + jobs.queue,
        max_share=remote.max_share_per_requester,
    )


def router_settings(config: Config) -> RouterSettings:
    remote = config.remote
    return RouterSettings(
        session=SessionSettings(
            max_attempts=remote.max_attempts,
            offer_timeout_s=remote.offer_timeout_s,
            search_timeout_s=remote.search_timeout_s,
            fallback_local=remote.fallback_local,
        ),
        heartbeat_interval_s=remote.heartbeat_interval_s,
        heartbeat_misses=remote.heartbeat_misses,
        worker_cache_s=remote.worker_cache_s,
        distrust_s=remote.distrust_s,
    )


def relay_settings(config: Config) -> RelaySettings:
    relay = config.relay
    return RelaySettings(
        serve=relay.serve,
        limits=RelayLimits(
            max_reservations=relay.max_reservations,
            duration_s=relay.reservation_s,
            max_bytes=relay.max_bytes,
            rate_bytes_per_s=relay.rate_bytes_per_s,
            max_circuits=relay.max_circuits,
        ),
        use_relays=relay.use_relays,
        reservations=relay.reservations,
        hole_punch=relay.hole_punch,
    )
