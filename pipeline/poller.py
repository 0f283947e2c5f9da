"""One poller for every running task: adaptive intervals, batch queries where the provider has them.

Jobs ``await poller.wait(handle)`` and get the terminal :class:`~pipeline.jobs.TaskStatus`.
The poller keeps a due time per task; each round it asks about every task that is due, in one
``poll_many`` call per chunk when the provider answers many at once, else one poll per task
(bounded). Transport trouble is not a failed job: the task is asked again later, with backoff,
and a streak of it opens the circuit breaker so a sick provider is not hammered.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from dataclasses import dataclass, field

from pipeline.errors import ProviderError, RefusedError, TransientError
from pipeline.jobs import Handle, TaskStatus
from pipeline.providers.base import Provider
from pipeline.retry import CircuitBreaker, Sleeper, backoff, poll_delay

BATCH_SIZE = 50
"""Tasks per batch query (AceData retrieve_batch)."""
PARALLEL_POLLS = 16
"""Single-task polls in flight at once."""


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    handle: Handle = field(compare=False)
    started: float = field(compare=False)
    future: asyncio.Future[TaskStatus] = field(compare=False, repr=False)
    polls: int = field(default=0, compare=False)
    errors: int = field(default=0, compare=False)


class TaskTimeout(Exception):
    """The task ran past ``task_timeout``; its id is kept and it may still finish."""


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
    ) -> None:
        self.provider = provider
        self.interval = interval
        self.task_timeout = task_timeout
        self.sleeper = sleeper
        self.rng = rng
        self.breaker = breaker
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self.calls = 0

    async def wait(self, handle: Handle, *, started: float | None = None) -> TaskStatus:
        """The task's terminal status. Raises TaskTimeout, or RefusedError (unknown task)."""
        now = self.sleeper.monotonic()
        begun = now if started is None else started
        first = now + poll_delay(0, base_interval=self.interval, elapsed=now - begun, rng=self.rng)
        future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Entry(first, next(self._seq), handle, begun, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """Serve :meth:`wait` calls until cancelled."""
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self.sleeper.monotonic()
            head = self._heap[0].due
            if head > now:
                self._wakeup.clear()
                sleep = asyncio.ensure_future(self.sleeper.sleep(head - now))
                woke = asyncio.ensure_future(self._wakeup.wait())
                _, pending = await asyncio.wait({sleep, woke}, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                continue
            while not self.breaker.allow():
                await self.sleeper.sleep(max(self.breaker.retry_in(), 0.05))
            due: list[_Entry] = []
            while self._heap and self._heap[0].due <= now:
                entry = heapq.heappop(self._heap)
                if not entry.future.done():  # its job was cancelled: forget the task here
                    due.append(entry)
            await self._round(due)

    async def _round(self, due: list[_Entry]) -> None:
        if type(self.provider).has_batch_poll:
            chunks = [due[i : i + BATCH_SIZE] for i in range(0, len(due), BATCH_SIZE)]
            await asyncio.gather(*(self._batch(chunk) for chunk in chunks))
        else:
            gate = asyncio.Semaphore(PARALLEL_POLLS)

            async def one(entry: _Entry) -> None:
                async with gate:
                    await self._single(entry)

            await asyncio.gather(*(one(e) for e in due))

    async def _batch(self, entries: list[_Entry]) -> None:
        self.calls += 1
        try:
            found = await self.provider.poll_many([e.handle for e in entries])
        except TransientError:
            self.breaker.record_failure()
            for entry in entries:
                self._retry_later(entry)
            return
        except ProviderError as exc:
            for entry in entries:
                _fail(entry, exc)
            return
        self.breaker.record_success()
        for entry in entries:
            status = found.get(entry.handle.task_id)
            if status is None:
                self._retry_later(entry)
            else:
                self._settle(entry, status)

    async def _single(self, entry: _Entry) -> None:
        self.calls += 1
        try:
            status = await self.provider.poll(entry.handle)
        except TransientError:
            self.breaker.record_failure()
            self._retry_later(entry)
            return
        except RefusedError as exc:
            _fail(entry, exc)
            return
        except ProviderError as exc:
            _fail(entry, exc)
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
        now = self.sleeper.monotonic()
        if now - entry.started > self.task_timeout:
            _fail(entry, TaskTimeout(f"task ran past task_timeout ({self.task_timeout:g} s)"))
            return
        delay = poll_delay(
            entry.polls, base_interval=self.interval, elapsed=now - entry.started, rng=self.rng
        )
        self._push(entry, now + delay)

    def _retry_later(self, entry: _Entry) -> None:
        entry.errors += 1
        now = self.sleeper.monotonic()
        if now - entry.started > self.task_timeout:
            _fail(entry, TaskTimeout(f"task ran past task_timeout ({self.task_timeout:g} s)"))
            return
        wait = max(
            self.interval, backoff(entry.errors, base=self.interval, cap=300.0, rng=self.rng)
        )
        self._push(entry, now + wait)

    def _push(self, entry: _Entry, due: float) -> None:
        entry.due = due
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, entry)


def _fail(entry: _Entry, exc: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(exc)
