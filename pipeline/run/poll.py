"""One poller for every running task: adaptive intervals, batch queries where the provider has them.

Jobs ``await poller.wait(handle)`` and get the terminal :class:`~pipeline.jobs.TaskStatus`.
The poller keeps a due time per task. When a task is due, its poll is started as a task of its
own (bounded by :data:`PARALLEL_POLLS`) and the scheduler goes on at once: a poll that answers
slowly delays that task only, never the others (polls used to go in rounds, and one trickling
answer stalled every task's polling). Where the provider answers many tasks at once
(``poll_many``) the tasks due together share one query per chunk.

Transport trouble is not a failed job: the task is asked again later, with backoff, and a streak
of it opens the circuit breaker so a sick provider is not hammered. A task whose answers cannot
be read :data:`MAX_BAD_REPLIES` times in a row fails with :class:`UnreadableTask` (its task id is
kept and ``run --retry-failed`` asks again). An unexpected error inside the scheduler fails
every waiting job with :class:`PollerCrashed` instead of leaving them waiting forever.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import BadReplyError, ProviderError, TransientError
from pipeline.jobs import FailKind, Handle, State, TaskStatus
from pipeline.providers.base import Provider
from pipeline.run.context import RunContext
from pipeline.run.retry import CircuitBreaker, Sleeper, backoff, cause, poll_delay
from pipeline.run.slots import Lease

BATCH_SIZE = 50
"""Tasks per batch query (AceData retrieve_batch)."""
PARALLEL_POLLS = 16
"""Polls (or batch queries) in flight at once."""
MAX_BAD_REPLIES = 10
"""Unreadable answers in a row about one task before its job fails (the task id is kept)."""


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    handle: Handle = field(compare=False)
    started: float = field(compare=False)
    future: asyncio.Future[TaskStatus] = field(compare=False, repr=False)
    polls: int = field(default=0, compare=False)
    errors: int = field(default=0, compare=False)
    bad: int = field(default=0, compare=False)
    label: str = field(default="", compare=False)
    """Whose task this is, for the log (``job a``)."""


class TaskTimeout(Exception):
    """The task ran past ``task_timeout``; its id is kept and it may still finish."""


class UnreadableTask(Exception):
    """The provider's answers about this task could not be read, many times in a row."""


class PollerCrashed(Exception):
    """The poller itself failed (a bug): no task can be followed until the next run."""


