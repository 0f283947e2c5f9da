"""The batch engine: submit, poll and download every job of a manifest, resumably.

Per job (design.md §3): commit the intent (``submitting``, with a client id) -> POST create ->
commit the task id before anything else -> poll -> commit the result URL -> download to a temp
file, verify, rename -> commit ``done``. Every state change goes through the group committer,
so intents of many jobs share one fsync. A create whose outcome is unknown is reconciled by
client id where the provider has one, else the job ``needs_attention`` and is never re-sent
automatically. Batch-wide conditions (bad key, no credits, budget, disk full, Ctrl-C) stop new
creates only: tasks already paid for are still collected, except on Ctrl-C, where they are
left for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline import providers
from pipeline.dataset import results as outputs
from pipeline.dataset.metadata import rewrite_metadata
from pipeline.errors import BatchStopped
from pipeline.jobs import RECHECK, State
from pipeline.plan.money import Money, paid
from pipeline.progress.events import Notice, Waiting
from pipeline.run.base import RunOptions
from pipeline.run.crashpoints import arm
from pipeline.run.outage import WatchingTransport
from pipeline.run.poll import Poller
from pipeline.run.retry import BreakerState
from pipeline.run.session import endpoint
from pipeline.run.submitting import Submitter
from pipeline.state.commits import GroupCommitter
from pipeline.storage.uploads import Storage

__all__ = ["Batch", "RunOptions", "RunSummary"]


@dataclass
class RunSummary:
    counts: dict[State, int]
    exit_code: int
    stop_reason: str | None = None
    seconds_billed: float = 0.0
    wall_seconds: float = 0.0
    http_requests: int = 0
    submitted: int = 0
    occupancy: float | None = None
    """Share of provider slots in use while jobs were waiting for one (None: never saturated)."""
    paid_now: Money = field(default_factory=Money)
    """What this run paid: its creates (ambiguous ones included), their seconds and cost."""
    batch_paid: Money = field(default_factory=Money)
    """What the batch has paid, this run and every earlier one."""
    to_pay: Money = field(default_factory=Money)
    """What this run expected to pay when it started (the plan's estimate)."""
    currency: str = "USD"
    extra: dict[str, Any] = field(default_factory=dict)


TICK = 1.0
"""Seconds between the run's periodic checks (outage, progress line)."""


class Batch(Submitter):
    """One run of one manifest against its state. Built by :func:`pipeline.run.batch.run_batch`."""

    async def run(self) -> RunSummary:
        started = time.monotonic()
        arm(self.settings)
        self.videos.mkdir(parents=True, exist_ok=True)
        outputs.remove_partials(self.videos)  # a killed run's half downloads; we hold the lock
        self._count_committed()
        for row in self.store.rows([State.NEEDS_ATTENTION]):
            self.unsettled.setdefault(row.key, row.id)
        limits = httpx.Limits(max_connections=max(32, 2 * self.concurrency))
        timeout = httpx.Timeout(60.0, connect=15.0)
        with endpoint(self.manifest, self.tools) as config:

            async def count(_request: httpx.Request) -> None:
                self.requests += 1

            hosts = {httpx.URL(u).host for u in (config.base_url, config.upload_url) if u}
            transport = WatchingTransport(
                httpx.AsyncHTTPTransport(limits=limits), self.outage, hosts
            )
            async with httpx.AsyncClient(
                transport=transport, timeout=timeout, event_hooks={"request": [count]}
            ) as client:
                cls = providers.get(config.name)
                self.client = client
                self.provider = cls(config, self.credentials, client)
                self.storage = Storage(self.provider, config, self.store.uploads)
                self.poller = Poller(
                    self.provider,
                    interval=config.poll_interval,
                    task_timeout=config.task_timeout,
                    sleeper=self.sleeper,
                    rng=self.rng,
                    breaker=self.breaker,
                    log=self.log,
                )
                loop = asyncio.get_running_loop()

                def disk_full() -> bool:  # called from the commit thread
                    loop.call_soon_threadsafe(self.stop_new, self.disk.shortage() or "disk full", 3)
                    return self.disk.release()

                committer = GroupCommitter(self.store, on_disk_full=disk_full)
                async with committer as self.commits:
                    await self._work()
        try:
            rewrite_metadata(self.store, self.planned, self.config, self.manifest.output_dir)
        except BatchStopped as exc:
            self.stop_new(str(exc), exc.exit_code)
        return self._summary(started)

    async def _work(self) -> None:
        main = asyncio.current_task()
        if main is None:  # asyncio.run always gives one; say so rather than misbehave
            raise RuntimeError("Batch.run must run inside an asyncio task")
        self.halt.attach(main, lambda: self.creates_in_flight)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.halt.abort, "interrupted", 130)
        poller = asyncio.create_task(self.poller.run(), name="poller")
        # Nothing can be collected without the poller: its crash stops the run at once.
        poller.add_done_callback(self._watch("the poller"))
        ticker = asyncio.create_task(self._tick(), name="ticker")
        ticker.add_done_callback(self._watch("the ticker"))
        try:
            async with asyncio.TaskGroup() as tg:
                self._resume_all(tg)
                tg.create_task(self._guarded("the feed", self._feed(tg)), name="feed")
        except asyncio.CancelledError:
            if not self.halt.aborted:
                raise
            main.uncancel()
        finally:
            for task in (poller, ticker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _tick(self) -> None:
        """Once a second, in real time (also when tests record waits): is the provider gone,
        what does the batch wait for, and a tick for the progress display."""
        shown = Waiting()
        while True:
            await asyncio.sleep(TICK)
            verdict = self.outage.verdict()
            if verdict is not None and not self.halt.aborted:
                self.log.error("%s", verdict)
                self.halt.abort(verdict, 3)
            waiting = self._waiting_for()
            if waiting != shown:
                shown = waiting
                self.reporter.emit(waiting)
                if waiting.reason:
                    self.log.info("waiting: %s", waiting.reason)
            self.reporter.tick(time.time())

    def _waiting_for(self) -> Waiting:
        """What the batch as a whole waits for now, most pressing first (the until in Unix time)."""
        mono, wall = self.sleeper.monotonic(), time.time()
        streak = self.outage.streak
        if streak is not None:
            gives_up = wall + max(0.0, streak.since + self.outage.limit - time.monotonic())
            return Waiting(f"provider unreachable ({streak.host}): retrying, {streak.last_error}",
                           gives_up)  # fmt: skip
        if self.gate.remaining > 0:
            return Waiting("429 pause: the provider asked to slow down", wall + self.gate.remaining)
        if self.breaker.state is not BreakerState.CLOSED:
            return Waiting("circuit breaker open: the provider keeps failing",
                           wall + self.breaker.retry_in())  # fmt: skip
        slot = self.limiter.next_free(mono)
        if slot > mono + 0.5:
            rate = self.config.rate_limit
            return Waiting(f"rate limit: {rate.requests} creates per {rate.per_seconds:g} s",
                           wall + slot - mono)  # fmt: skip
        if self.halt.reason is not None and self.creates_in_flight == 0:
            return Waiting(f"no new submissions ({self.halt.reason}): collecting paid tasks")
        return Waiting()

    def _watch(self, where: str) -> Callable[[asyncio.Task[Any]], None]:
        """A done-callback for a background task whose failure must stop the run now."""

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            if exc is not None:
                self._internal_error(where, exc, abort=True)

        return done

    async def _guarded(self, where: str, work: Awaitable[None]) -> None:
        """Run one job's (or the feed's) work; a bug in it stops new work, never the others."""
        try:
            await work
        except BatchStopped as exc:  # the disk: every later job would hit it too
            self.stop_new(str(exc), exc.exit_code)
        except Exception as exc:  # a bug: the state is consistent (every move is atomic)
            self._internal_error(where, exc, abort=False)

    def _internal_error(self, where: str, exc: BaseException, *, abort: bool) -> None:
        reason = self.halt.internal_error(where, exc, abort=abort)
        self.log.error("%s", reason, exc_info=(type(exc), exc, exc.__traceback__))

    def _resume_all(self, tg: asyncio.TaskGroup) -> None:
        for row in self.store.rows([State.SUBMITTING, State.RUNNING, State.DOWNLOADING]):
            # Orphans too: a paid task is collected whatever the manifest now says.
            self.resumed.add(row.id)
            if row.state is State.SUBMITTING:
                resume = self._resume_submitting(row)
            else:
                resume = self._resume(
                    row, self.slots.take() if row.state is State.RUNNING else None
                )
            work = self._guarded(f"job {row.id}", resume)
            self._track(row.key, tg.create_task(work, name=f"resume:{row.id}"))
        if self.options.retry_failed:
            for row in self.store.rows([State.FAILED]):
                if row.id in self.planned and row.task_id and row.fail_kind in RECHECK:
                    lease = self.slots.take()
                    work = self._guarded(f"job {row.id}", self._recheck(row, lease))
                    tg.create_task(work, name=f"recheck:{row.id}")

    def _fresh_ids(self) -> Iterator[str]:
        states = [State.PENDING] + ([State.FAILED] if self.options.retry_failed else [])
        for summary in self.store.summaries(states):
            if summary.id not in self.planned or summary.id in self.resumed:
                continue
            if summary.state is State.FAILED and summary.task_id and summary.fail_kind in RECHECK:
                continue  # re-checked, never re-submitted blindly
            yield summary.id

    async def _feed(self, tg: asyncio.TaskGroup) -> None:
        """Start fresh jobs, keeping only a bounded look-ahead in memory."""
        admission = asyncio.Semaphore(2 * self.concurrency + 2)
        for started, job_id in enumerate(self._fresh_ids()):
            if self.stopping:
                return
            if self.options.max_jobs is not None and started >= self.options.max_jobs:
                self.reporter.emit(Notice(f"--max-jobs {self.options.max_jobs} reached", "info"))
                return
            await admission.acquire()
            key = self.planned[job_id].key
            ahead = self.latest.get(key)

            async def job(job_id: str = job_id, ahead: asyncio.Task[Any] | None = ahead) -> None:
                try:
                    if ahead is not None:
                        # The same generation is already on its way: adopt it, do not pay again.
                        await asyncio.wait([ahead])
                    await self._fresh(job_id)
                finally:
                    admission.release()

            work = self._guarded(f"job {job_id}", job())
            self._track(key, tg.create_task(work, name=f"job:{job_id}"))

    def _track(self, key: str, task: asyncio.Task[Any]) -> None:
        self.latest[key] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self.latest.get(key) is done:
                del self.latest[key]

        task.add_done_callback(forget)

    # ------------------------------------------------------------------ bookkeeping

    def _count_committed(self) -> None:
        for row in self.store.rows():
            if row.state is State.PENDING or (row.state is State.FAILED and not row.task_id):
                continue
            seconds = row.billed_seconds or 0.0
            pj = self.planned.get(row.id)
            mode = pj.job.settings.mode if pj else row.spec.get("settings", {}).get("mode", "std")
            self.spending.count(row.id, seconds, self.manifest.budget.cost(mode, seconds) or 0.0)

    def _summary(self, started: float) -> RunSummary:
        counts = self.store.counts()
        planned = set(self.planned)
        if self.halt.code:
            code = self.halt.code
        elif counts[State.FAILED] or counts[State.NEEDS_ATTENTION] or self._unfinished(planned):
            code = 1
        else:
            code = 0
        seconds = sum(
            (r.billed_seconds or 0.0) for r in self.store.rows([State.DONE]) if r.id in planned
        )
        creates, now_seconds, now_cost = self.spending.this_run()
        priced = bool(self.manifest.budget.price_per_second)
        return RunSummary(
            paid_now=Money(creates, now_seconds, now_cost if priced else None),
            batch_paid=paid(self.store.brief(), self.manifest.budget),
            currency=self.manifest.budget.currency,
            counts=counts,
            exit_code=code,
            stop_reason=self.halt.reason,
            seconds_billed=seconds,
            wall_seconds=time.monotonic() - started,
            http_requests=self.requests,
            submitted=self.submitted,
            occupancy=self.slots.occupancy(),
        )

    def _unfinished(self, planned: set[str]) -> bool:
        """A job of the manifest is not done yet, though nothing stopped the run (exit 1, not 0)."""
        in_flight = [State.SUBMITTING, State.RUNNING, State.DOWNLOADING]
        if self.store.summaries(in_flight):  # a paid task left to collect, orphans included
            return True
        if self.options.max_jobs is not None:  # --max-jobs leaves the rest pending on purpose
            return False
        return any(s.id in planned for s in self.store.summaries([State.PENDING]))
