"""Committed job rows kept in memory, so a read need not wait behind a group commit.

The store has one SQLite connection behind one lock. A group commit holds that lock for its
whole transaction, fsync included; before this cache, every ``store.get`` from the event loop
(about seven per job: the previous state of each transition, the row a stage works on) waited
for the commit in flight, so the whole loop stalled once per commit.

Only committed rows are served. A write stages its new row; the row replaces the cached one
when the outermost transaction commits (:meth:`RowCache.publish`, called under the store's
lock, so no later write can be overtaken), and on a failed transaction the staged ids are
forgotten (their next read goes to SQLite: a disk-full commit may have landed part of a batch).
A read that misses reads SQLite under the lock and caches what it read only outside a
transaction. The store turns the cache on only while one writer owns the file (a run, which
holds the output directory's lock): another connection's writes would not be seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.state.database import Database
from pipeline.state.rows import JobRow

#: Rows kept at most: enough for every job a run has in flight, bounded for 100,000-job runs.
MAX_ROWS = 4096


class RowCache:
    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.enabled = False
        self._max = max_rows
        self._rows: dict[str, JobRow] = {}
        self._staged: dict[str, JobRow] = {}

    def get(self, job_id: str) -> JobRow | None:
        return self._rows.get(job_id) if self.enabled else None

    def offer(self, row: JobRow) -> None:
        """A row just read outside any transaction (call under the store's lock)."""
        if self.enabled:
            self._put(row)

    def stage(self, row: JobRow) -> None:
        """A row written by the transaction in progress (under the store's lock)."""
        if self.enabled:
            self._staged[row.id] = row

    @contextlib.contextmanager
    def transaction(self, db: Database) -> Iterator[None]:
        """Hold ``db``'s lock around a write and its commit (enter it before the write's own
        context); when the outermost transaction ends, publish or forget what it staged."""
        with db.locked():
            outer = not db.in_batch
            try:
                yield
            except BaseException:
                if outer:
                    self.forget_staged()
                raise
            if outer:
                self.publish()

    def publish(self) -> None:
        """The transaction committed: its rows are what SQLite now says (under the lock)."""
        staged, self._staged = self._staged, {}
        for row in staged.values():
            self._put(row)

    def forget_staged(self) -> None:
        """The transaction failed: what it wrote may or may not have landed; ask SQLite."""
        staged, self._staged = self._staged, {}
        for job_id in staged:
            self._rows.pop(job_id, None)

    def clear(self) -> None:
        self._rows.clear()
        self._staged.clear()

    def _put(self, row: JobRow) -> None:
        self._rows.pop(row.id, None)  # re-inserted last: the oldest entry goes first
        self._rows[row.id] = row
        if len(self._rows) > self._max:
            del self._rows[next(iter(self._rows))]
