"""The job event bus: each job's events, kept for late watchers, fanned out live.

Runs on the daemon's event loop. Whoever drives a job (the Submit handler
and its session) calls `publish`; every Watch call iterates `watch`. The bus
never blocks a publisher: a watcher that falls `subscriber_queue` events
behind is ended with `SlowWatcherError` and may watch again (the history is
replayed).

Memory is bounded three ways:

- per job, at most `max_events_per_job` events: the first half of them (the
  submit, the search, the first offers: why the job started where it did)
  and the newest rest (where it is now; the terminal event is always the
  newest, so it is never dropped). `dropped(job_id)` counts the events
  dropped in between.
- at most `max_jobs` jobs: finished jobs stay for late watchers and are
  evicted oldest-finished first. Unfinished jobs are not evicted to make room
  for finished ones; but when `max_jobs` unfinished jobs are already tracked
  (only a publisher that never sends a job's terminal event gets there:
  Submit admission bounds real concurrency far below it), a new job's first
  event evicts the oldest unfinished job, whose watchers end with
  `JobEvictedError`. A late event for an evicted job starts a fresh history.
- per watcher, `subscriber_queue` undelivered events (see above); per
  follower of every job (`follow`), its own `backlog`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from plasm_grpc.core.jobs.events import JobEvent

__all__ = [
    "BusStats",
    "JobEventBus",
    "JobEvictedError",
    "JobNotFoundError",
    "SlowWatcherError",
    "WatchEndedError",
]


class JobNotFoundError(LookupError):
    """No job with that id appeared within the wait."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id} on this node")
        self.job_id = job_id


class WatchEndedError(RuntimeError):
    """The bus ended a watcher before its job's terminal event."""


class SlowWatcherError(WatchEndedError):
    """The watcher fell too many events behind; watch again to get the history."""


class JobEvictedError(WatchEndedError):
    """The job was evicted while unfinished (more than max_jobs unfinished jobs)."""


@dataclass(slots=True)
class BusStats:
    """Counters, for logs and tests."""

    events_published: int = 0
    # Events dropped from the middle of long histories.
    events_dropped: int = 0
    # Events published after their job's terminal event, and ignored.
    events_after_end: int = 0
    finished_evicted: int = 0
    unfinished_evicted: int = 0
    slow_watchers: int = 0


class _Subscriber:
    """One watcher's queue of live events. Fed synchronously by `publish`."""

    __slots__ = ("_error", "_events", "_limit", "_wakeup")

    def __init__(self, limit: int) -> None:
        self._events: deque[JobEvent] = deque()
        self._limit = limit
        self._error: WatchEndedError | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def push(self, event: JobEvent) -> bool:
        """Queue `event`; False (and the watcher is ended) when the queue is full."""
        if len(self._events) >= self._limit:
            self.fail(SlowWatcherError(f"the watcher fell {self._limit} events behind"))
            return False
        self._events.append(event)
        self._wake()
        return True

    def fail(self, error: WatchEndedError) -> None:
        self._events.clear()
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def get(self) -> JobEvent:
        while not self._events:
            if self._error is not None:
                raise self._error
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._events.popleft()


@dataclass(slots=True)
class _Job:
    head: list[JobEvent]
    tail: deque[JobEvent]
    head_limit: int
    dropped: int = 0
    ended: bool = False
    subscribers: set[_Subscriber] = field(default_factory=set)

    def append(self, event: JobEvent) -> bool:
        """Keep `event`; True when an older one had to be dropped to make room."""
        if len(self.head) < self.head_limit:
            self.head.append(event)
            return False
        full = self.tail.maxlen is not None and len(self.tail) == self.tail.maxlen
        self.tail.append(event)
        if full:
            self.dropped += 1
        return full

    def history(self) -> list[JobEvent]:
        return [*self.head, *self.tail]


