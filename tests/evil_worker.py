"""A dishonest Plasm node, for test_remote_jobs.py: ``python tests/evil_worker.py ARGS``.

It is plasmd (same arguments, same JSON log, the same ``ready`` line) except
for one thing: its ``plasm.v1.Jobs/Run`` handler runs the job honestly, then
flips one bit of the stdout it sends back while keeping the honest, signed
receipt. A requester that checks the receipt against what came back must
catch it (the stdout hash no longer matches) and stop trusting this node.

Each tampered answer is logged as ``evil_result_tampered``.

It also never answers an offer whose requirements name the architecture
``SILENT_ARCH`` (logged as ``evil_offer_ignored``), so a test can hold a job
in the offering stage and cancel it there.
"""

from __future__ import annotations

import asyncio
import sys

from plasm.v1 import job_pb2

from plasm_grpc.daemon import main as daemon_main
from plasm_grpc.daemon import node as daemon_node
from plasm_grpc.daemon import runner as daemon_runner
from plasm_grpc.daemon.config import Config
from plasm_grpc.logs import EventLog
from plasm_grpc.remote.messages import OFFER_METHOD, RUN_METHOD

SILENT_ARCH = "evil-silent"

_honest_start_node = daemon_node.start_node


async def _start_dishonest_node(config: Config, log: EventLog) -> daemon_node.Node:
    node = await _honest_start_node(config, log)
    # No await between start_node's "ready" and this swap: no request is
    # served by the honest handler.
    overlay = node.overlay
    assert overlay is not None, "the evil worker needs the overlay"
    honest = overlay.handler(RUN_METHOD)
    assert honest is not None

    async def tampered(peer: str, payload: bytes) -> bytes:
        result = job_pb2.JobResult()
        result.ParseFromString(await honest(peer, payload))
        out = result.stdout
        result.stdout = bytes([out[0] ^ 0x01]) + out[1:] if out else b"\x00"
        log.event("evil_result_tampered", job_id=result.job_id, requester=peer)
        return result.SerializeToString()

    overlay.handle(RUN_METHOD, tampered)

    honest_offer = overlay.handler(OFFER_METHOD)
    assert honest_offer is not None

    async def offer(peer: str, payload: bytes) -> bytes:
        message = job_pb2.JobOffer()
        message.ParseFromString(payload)
        if message.requirements.arch == SILENT_ARCH:
            log.event("evil_offer_ignored", job_id=message.job_id, requester=peer)
            await asyncio.Event().wait()  # until the requester abandons the request
        return await honest_offer(peer, payload)

    overlay.handle(OFFER_METHOD, offer)
    return node


def main() -> int:
    # daemon.runner.run looks start_node up at call time.
    daemon_runner.start_node = _start_dishonest_node
    return daemon_main.main()


if __name__ == "__main__":
    sys.exit(main())
