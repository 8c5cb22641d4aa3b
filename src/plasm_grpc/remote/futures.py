"""An asyncio helper the remote adapters share."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["discard_outcome"]


def discard_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for a future nobody awaits (a declined offer's pipelined
    JobRun, an abandoned job): fetch its outcome, so asyncio does not log that
    its exception was never retrieved."""
    if not future.cancelled():
        future.exception()