class JobEventBus:
    def __init__(
        self, *, max_jobs: int = 4096, max_events_per_job: int = 256, subscriber_queue: int = 1024
    ) -> None:
        if max_jobs < 1 or max_events_per_job < 2 or subscriber_queue < 1:
            raise ValueError("max_jobs, subscriber_queue >= 1 and max_events_per_job >= 2")
        self.max_jobs = max_jobs
        self.max_events_per_job = max_events_per_job
        self.subscriber_queue = subscriber_queue
        self.stats = BusStats()
        # Insertion order is first-event order: the oldest unfinished job first.
        self._jobs: dict[str, _Job] = {}
        # Finished job ids, oldest finished first.
        self._finished: OrderedDict[str, None] = OrderedDict()
        # Watchers waiting for a job id that has no event yet.
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        # Followers of every job's events (the web console's live feed).
        self._followers: set[_Subscriber] = set()

    # -- publishing --------------------------------------------------------------

    def publish(self, event: JobEvent) -> None:
        """Record `event` and hand it to the job's watchers. Never blocks."""
        job = self._jobs.get(event.job_id)
        if job is None:
            job = self._track(event.job_id)
        elif job.ended:
            self.stats.events_after_end += 1
            return
        self.stats.events_published += 1
        if job.append(event):
            self.stats.events_dropped += 1
        for subs in (job.subscribers, self._followers):
            for sub in list(subs):
                if not sub.push(event):
                    subs.discard(sub)
                    self.stats.slow_watchers += 1
        if event.kind.terminal:
            job.ended = True
            job.subscribers.clear()  # each has the terminal event queued
            self._finished[event.job_id] = None
            self._evict_finished()

    def _track(self, job_id: str) -> _Job:
        head = self.max_events_per_job // 2
        job = _Job(head=[], tail=deque(maxlen=self.max_events_per_job - head), head_limit=head)
        unfinished = len(self._jobs) - len(self._finished)
        if unfinished >= self.max_jobs:
            self._evict_oldest_unfinished()
        self._jobs[job_id] = job
        self._evict_finished()
        for waiter in self._waiting.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        return job

    def _evict_finished(self) -> None:
        while len(self._jobs) > self.max_jobs and self._finished:
            job_id, _ = self._finished.popitem(last=False)
            del self._jobs[job_id]
            self.stats.finished_evicted += 1

    def _evict_oldest_unfinished(self) -> None:
        job_id = next(jid for jid, job in self._jobs.items() if not job.ended)
        job = self._jobs.pop(job_id)
        for sub in job.subscribers:
            sub.fail(JobEvictedError(f"job {job_id} was evicted: too many unfinished jobs"))
        job.subscribers.clear()
        self.stats.unfinished_evicted += 1

    # -- reading ----------------------------------------------------------------

    def job_ids(self) -> list[str]:
        """Every tracked job, oldest first event first."""
        return list(self._jobs)

    def known(self, job_id: str) -> bool:
        return job_id in self._jobs

    def ended(self, job_id: str) -> bool:
        """True when the job is known and its terminal event was published."""
        job = self._jobs.get(job_id)
        return job is not None and job.ended

    def history(self, job_id: str) -> list[JobEvent]:
        """The job's retained events, oldest first; [] for an unknown job."""
        job = self._jobs.get(job_id)
        return job.history() if job is not None else []

    def dropped(self, job_id: str) -> int:
        """Events dropped from the middle of the job's history."""
        job = self._jobs.get(job_id)
        return job.dropped if job is not None else 0

    def watchers(self, job_id: str | None = None) -> int:
        """Live subscriptions, of one job or of all; for tests and metrics."""
        if job_id is not None:
            job = self._jobs.get(job_id)
            return len(job.subscribers) if job is not None else 0
        return sum(len(job.subscribers) for job in self._jobs.values())

    def waiting(self) -> int:
        """Watchers waiting for a job id that has no event yet."""
        return sum(len(w) for w in self._waiting.values())

    async def watch(self, job_id: str, *, wait_s: float) -> AsyncGenerator[JobEvent, None]:
        """The job's history, then its live events; returns after the terminal event.

        Waits up to `wait_s` for an unknown job's first event, then raises
        JobNotFoundError. Raises a WatchEndedError when the bus ends the
        watcher early. Close the iterator (`contextlib.aclosing`) when done
        with it early; cancelling the task iterating it also unsubscribes.
        """
        job = self._jobs.get(job_id)
        if job is None:
            job = await self._wait_for(job_id, wait_s)
        # No await between the snapshot and subscribing: nothing is missed or doubled.
        backlog = job.history()
        if job.ended:
            for event in backlog:
                yield event
            return
        sub = _Subscriber(self.subscriber_queue)
        job.subscribers.add(sub)
        try:
            for event in backlog:
                yield event
            while True:
                event = await sub.get()
                yield event
                if event.kind.terminal:
                    return
        finally:
            job.subscribers.discard(sub)

    async def _wait_for(self, job_id: str, wait_s: float) -> _Job:
        if wait_s > 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiting.setdefault(job_id, set())
            waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, wait_s)
            except TimeoutError:
                pass
            finally:
                waiters.discard(waiter)
                if not waiters and self._waiting.get(job_id) is waiters:
                    del self._waiting[job_id]
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def follow(self, *, backlog: int) -> AsyncGenerator[JobEvent, None]:
        """Every job's events published from now on, live, until closed.

        Raises SlowWatcherError when the follower falls `backlog` events
        behind. Close the iterator (`contextlib.aclosing`) to unsubscribe.
        """
        sub = _Subscriber(backlog)
        self._followers.add(sub)
        try:
            while True:
                yield await sub.get()
        finally:
            self._followers.discard(sub)

    def followers(self) -> int:
        """Live followers of every job; for tests."""
        return len(self._followers)
