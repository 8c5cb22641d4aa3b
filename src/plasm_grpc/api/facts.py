"""What this node offers, computed once for GetNodeInfo and the DHT peer record."""

from __future__ import annotations

import os
import platform

from plasm_grpc.core.dht.records import DEFAULT_WASI_VERSION, Capabilities
from plasm_grpc.jobs.executor import JobExecutor

__all__ = ["local_capabilities", "total_memory"]


def total_memory() -> int:
    """Physical memory in bytes; 0 where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def local_capabilities(executor: JobExecutor) -> Capabilities:
    """This node's capabilities now (free job slots included): what
    GetNodeInfo reports and the peer record advertises."""
    runtime = executor.sandbox.engine.runtime
    return Capabilities(
        arch=platform.machine(),
        os=platform.system().lower(),
        cores=os.cpu_count() or 1,
        memory_bytes=total_memory(),
        runtime_name=runtime.name,
        runtime_version=runtime.version,
        wasi_version=runtime.wasi_version or DEFAULT_WASI_VERSION,
        max_limits=executor.max_limits,
        free_job_slots=executor.free_slots,
        total_job_slots=executor.slots,
    )