class Poller:
    def __init__(
        self,
        provider: Provider,
        *,
        interval: float,
        task_timeout: float,
        sleeper: Sleeper,
        rng: random.Random,
        breaker: CircuitBreaker,
        backoff_cap: float = 300.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.provider = provider
        self.log = log or logging.getLogger(__name__)
        self.backoff_cap = backoff_cap
        self.interval = interval
        self.task_timeout = task_timeout
        self.sleeper = sleeper
        self.rng = rng
        self.breaker = breaker
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._gate = asyncio.Semaphore(PARALLEL_POLLS)
        self._inflight: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, _Entry] = {}
        """Every entry whose job still waits, by id(): what a crash must fail."""
        self.calls = 0

    async def wait(
        self, handle: Handle, *, started: float | None = None, label: str = ""
    ) -> TaskStatus:
        """The task's terminal status. Raises TaskTimeout, UnreadableTask, PollerCrashed, or a
        ProviderError the provider answered about this task (e.g. an unknown task id)."""
        now = self.sleeper.monotonic()
        begun = now if started is None else started
        first = now + poll_delay(0, base_interval=self.interval, elapsed=now - begun, rng=self.rng)
        future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        entry = _Entry(first, next(self._seq), handle, begun, future, label=label)
        self._waiting[id(entry)] = entry
        future.add_done_callback(lambda _f: self._waiting.pop(id(entry), None))
        heapq.heappush(self._heap, entry)
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """Serve :meth:`wait` calls until cancelled; a crash fails every waiting job."""
        try:
            await self._schedule()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            crashed = PollerCrashed(f"the poller failed: {type(exc).__name__}: {exc}")
            for entry in list(self._waiting.values()):
                _fail(entry, crashed)
            raise
        finally:
            for task in list(self._inflight):
                task.cancel()

    async def _schedule(self) -> None:
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self.sleeper.monotonic()
            head = self._heap[0].due
            if head > now:
                await self._sleep_until(head - now)
                continue
            while not self.breaker.allow():
                await self.sleeper.sleep(max(self.breaker.retry_in(), 0.05))
            due: list[_Entry] = []
            while self._heap and self._heap[0].due <= now:
                entry = heapq.heappop(self._heap)
                if not entry.future.done():  # its job was cancelled: forget the task here
                    due.append(entry)
            if type(self.provider).has_batch_poll:
                for i in range(0, len(due), BATCH_SIZE):
                    await self._start(self._batch(due[i : i + BATCH_SIZE]))
            else:
                for entry in due:
                    await self._start(self._single(entry))

    async def _sleep_until(self, seconds: float) -> None:
        self._wakeup.clear()
        sleep = asyncio.ensure_future(self.sleeper.sleep(seconds))
        woke = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleep, woke}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woke.cancel()

    async def _start(self, poll: Coroutine[Any, Any, None]) -> None:
        """Run one poll as a task of its own once a slot is free; do not wait for its answer."""
        await self._gate.acquire()

        async def bounded() -> None:
            try:
                await poll
            finally:
                self._gate.release()

        task = asyncio.create_task(bounded(), name="poll")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _batch(self, entries: list[_Entry]) -> None:
        self.calls += 1
        try:
            found = await self.provider.poll_many([e.handle for e in entries])
        except BadReplyError as exc:
            self.breaker.record_success()  # it answered, if badly
            for entry in entries:
                self._bad_reply(entry, exc)
            return
        except TransientError as exc:
            self.breaker.record_failure()
            for entry in entries:
                self._retry_later(entry, exc)
            return
        except ProviderError as exc:
            for entry in entries:
                _fail(entry, exc)
            return
        except Exception as exc:  # a parser bug must cost one poll, not the batch
            for entry in entries:
                self._bad_reply(entry, exc)
            return
        self.breaker.record_success()
        for entry in entries:
            status = found.get(entry.handle.task_id)
            if status is None:
                self._retry_later(entry, None)
            else:
                self._settle(entry, status)

    async def _single(self, entry: _Entry) -> None:
        self.calls += 1
        try:
            status = await self.provider.poll(entry.handle)
        except BadReplyError as exc:
            self.breaker.record_success()
            self._bad_reply(entry, exc)
            return
        except TransientError as exc:
            self.breaker.record_failure()
            self._retry_later(entry, exc)
            return
        except ProviderError as exc:
            _fail(entry, exc)
            return
        except Exception as exc:  # a parser bug must cost one poll, not the batch
            self._bad_reply(entry, exc)
            return
        self.breaker.record_success()
        self._settle(entry, status)

    def _settle(self, entry: _Entry, status: TaskStatus) -> None:
        if status.is_terminal:
            if not entry.future.done():
                entry.future.set_result(status)
            return
        entry.polls += 1
        entry.errors = 0
        entry.bad = 0
        now = self.sleeper.monotonic()
        if self._timed_out(entry, now):
            return
        delay = poll_delay(
            entry.polls, base_interval=self.interval, elapsed=now - entry.started, rng=self.rng
        )
        self._push(entry, now + delay)

    def _bad_reply(self, entry: _Entry, exc: BaseException) -> None:
        entry.bad += 1
        if entry.bad >= MAX_BAD_REPLIES:
            _fail(
                entry,
                UnreadableTask(
                    f"{entry.bad} answers in a row about task {entry.handle.task_id} could not be "
                    f"read (last: {type(exc).__name__}: {exc})"
                ),
            )
            return
        self._retry_later(entry, exc)

    def _retry_later(self, entry: _Entry, exc: BaseException | None) -> None:
        entry.errors += 1
        now = self.sleeper.monotonic()
        if self._timed_out(entry, now):
            return
        jittered = backoff(entry.errors, base=self.interval, cap=self.backoff_cap, rng=self.rng)
        wait = max(self.interval, jittered)
        why = cause(exc) if exc is not None else "missing from the batch answer"
        self.log.warning("%stask %s: status query failed, again in %.1f s (%s)",
                         f"{entry.label}: " if entry.label else "", entry.handle.task_id, wait,
                         why)  # fmt: skip
        self._push(entry, now + wait)

    def _timed_out(self, entry: _Entry, now: float) -> bool:
        if now - entry.started <= self.task_timeout:
            return False
        _fail(entry, TaskTimeout(f"task ran past task_timeout ({self.task_timeout:g} s)"))
        return True

    def _push(self, entry: _Entry, due: float) -> None:
        entry.due = due
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, entry)
        self._wakeup.set()


def _fail(entry: _Entry, exc: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(exc)


class PollStage:
    """The poll stage: follow a task to its end and decide what its end means for the job.

    The provider slot (``lease``) is given back as soon as the task ends, whatever the outcome.
    """

    def __init__(self, ctx: RunContext, poller: Poller) -> None:
        self.ctx = ctx
        self.poller = poller

    async def follow(self, job_id: str, handle: Handle, lease: Lease | None) -> TaskStatus | None:
        """The succeeded task's status, or None with the job moved (or left for the next run)."""
        journal = self.ctx.journal
        try:
            status = await self.poller.wait(handle, label=f"job {job_id}")
        except (TaskTimeout, UnreadableTask) as exc:
            kind = FailKind.TIMEOUT if isinstance(exc, TaskTimeout) else FailKind.UNREADABLE
            kept = f"task {handle.task_id} kept: `run --retry-failed` asks about it again"
            await journal.fail(job_id, kind, f"{exc}; {kept}")
            return None
        except PollerCrashed:
            return None  # the run is stopping; the task still runs and the next run polls it
        except ProviderError as exc:
            # The provider does not know a task it accepted (or refuses to say): it is paid for,
            # so a human decides; `--retry-failed` would pay for it again.
            why = f"the provider no longer answers for task {handle.task_id}: {exc}"
            await journal.move(job_id, State.NEEDS_ATTENTION, error=self.ctx.ambiguous(why, job_id))
            return None
        finally:
            if lease is not None:
                await lease.release()
        if status.phase == "failed":
            await journal.fail(job_id, FailKind.TASK, status.reason or "the task failed")
            return None
        return status
