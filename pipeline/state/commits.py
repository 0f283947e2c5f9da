"""Group commit: many jobs' state changes share one SQLite transaction and one fsync.

Every write the runner makes goes through :class:`GroupCommitter`. A caller awaits its write;
writes queued while a commit is in progress ride in the next one, so durability costs one
fsync per batch of writes instead of one per write, and the event loop never waits on fsync
(commits run in a worker thread).

A write the store refuses (an illegal transition) fails alone. A commit that fails as a whole
(the disk is full) fails every write in it, never some of them silently: SQLite may roll the
whole transaction back on its own. Then ``on_disk_full`` (which frees the disk guard's reserve)
is called and the batch is tried once more, so the task ids in it still land. The loop never
dies: a failed batch fails its writers, and the next batch is committed as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import BatchStopped, PipelineError
from pipeline.jobs import State
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore


@dataclass
class _Write:
    job_id: str
    to: State | None
    """None: set fields without a state change."""
    fields: dict[str, Any]
    expect: State | frozenset[State] | None
    detail: dict[str, Any] | None
    future: asyncio.Future[JobRow] | None = field(repr=False, default=None)


class GroupCommitter:
    """Queue state writes; commit whatever is queued in one transaction, off the event loop."""

    def __init__(
        self, store: StateStore, *, on_disk_full: Callable[[], bool] = lambda: False
    ) -> None:
        self.store = store
        self._on_disk_full = on_disk_full
        self._queue: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    async def __aenter__(self) -> GroupCommitter:
        # While commits run in a thread holding the store's lock, the loop's reads are served
        # from committed rows in memory instead of waiting (the runner owns the file meanwhile).
        self.store.cache_rows(True)
        self._task = asyncio.create_task(self._loop(), name="group-commit")
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if self._queue:  # writes queued after the loop stopped still land
                batch, self._queue = self._queue, []
                try:
                    self._commit_or_retry(batch)
                except _Partial as partial:
                    _fail_all(partial.rest, partial.error)
                except PipelineError as exc:
                    _fail_all(batch, exc)
        finally:
            self.store.cache_rows(False)

    async def transition(
        self,
        job_id: str,
        to: State,
        *,
        expect: State | frozenset[State] | None = None,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> JobRow:
        return await self._submit(_Write(job_id, to, fields, expect, detail))

    async def set_fields(
        self, job_id: str, *, detail: dict[str, Any] | None = None, **fields: Any
    ) -> JobRow:
        return await self._submit(_Write(job_id, None, fields, None, detail))

    async def _submit(self, write: _Write) -> JobRow:
        future: asyncio.Future[JobRow] = asyncio.get_running_loop().create_future()
        write.future = future
        self._queue.append(write)
        self._wakeup.set()
        # Shielded: a cancelled caller (Ctrl-C) must not tear a write out of a commit in flight;
        # the write lands either way, and the next run reads it.
        return await asyncio.shield(future)

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._commit_or_retry, batch)
            except _Partial as partial:  # the retry failed too: those writes are lost
                _fail_all(partial.rest, partial.error)
            except asyncio.CancelledError:
                # The worker thread finishes the commit anyway; its writers learn the outcome.
                raise
            except Exception as exc:  # the whole batch failed; the next one may not
                _fail_all(batch, exc)

    def _commit_or_retry(self, batch: list[_Write]) -> None:
        try:
            self._commit(batch)
        except _Partial as partial:
            if not self._on_disk_full():
                raise
            self._commit(partial.rest)  # the reserve is free now: the task ids must land

    def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch``; settle every write whose fate is known. On a failed commit, raise
        :class:`_Partial` with the writes that did not land (those before the last task-id flush
        did: the store commits a task id at once)."""
        results: list[JobRow | BaseException] = []
        durable = 0
        try:
            with self.store.batch():
                for write in batch:
                    results.append(self._apply(write))
                    if "task_id" in write.fields and isinstance(results[-1], JobRow):
                        durable = len(results)
        except BatchStopped as exc:
            _settle_all(batch[:durable], results[:durable])
            raise _Partial(exc, batch[durable:]) from None
        self.commits += 1
        self.writes += len(batch)
        _settle_all(batch, results)

    def _apply(self, write: _Write) -> JobRow | BaseException:
        try:
            if write.to is None:
                return self.store.set_fields(write.job_id, detail=write.detail, **write.fields)
            return self.store.transition(
                write.job_id, write.to, expect=write.expect, detail=write.detail, **write.fields
            )
        except BatchStopped:
            raise  # the disk: the transaction as a whole is lost
        except Exception as exc:  # one refused write must not sink the others
            return exc


class _Partial(Exception):
    """A commit failed (disk full); ``rest`` are the writes that did not land."""

    def __init__(self, error: BatchStopped, rest: list[_Write]) -> None:
        super().__init__(str(error))
        self.error = error
        self.rest = rest


def _settle_all(batch: list[_Write], results: list[JobRow | BaseException]) -> None:
    for write, result in zip(batch, results, strict=True):
        future = write.future
        if future is None:
            continue
        loop = future.get_loop()
        if isinstance(result, BaseException):
            loop.call_soon_threadsafe(_settle_error, future, result)
        else:
            loop.call_soon_threadsafe(_settle, future, result)


def _fail_all(batch: list[_Write], exc: BaseException) -> None:
    for write in batch:
        future = write.future
        if future is not None and not future.done():
            future.get_loop().call_soon_threadsafe(_settle_error, future, exc)


def _settle(future: asyncio.Future[JobRow], row: JobRow) -> None:
    if not future.done():
        future.set_result(row)


def _settle_error(future: asyncio.Future[JobRow], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
