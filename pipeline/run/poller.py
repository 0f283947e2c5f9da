"""One poller for every running task: polls spent where tasks end, batch queries where they exist.

Jobs ``await poller.wait(handle)`` and get the terminal :class:`~pipeline.jobs.TaskStatus`.
The poller keeps a due time per task, chosen by the policy of :mod:`pipeline.run.schedule`
from what the batch has learned of how long its tasks take (``poll_interval`` is only the finest
gap). When a task is due, its poll is started as a task of its own (bounded by
:data:`PARALLEL_POLLS`) and the scheduler goes on at once: a poll that answers slowly delays that
task only. Where the provider answers many tasks at once (``poll_many``) the tasks due together
share one query per chunk. :meth:`Poller.hint` (a provider's callback said a task ended) moves a
task's poll to now: a hint is never trusted, only the poll's answer is.

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
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from pipeline.errors import BadReplyError, ProviderError, TransientError
from pipeline.jobs import Handle, TaskStatus
from pipeline.providers.base import Provider
from pipeline.run.followed import Followed
from pipeline.run.retry import CircuitBreaker, Sleeper, backoff, cause, poll_delay
from pipeline.run.schedule import Durations, Kind, Policy, ended_after, fraction, next_poll
from pipeline.settings import DEFAULTS

BATCH_SIZE = DEFAULTS.poll_batch
"""Tasks per batch query (AceData retrieve_batch)."""
PARALLEL_POLLS = DEFAULTS.parallel_polls
"""Polls (or batch queries) in flight at once."""
MAX_BAD_REPLIES = DEFAULTS.max_bad_replies
"""Unreadable answers in a row about one task before its job fails (the task id is kept)."""


class TaskTimeout(Exception):
    """The task ran past ``task_timeout``; its id is kept and it may still finish."""


class UnreadableTask(Exception):
    """The provider's answers about this task could not be read, many times in a row."""


class PollerCrashed(Exception):
    """The poller itself failed (a bug): no task can be followed until the next run."""


#: Hinted task ids remembered until a job follows them (see ``Poller._early``).
EARLY_HINTS = 1024


