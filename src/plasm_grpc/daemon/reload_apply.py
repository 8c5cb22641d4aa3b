"""Carrying out a SIGHUP reload on the running node.

daemon/reload.py decides, as data, which keys change; `apply_reload` swaps
the settings objects the node's parts read (router, worker, servicer,
listeners), re-advertises when remote.accept_jobs changes and dials added
bootstrap peers. `reload_node` reads the configuration again and logs the
outcome (`reloaded`, `reload_ignored`, `reload_failed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from plasm_grpc.daemon.config import Config, ConfigError
from plasm_grpc.daemon.peering import keep_connected, offered_capabilities, seed_dht
from plasm_grpc.daemon.reload import ReloadPlan, plan_reload
from plasm_grpc.daemon.settings import router_settings, worker_policy
from plasm_grpc.daemon.tasks import spawn
from plasm_grpc.logs import LEVELS

if TYPE_CHECKING:
    from plasm_grpc.daemon.node import Node


def reload_node(node: Node, load: Callable[[], Config], config_name: str) -> ReloadPlan | None:
    """Read the configuration and apply what can change; never raises.

    A configuration that does not load or validate changes nothing
    (`reload_failed`); keys that need a restart are named (`reload_ignored`).
    """
    log = node.log
    log.event("signal", action="reload", config=config_name)
    before = log.level
    try:
        plan = apply_reload(node, load())
    except ConfigError as err:
        log.error("reload_failed", config=config_name, error=str(err))
        return None
    except Exception as err:  # noqa: BLE001 - a reload must never take the node down
        log.error("reload_failed", config=config_name, error=repr(err))
        return None
    after = log.level
    # Said at the more verbose of the two levels, so a reload that quietens
    # the log still reports itself.
    log.set_level(before if LEVELS[before] < LEVELS[after] else after)
    if plan.ignored:
        ignored: dict[str, Any] = {"keys": list(plan.ignored)}
        if plan.bootstrap_removed:
            ignored["bootstrap_removed"] = list(plan.bootstrap_removed)
        log.warning(
            "reload_ignored",
            detail="these settings keep their running values until plasmd restarts",
            **ignored,
        )
    reloaded: dict[str, Any] = {"config": config_name, "applied": list(plan.applied)}
    if plan.bootstrap_added:
        reloaded["bootstrap_added"] = list(plan.bootstrap_added)
    log.event("reloaded", **reloaded)
    log.set_level(after)
    return plan


def apply_reload(node: Node, loaded: Config) -> ReloadPlan:
    """Take what can change while running from `loaded` (see daemon/reload.py).

    Raises ConfigError, leaving everything as it was, if the result does
    not validate. The settings objects are swapped on the loop's thread,
    between two jobs' reads of them: a job in flight keeps what it started
    with, the next one sees the new values.
    """
    plan = plan_reload(node.config, loaded)
    config = node.config = plan.config
    applied = set(plan.applied)
    if "log.level" in applied:
        node.log.set_level(config.log.level)
    if any(key.startswith("remote.") for key in applied):
        if node.router is not None:
            node.router.settings = router_settings(config)
        if node.worker is not None:
            policy = worker_policy(config, node.engine.runtime.wasi_version)
            node.worker.policy = policy
            node.worker.leases.policy = policy
        if node.servicer is not None:
            node.servicer.facts = dataclasses.replace(
                node.servicer.facts, default_job_timeout_s=config.remote.default_deadline_s
            )
    node.listeners.reload(config)
    node.tasks[:] = [t for t in node.tasks if not t.done()]
    dht, overlay, worker = node.dht, node.overlay, node.worker
    if "remote.accept_jobs" in applied and dht is not None and overlay is not None:
        # Advertise (or stop advertising) as a worker now, not at the next republish.
        assert worker is not None
        caps = offered_capabilities(worker, node.executor)
        dht.update_capabilities(caps)
        if node.reach is not None:
            node.reach.readvertise()
    if plan.bootstrap_added and dht is not None:
        _background(node, seed_dht(dht, plan.bootstrap_added, node.log))
    elif plan.bootstrap_added and overlay is not None:
        for entry in plan.bootstrap_added:
            _background(node, keep_connected(overlay, entry, config, node.log))
    return plan


def _background(node: Node, work: Coroutine[Any, Any, None]) -> None:
    spawn(node.tasks, work, node.log, "reload_task_failed")
