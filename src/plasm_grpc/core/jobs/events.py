"""A job's events: what happened to it, as the node that received its Submit saw it.

Values mirror `plasm.v1.JobEvent`; `EventKind` and `DeclineReason` values
equal the proto enums (checked where the api layer converts them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from plasm_grpc.core.envelope import SignedEnvelope
from plasm_grpc.core.outcome import Outcome


class EventKind(enum.IntEnum):
    SUBMITTED = 1
    SEARCHING = 2
    CANDIDATES = 3
    OFFERED = 4
    DECLINED = 5
    ACCEPTED = 6
    TRANSFERRING = 7
    QUEUED = 8
    RUNNING = 9
    ATTEMPT_FAILED = 10
    FINISHED = 11
    FAILED = 12
    CANCEL_REQUESTED = 13

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL: Final = frozenset({EventKind.FINISHED, EventKind.FAILED})


class DeclineReason(enum.IntEnum):
    """Why a worker declined an offer (`plasm.v1.DeclineReason`)."""

    BUSY = 1
    LIMITS_TOO_HIGH = 2
    UNSUPPORTED_RUNTIME = 3
    MODULE_TOO_LARGE = 4
    INPUT_TOO_LARGE = 5
    DEADLINE_TOO_SHORT = 6
    SHUTTING_DOWN = 7
    DUPLICATE_JOB = 8
    REQUESTER_LIMIT = 9
    INVALID_OFFER = 10
    NOT_ACCEPTING = 11


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    job_id: str
    kind: EventKind
    at_ns: int
    attempt: int = 0
    node_id: str = ""
    decline_reason: DeclineReason | None = None
    detail: str = ""
    outcome: Outcome | None = None
    exit_code: int = 0
    may_have_run: bool = False
    module_bytes: int = 0
    error_reason: str = ""  # an ErrorReason name without its prefix, e.g. "NO_WORKER"
    decline: SignedEnvelope | None = None  # the worker's signed JobDecline

    def __post_init__(self) -> None:
        if self.attempt < 0:
            raise ValueError("attempt must be >= 0")
        if self.kind is EventKind.FAILED and not self.error_reason:
            raise ValueError("a FAILED event names its error reason")
