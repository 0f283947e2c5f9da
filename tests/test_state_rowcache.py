"""Committed rows in memory while a run owns the state: a read does not wait behind a commit in
another thread, and never sees a write that has not committed (or that rolled back)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.jobs import State
from pipeline.state.commits import GroupCommitter
from pipeline.state.database import state_path
from pipeline.state.rowcache import RowCache
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore

SPEC = {"image": "/in/a.png", "video": "/in/b.mp4", "settings": {"mode": "std"}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(tmp_path) as s:
        s.sync_jobs(JobRecord(f"job-{i}", f"k{i}", SPEC) for i in range(3))
        s.cache_rows(True)
        yield s


class OpenBatch:
    """A batch held open in another thread (as a group commit holds it during its fsync)."""

    def __init__(self, store: StateStore, job_id: str, to: State) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None

        def work() -> None:
            try:
                with store.batch():
                    store.transition(job_id, to)
                    self.inside.set()
                    self.release.wait(30)
                    if self.fail:
                        raise RuntimeError("rolled back")
            except BaseException as exc:
                self.error = exc

        self.fail = False
        self.thread = threading.Thread(target=work)
        self.thread.start()
        assert self.inside.wait(30)

    def finish(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.release.set()
        self.thread.join(30)


def read_in_thread(store: StateStore, job_id: str) -> State | None:
    """The state a reader gets within 10 s, or None when it is still waiting."""
    got: list[State] = []
    reader = threading.Thread(target=lambda: got.append(store.get(job_id).state), daemon=True)
    reader.start()
    reader.join(10)
    return got[0] if got else None


def test_a_read_does_not_wait_for_a_commit_in_flight(store: StateStore) -> None:
    store.get("job-0")  # read once outside any transaction: cached
    store.get("job-1")
    batch = OpenBatch(store, "job-0", State.SUBMITTING)
    try:
        assert read_in_thread(store, "job-1") is State.PENDING  # the lock is held meanwhile
        assert read_in_thread(store, "job-0") is State.PENDING  # committed state, not the batch's
    finally:
        batch.finish()
    assert batch.error is None
    assert store.get("job-0").state is State.SUBMITTING  # published at commit


def test_a_rolled_back_write_is_never_served(store: StateStore) -> None:
    store.get("job-0")
    batch = OpenBatch(store, "job-0", State.SUBMITTING)
    batch.finish(fail=True)
    assert isinstance(batch.error, RuntimeError)
    assert store.get("job-0").state is State.PENDING


def test_a_write_outside_a_batch_is_served_after_its_commit(store: StateStore) -> None:
    store.get("job-2")
    row = store.transition("job-2", State.SUBMITTING)
    assert store.get("job-2") == row


def test_off_by_default_so_other_connections_are_seen(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.sync_jobs([JobRecord("job-0", "k0", SPEC)])
        assert store.get("job-0").state is State.PENDING
        with sqlite3.connect(state_path(tmp_path)) as other:
            other.execute("UPDATE jobs SET state='submitting' WHERE id='job-0'")
        assert store.get("job-0").state is State.SUBMITTING


def test_on_only_while_a_group_committer_runs(tmp_path: Path) -> None:
    async def scenario(store: StateStore) -> None:
        async with GroupCommitter(store) as commits:
            await commits.transition("job-0", State.SUBMITTING)
            assert store.get("job-0").state is State.SUBMITTING
            batch = OpenBatch(store, "job-0", State.PENDING)
            try:  # the committed row, while another transaction holds the lock
                assert read_in_thread(store, "job-0") is State.SUBMITTING
            finally:
                batch.finish(fail=True)

    with StateStore.open(tmp_path) as store:
        store.sync_jobs([JobRecord("job-0", "k0", SPEC)])
        asyncio.run(scenario(store))
        with sqlite3.connect(state_path(tmp_path)) as other:
            other.execute("UPDATE jobs SET state='pending' WHERE id='job-0'")
        assert store.get("job-0").state is State.PENDING  # off again: SQLite answers


def test_the_cache_is_bounded(store: StateStore) -> None:
    cache = RowCache(max_rows=2)
    cache.enabled = True
    rows = [store.get(f"job-{i}") for i in range(3)]
    for row in rows:
        cache.offer(row)
    assert cache.get("job-0") is None
    assert cache.get("job-1") == rows[1] and cache.get("job-2") == rows[2]
