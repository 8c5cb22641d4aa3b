"""The SQLite receipt store: paging, duplicates, group commit, close and durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from plasm_grpc.store.receipts import (
    InvalidPageTokenError,
    ReceiptStore,
    StoreClosedError,
)

TIMEOUT = 10.0


def job_id(i: int) -> str:
    return f"{i:032x}"


def envelope(i: int) -> bytes:
    return f"envelope {i}".encode() + bytes([i % 256]) * 3


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "receipts.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[ReceiptStore]:
    s = ReceiptStore(db)
    try:
        yield s
    finally:
        s.close()


def add_all(store: ReceiptStore, ids: range) -> None:
    futures = [store.add(job_id(i), envelope(i), 1_000 + i) for i in ids]
    for f in futures:
        f.result(timeout=TIMEOUT)


def all_pages(store: ReceiptStore, size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        rows, token = store.list_page(size, token)
        pages.append([r.job_id for r in rows])
        if not token:
            return pages
        assert len(pages) < 10_000


# -- basic operations ------------------------------------------------------------------------


def test_add_then_get(store: ReceiptStore) -> None:
    store.add(job_id(1), envelope(1), 5).result(timeout=TIMEOUT)
    row = store.get(job_id(1))
    assert row is not None
    assert row.job_id == job_id(1)
    assert row.envelope == envelope(1)
    assert isinstance(row.envelope, bytes)
    assert store.get(job_id(2)) is None
    assert store.count() == 1


def test_store_creates_its_directory_private(db: Path) -> None:
    s = ReceiptStore(db)
    try:
        assert db.parent.is_dir()
        assert db.parent.stat().st_mode & 0o077 == 0
    finally:
        s.close()


def test_list_page_newest_first_with_tokens(store: ReceiptStore) -> None:
    add_all(store, range(23))
    newest_first = [job_id(i) for i in reversed(range(23))]
    pages = all_pages(store, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [j for p in pages for j in p] == newest_first
    rows, token = store.list_page(100, "")
    assert [r.job_id for r in rows] == newest_first
    assert token == ""


def test_list_page_exact_multiple_has_no_empty_last_page(store: ReceiptStore) -> None:
    add_all(store, range(10))
    pages = all_pages(store, 5)
    assert [len(p) for p in pages] == [5, 5]


def test_list_page_empty_store(store: ReceiptStore) -> None:
    assert store.list_page(10, "") == ([], "")


def test_token_is_stable_across_new_adds(store: ReceiptStore) -> None:
    """Receipts added after a page was served do not shift the next page."""
    add_all(store, range(10))
    first, token = store.list_page(4, "")
    add_all(store, range(10, 15))
    second, _ = store.list_page(4, token)
    assert [r.job_id for r in first] == [job_id(i) for i in (9, 8, 7, 6)]
    assert [r.job_id for r in second] == [job_id(i) for i in (5, 4, 3, 2)]


def test_duplicate_job_id_is_ignored(store: ReceiptStore) -> None:
    store.add(job_id(7), b"first", 1).result(timeout=TIMEOUT)
    store.add(job_id(7), b"second", 2).result(timeout=TIMEOUT)
    row = store.get(job_id(7))
    assert row is not None
    assert row.envelope == b"first"
    assert store.count() == 1


def test_duplicates_within_one_batch_are_ignored(store: ReceiptStore) -> None:
    futures = [store.add(job_id(3), f"copy {i}".encode(), i) for i in range(50)]
    for f in futures:
        assert f.result(timeout=TIMEOUT) is None
    assert store.count() == 1
    row = store.get(job_id(3))
    assert row is not None
    assert row.envelope == b"copy 0"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "r1.",
        "r1.x",
        "r1.-1",
        "r1.0",
        "r1.+5",
        "r1. 5",
        "r2.5",
        "R1.5",
        "r1.5 ",
        "r1.1e3",
        "r1.99999999999999999999999",
        "r1.²",  # a Unicode digit that int() refuses
        "r1.٣",  # a Unicode digit that int() accepts
    ],
)
def test_invalid_page_token(store: ReceiptStore, token: str) -> None:
    add_all(store, range(3))
    with pytest.raises(InvalidPageTokenError):
        store.list_page(10, token)


def test_issued_tokens_are_accepted(store: ReceiptStore) -> None:
    add_all(store, range(3))
    _, token = store.list_page(1, "")
    assert token
    rows, _ = store.list_page(1, token)
    assert [r.job_id for r in rows] == [job_id(1)]


# -- concurrency and group commit -------------------------------------------------------------


def test_concurrent_adds_from_threads_all_commit(store: ReceiptStore) -> None:
    threads_n, per_thread = 16, 50
    futures: list[Future[None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        barrier.wait(timeout=TIMEOUT)
        mine = [
            store.add(job_id(t * per_thread + i), envelope(t * per_thread + i), i)
            for i in range(per_thread)
        ]
        with lock:
            futures.extend(mine)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=TIMEOUT)
    assert len(futures) == threads_n * per_thread
    for f in futures:
        f.result(timeout=TIMEOUT)
    assert store.count() == threads_n * per_thread
    for i in range(threads_n * per_thread):
        row = store.get(job_id(i))
        assert row is not None
        assert row.envelope == envelope(i)


def test_reads_while_writing(store: ReceiptStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                store.list_page(10, "")
                store.count()
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=reader)
    t.start()
    try:
        add_all(store, range(300))
    finally:
        stop.set()
        t.join(timeout=TIMEOUT)
    assert errors == []
    assert store.count() == 300


def test_a_cancelled_add_does_not_stop_the_writer(db: Path) -> None:
    """A waiter that gives up (asyncio.wrap_future cancels the concurrent future when
    a Submit RPC is cancelled) must not break the store for everyone else.

    A second connection holds the write lock, so the writer is stuck committing
    the first receipt while the second waits in the queue and is cancelled there.
    """
    s = ReceiptStore(db)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        first = s.add(job_id(1), envelope(1), 1)
        time.sleep(0.1)  # the writer picks it up and waits for the lock
        second = s.add(job_id(2), envelope(2), 2)
        assert second.cancel()  # still queued: cancellable
        first.cancel()  # may or may not succeed; either way the writer must survive
        blocker.execute("COMMIT")
        third = s.add(job_id(3), envelope(3), 3)
        third.result(timeout=2)
        # The receipts whose waiters gave up are stored all the same.
        assert s.count() == 3
    finally:
        blocker.close()
        s.close()


# -- close and reopen ---------------------------------------------------------------------------


def test_close_then_reopen_keeps_everything(db: Path) -> None:
    s = ReceiptStore(db)
    futures = [s.add(job_id(i), envelope(i), i) for i in range(200)]
    s.close()  # commits whatever is queued
    for f in futures:
        f.result(timeout=0)
    s2 = ReceiptStore(db)
    try:
        assert s2.count() == 200
        assert [j for p in all_pages(s2, 64) for j in p] == [
            job_id(i) for i in reversed(range(200))
        ]
        row = s2.get(job_id(123))
        assert row is not None
        assert row.envelope == envelope(123)
        # New rows after reopening sort after the old ones.
        s2.add(job_id(999), b"new", 1).result(timeout=TIMEOUT)
        rows, _ = s2.list_page(1, "")
        assert rows[0].job_id == job_id(999)
    finally:
        s2.close()


def test_add_after_close_fails(db: Path) -> None:
    s = ReceiptStore(db)
    s.close()
    future = s.add(job_id(1), envelope(1), 1)
    assert future.done()
    with pytest.raises(StoreClosedError):
        future.result(timeout=0)
    s.close()  # idempotent
    s2 = ReceiptStore(db)
    try:
        assert s2.get(job_id(1)) is None
    finally:
        s2.close()


# -- durability ----------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from plasm_grpc.store.receipts import ReceiptStore

    store = ReceiptStore(Path(sys.argv[1]))
    futures = [
        store.add(f"{i:032x}", b"durable %d" % i, 1_000 + i) for i in range(100)
    ]
    for f in futures:
        f.result(timeout=30)
    print("acked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_acked_receipts_survive_sigkill(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        line = proc.stdout.readline()
        assert line == b"acked\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    s = ReceiptStore(db)
    try:
        assert s.count() == 100
        for i in range(100):
            row = s.get(f"{i:032x}")
            assert row is not None
            assert row.envelope == b"durable %d" % i
    finally:
        s.close()
