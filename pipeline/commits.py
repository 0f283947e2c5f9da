"""Group commit: many jobs' state changes share one SQLite transaction and one fsync.

Every write the runner makes goes through :class:`GroupCommitter`. A caller awaits its write;
writes queued while a commit is in progress ride in the next one, so durability costs one
fsync per batch of writes instead of one per write, and the event loop never waits on fsync
(commits run in a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from pipeline.jobs import State
from pipeline.state import StateStore
from pipeline.state_values import JobRow


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

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._queue: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    async def __aenter__(self) -> GroupCommitter:
        self._task = asyncio.create_task(self._loop(), name="group-commit")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue:  # writes queued after the loop stopped still land
            self._commit(self._queue)
            self._queue = []

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
                await asyncio.to_thread(self._commit, batch)
            except BaseException as exc:
                for write in batch:
                    if write.future is not None and not write.future.done():
                        write.future.set_exception(exc)
                raise

    def _commit(self, batch: list[_Write]) -> None:
        results: list[JobRow | BaseException] = []
        with self.store.batch():
            for write in batch:
                try:
                    if write.to is None:
                        row = self.store.set_fields(
                            write.job_id, detail=write.detail, **write.fields
                        )
                    else:
                        row = self.store.transition(
                            write.job_id,
                            write.to,
                            expect=write.expect,
                            detail=write.detail,
                            **write.fields,
                        )
                    results.append(row)
                except Exception as exc:  # one refused write must not sink the others
                    results.append(exc)
        self.commits += 1
        self.writes += len(batch)
        for write, result in zip(batch, results, strict=True):
            future = write.future
            assert future is not None
            loop = future.get_loop()
            if isinstance(result, BaseException):
                loop.call_soon_threadsafe(_settle_error, future, result)
            else:
                loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[JobRow], row: JobRow) -> None:
    if not future.done():
        future.set_result(row)


def _settle_error(future: asyncio.Future[JobRow], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