class Poller:
    """``interval`` is the finest gap between two polls of a task; with ``fallback`` (callbacks
    on) the schedule plans no gap under it and a hint brings a poll forward. ``rhythm`` is the
    old fixed rhythm (an interval growing with age), kept as the benchmarks' baseline."""

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
        max_gap: float = DEFAULTS.poll_max_gap,
        fallback: float | None = None,
        rhythm: bool = False,
        age_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.log = log or logging.getLogger(__name__)
        self.backoff_cap = backoff_cap
        self.interval = interval
        self.task_timeout = task_timeout
        planned = max(interval, fallback or 0.0)
        self.policy = Policy(interval=planned, max_gap=max(max_gap, planned), timeout=task_timeout)
        self.rhythm = rhythm
        self.age_clock = age_clock
        """What ``task_timeout`` is read on: the provider's world, so real time even when the
        sleeper only records its waits (a test provider that is itself fake may pass its clock)."""
        self.durations = Durations()
        self.sleeper = sleeper
        self.rng = rng
        self.breaker = breaker
        self._heap: list[tuple[float, int, Followed]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._gate = asyncio.Semaphore(PARALLEL_POLLS)
        self._inflight: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, Followed] = {}
        """Every entry whose job still waits, by id(): what a crash must fail."""
        self._by_task: dict[str, list[Followed]] = {}
        self._early: OrderedDict[str, None] = OrderedDict()
        """Hinted task ids no job follows yet: a task can end, and its callback arrive, before
        the create's answer is committed and its job starts waiting (bounded: forged ids only
        push older ones out)."""
        self.calls = 0
        self.hints = 0
        """Hints that brought a poll forward."""

    async def wait(
        self, handle: Handle, *, label: str = "", kind: Kind | None = None, age: float | None = None
    ) -> TaskStatus:
        """The task's terminal status. Raises TaskTimeout, UnreadableTask, PollerCrashed, or a
        ProviderError the provider answered about this task (e.g. an unknown task id).

        ``age``: None for a task just created; for one an earlier run left (a resumed batch),
        the seconds since it was submitted. Its schedule runs on the sleeper's clock, its
        timeout on ``age_clock``. ``kind`` is what it is like (mode, billed seconds): what its
        schedule is estimated from."""
        resumed = age is not None
        age = max(0.0, age or 0.0)
        now = self.sleeper.monotonic()
        future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        entry = Followed(handle, now - age, future, kind or Kind("", 0),
                         born=self.age_clock() - age, resumed=resumed)  # fmt: skip
        entry.label = label
        self._waiting[id(entry)] = entry
        self._by_task.setdefault(handle.task_id, []).append(entry)
        future.add_done_callback(lambda _f: self._forget(entry))
        if self._early.pop(handle.task_id, False) is None:  # its callback came first: ask now
            entry.hinted = True
            self.hints += 1
            self._push(entry, now)
        elif entry.resumed:  # nobody watched it since its create: where it stands, ask now
            self._push(entry, now)
        else:
            self._push(entry, self._plan(entry, now))
        return await future

    def hint(self, task_id: str) -> bool:
        """Poll this task now (a callback said it ended); False when no job waits for it.

        Never sooner than ``interval`` after its last poll: a flood of forged callbacks costs
        at most one poll per task per interval."""
        entries = [e for e in self._by_task.get(task_id, ()) if not e.future.done()]
        now = self.sleeper.monotonic()
        if not entries:
            self._early[task_id] = None
            self._early.move_to_end(task_id)
            while len(self._early) > EARLY_HINTS:
                self._early.popitem(last=False)
        for entry in entries:
            if not entry.queued:  # its poll is on the wire: ask once more when it answers
                entry.hinted = True
                continue
            due = max(now, (entry.asked_at or entry.started) + self.interval)
            if due < entry.due:
                entry.hinted = True
                self.hints += 1
                self._push(entry, due)
        return bool(entries)

    def _forget(self, entry: Followed) -> None:
        self._waiting.pop(id(entry), None)
        same = self._by_task.get(entry.handle.task_id, [])
        if entry in same:
            same.remove(entry)
        if not same:
            self._by_task.pop(entry.handle.task_id, None)

    def _plan(self, entry: Followed, now: float) -> float:
        """When to ask about a task next, after a poll that saw it running (or at its start)."""
        if self.rhythm:
            age = now - entry.started
            return now + poll_delay(entry.polls, base_interval=self.interval, elapsed=age,
                                    rng=self.rng)  # fmt: skip
        estimate = self.durations.estimate(entry.kind)
        entry.cold = estimate is None and entry.progress is None
        polls = () if entry.asked_at is None else (entry.asked_at,)
        return next_poll(self.policy, now=now, submitted_at=entry.started, polls=polls,
                         estimate=estimate, progress=entry.progress)  # fmt: skip

    def _learn(self, entry: Followed, now: float, reported: float | None) -> None:
        """A task succeeded: its end teaches the schedule (``reported``: how long the provider
        says it ran); tasks planned blind are re-planned."""
        if self.rhythm or entry.asked_at is None:
            return
        if entry.resumed and entry.last_running is None and reported is None:
            return  # it ended in the gap between the runs: when, nobody saw
        age = entry.asked_at - entry.started
        resolution = 0.0 if entry.by_hint else self.policy.resolution(age, self.interval)
        seconds = ended_after(submitted_at=entry.started, last_running=entry.last_running,
                              done_at=entry.asked_at, resolution=resolution,
                              reported=reported)  # fmt: skip
        self.durations.learn(entry.kind, seconds)
        for other in list(self._waiting.values()):
            if other.cold and other.queued:
                due = self._plan(other, now)
                if due < other.due:
                    self._push(other, due)

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
            head = self._heap[0][0]
            if head > now:
                await self._sleep_until(head - now)
                continue
            while not self.breaker.allow():
                await self.sleeper.sleep(max(self.breaker.retry_in(), 0.05))
            due: list[Followed] = []
            while self._heap and self._heap[0][0] <= now:
                _, seq, entry = heapq.heappop(self._heap)
                if seq != entry.seq or entry.future.done():  # moved since, or its job is gone
                    continue
                entry.queued = False
                entry.asked_at = now
                entry.by_hint, entry.hinted = entry.hinted, False
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

    async def _batch(self, entries: list[Followed]) -> None:
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

    async def _single(self, entry: Followed) -> None:
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

    def _settle(self, entry: Followed, status: TaskStatus) -> None:
        now = self.sleeper.monotonic()
        if status.is_terminal:
            if not entry.future.done():
                entry.future.set_result(status)
            if status.phase == "succeeded":
                self._learn(entry, now, status.ran_seconds)
            return
        entry.polls += 1
        entry.errors = 0
        entry.bad = 0
        entry.last_running = entry.asked_at
        entry.progress = fraction(status.progress)
        if self._timed_out(entry):
            return
        if entry.hinted:  # a callback came while this poll was out: it may be stale already
            self._push(entry, now + self.interval)
            return
        self._push(entry, self._plan(entry, now))

    def _bad_reply(self, entry: Followed, exc: BaseException) -> None:
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

    def _retry_later(self, entry: Followed, exc: BaseException | None) -> None:
        entry.errors += 1
        now = self.sleeper.monotonic()
        if self._timed_out(entry):
            return
        jittered = backoff(entry.errors, base=self.interval, cap=self.backoff_cap, rng=self.rng)
        wait = max(self.interval, jittered)
        why = cause(exc) if exc is not None else "missing from the batch answer"
        self.log.warning("%stask %s: status query failed, again in %.1f s (%s)",
                         f"{entry.label}: " if entry.label else "", entry.handle.task_id, wait,
                         why)  # fmt: skip
        self._push(entry, now + wait)

    def _timed_out(self, entry: Followed) -> bool:
        if self.age_clock() - entry.born < self.task_timeout:
            return False
        _fail(entry, TaskTimeout(f"task ran past task_timeout ({self.task_timeout:g} s)"))
        return True

    def _push(self, entry: Followed, due: float) -> None:
        """(Re)schedule ``entry``; an earlier heap item of it becomes stale."""
        entry.due = due
        entry.seq = next(self._seq)
        entry.queued = True
        heapq.heappush(self._heap, (due, entry.seq, entry))
        self._wakeup.set()


def _fail(entry: Followed, exc: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(exc)
