"""Background tasks the node holds until they end (and cancels when it stops)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from plasm_grpc.logs import EventLog


def spawn(
    tasks: list[asyncio.Task[None]],
    work: Coroutine[Any, Any, None],
    log: EventLog,
    failed_event: str,
) -> asyncio.Task[None]:
    """Run `work` as a task held in `tasks` (which the node cancels when it
    stops) until it ends; log `failed_event` if it fails."""
    task = asyncio.create_task(work)
    tasks.append(task)

    def done(task: asyncio.Task[None]) -> None:
        if task in tasks:
            tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(failed_event, error=repr(task.exception()))

    task.add_done_callback(done)
    return task
