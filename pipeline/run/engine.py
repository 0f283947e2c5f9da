"""The batch engine: one line per job through the stages, resumably.

    inputs (prepare, upload) -> submit (intent, create, task id) -> poll -> download -> done

:data:`RESUME` says where each stored state re-enters that line. The engine owns what is
shared between lines: the feed (fresh jobs in manifest order, a bounded look-ahead), same-key
twins (a twin waits for the job already on its way, then adopts its result), the supervision of
background work (a bug stops the run with a message, never a hang) and the signals (Ctrl-C lets
creates on the wire commit their task ids, then stops). The stages get their dependencies in a
frozen :class:`~pipeline.run.context.RunContext`; the engine builds it once the event loop, the
HTTP client and the provider exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx

from pipeline import providers
from pipeline.dataset import results
from pipeline.dataset.metadata import rewrite_metadata
from pipeline.errors import BatchStopped
from pipeline.jobs import RECHECK, Handle, State
from pipeline.manifest.model import Manifest
from pipeline.media.tools import MediaTools
from pipeline.plan.build import Plan
from pipeline.progress.events import Notice, Reporter
from pipeline.providers.base import Credentials
from pipeline.run.budget import Spending
from pipeline.run.callbacks import open_listener
from pipeline.run.calls import Calls
from pipeline.run.context import RunContext
from pipeline.run.crashpoints import arm
from pipeline.run.disk import DiskGuard
from pipeline.run.download import DownloadStage
from pipeline.run.halt import Halt
from pipeline.run.inputs import InputsStage
from pipeline.run.journal import Journal
from pipeline.run.options import RunOptions
from pipeline.run.outage import Outage
from pipeline.run.poll import PollStage
from pipeline.run.poller import Poller
from pipeline.run.session import endpoint, run_client, run_secrets
from pipeline.run.slots import Lease, Slots
from pipeline.run.submit import SubmitStage
from pipeline.run.summary import RunSummary, committed, summarize_run
from pipeline.run.ticker import Ticker
from pipeline.settings import Settings
from pipeline.state.commits import GroupCommitter
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore
from pipeline.storage.uploads import storage_for_run

#: Where each stored state re-enters a job's line when a run starts.
RESUME: Mapping[State, str] = {
    State.PENDING: "inputs -> submit -> poll -> download (fed in manifest order)",
    State.SUBMITTING: "look the create up by client id -> poll -> download; else needs attention",
    State.RUNNING: "poll -> download",
    State.DOWNLOADING: "keep the result a killed run renamed into place; else poll -> download",
    State.FAILED: "with --retry-failed: a timed-out or unreadable task is polled again; "
    "any other failure is submitted again (pending)",
}


class Engine:
    """One run of one manifest against its state. Built by :func:`pipeline.run.batch.run_batch`."""

    def __init__(
        self,
        manifest: Manifest,
        plan: Plan,
        store: StateStore,
        settings: Settings,
        options: RunOptions,
        reporter: Reporter,
        credentials: Credentials,
        tools: MediaTools,
        log: logging.Logger,
        disk: DiskGuard,
    ) -> None:
        self.manifest = manifest
        self.planned = {pj.job.id: pj for pj in plan.jobs}
        self.store = store
        self.settings = settings
        self.options = options
        self.reporter = reporter
        self.credentials = credentials
        self.tools = tools
        self.log = log
        self.disk = disk
        self.secrets = run_secrets(manifest, credentials, settings)
        self.halt = Halt(self._announce_stop)
        self.outage = Outage(time.monotonic, limit=settings.outage_seconds)
        self.spending = Spending(manifest.budget)
        concurrency = options.concurrency or manifest.provider.concurrency
        self.slots = Slots(concurrency, time.monotonic)
        self.lookahead = 2 * concurrency + 2
        self.requests = 0
        self.latest: dict[str, asyncio.Task[Any]] = {}
        """The newest line per job key: a same-key twin waits for it, then adopts its result."""

    # ------------------------------------------------------------------ set-up

    async def run(self) -> RunSummary:
        started = time.monotonic()
        arm(self.settings)
        videos = self.manifest.output_dir / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        results.remove_partials(videos)  # a killed run's half downloads; we hold the lock
        self._count_committed()
        with endpoint(self.manifest, self.tools) as config:

            async def count(_request: httpx.Request) -> None:
                self.requests += 1

            async with run_client(config, self.outage, count) as client:
                provider = providers.get(config.name)(config, self.credentials, client)
                loop = asyncio.get_running_loop()

                def disk_full() -> bool:  # called from the commit thread
                    reason = self.disk.shortage() or "disk full"
                    loop.call_soon_threadsafe(self.halt.stop_new, reason, 3)
                    return self.disk.release()

                async with GroupCommitter(self.store, on_disk_full=disk_full) as commits:
                    ctx = self._context(config, provider, client, commits)
                    await self._work(ctx)
        try:
            rewrite_metadata(
                self.store, self.planned, self.manifest.provider, self.manifest.output_dir
            )
        except BatchStopped as exc:
            self.halt.stop_new(str(exc), exc.exit_code)
        return self._summary(started)

    def _context(
        self, config: Any, provider: Any, client: httpx.AsyncClient, commits: GroupCommitter
    ) -> RunContext:
        journal = Journal(self.store, commits, self.reporter, self.log, self.secrets)
        calls = Calls.for_run(
            self.settings, config.rate_limit, self.halt, self.log, self.secrets, journal.notice
        )
        return RunContext(
            manifest=self.manifest,
            planned=self.planned,
            options=self.options,
            settings=self.settings,
            store=self.store,
            journal=journal,
            provider=provider,
            client=client,
            storage=storage_for_run(
                self.manifest, provider, config, self.store.uploads, self.settings
            ),
            tools=self.tools,
            calls=calls,
            halt=self.halt,
            spending=self.spending,
            disk=self.disk,
            slots=self.slots,
            log=self.log,
        )

    # ------------------------------------------------------------------ the lines

    async def _work(self, ctx: RunContext) -> None:
        main = asyncio.current_task()
        if main is None:  # asyncio.run always gives one; say so rather than misbehave
            raise RuntimeError("Engine.run must run inside an asyncio task")
        calls, config = ctx.calls, ctx.manifest.provider
        poller = Poller(
            ctx.provider,
            interval=config.poll_interval,
            task_timeout=config.task_timeout,
            sleeper=calls.sleeper,
            rng=calls.rng,
            breaker=calls.breaker,
            log=self.log,
            rhythm=self.settings.poll_schedule == "rhythm",
            fallback=hook.fallback_poll if (hook := ctx.manifest.callback) else None,
        )
        listener = await open_listener(hook, poller.hint, self.log)  # in use: exit 2, none sent
        self.inputs = InputsStage(ctx)
        self.submit = SubmitStage(ctx)
        self.poll = PollStage(ctx, poller)
        self.download = DownloadStage(ctx)
        self.ctx = ctx
        self.halt.attach(main, lambda: self.submit.in_flight)
        ticker = Ticker(
            calls=calls,
            outage=self.outage,
            halt=self.halt,
            reporter=self.reporter,
            rate=config.rate_limit,
            creates_in_flight=lambda: self.submit.in_flight,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.halt.abort, "interrupted", 130)
        background = []
        for name, work in (("the poller", poller.run()), ("the ticker", ticker.run())):
            task = asyncio.create_task(work, name=name)
            # Nothing can be collected without the poller: its crash stops the run at once.
            task.add_done_callback(self._watch(name))
            background.append(task)
        try:
            if not await self.inputs.storage_ready():
                return
            async with asyncio.TaskGroup() as tg:
                resumed = self._resume_all(tg)
                tg.create_task(self._guarded("the feed", self._feed(tg, resumed)), name="feed")
        except asyncio.CancelledError:
            if not self.halt.aborted:
                raise
            main.uncancel()
        finally:
            if listener is not None:
                await listener.close()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _fresh_line(self, job_id: str) -> None:
        """A pending job: inputs -> submit -> poll -> download."""
        pj = self.planned[job_id]
        if await self.submit.settled_without_paying(pj):
            return
        ready = await self.inputs.ready_or_none(pj)
        if ready is None:
            return
        lease = await self.slots.acquire()
        try:
            handle = await self.submit.create(pj, ready)
            if handle is not None:
                await self._collect(job_id, handle, lease)
        finally:
            await lease.release()

    async def _collect(
        self, job_id: str, handle: Handle, lease: Lease | None, since: str | None = None
    ) -> None:
        """A job with a task: poll to its end (the slot is given back then), then download.
        ``since``: when an earlier run submitted it (its age counts from then)."""
        status = await self.poll.follow(job_id, handle, lease, since=since)
        if status is None:
            return
        await self.ctx.journal.move(job_id, State.DOWNLOADING, result_url=status.result_url)
        await self.download.fetch(job_id, handle, status)

    async def _resume_line(self, row: JobRow) -> None:
        """Where a stored state re-enters the line (:data:`RESUME`); never a second create."""
        journal = self.ctx.journal
        if row.state is State.SUBMITTING:
            found = await self.submit.resume(row)
            if found is not None:
                await self._collect(row.id, found, self.slots.take(), row.submitted_at)
            elif self._may_submit(row.id):  # the create never happened: submit it, once
                await self._fresh_line(row.id)
            return
        if row.state is State.DOWNLOADING:
            existing = await self.download.existing(row)
            if existing is not None:
                await self.download.finish(row.id, existing)
                return
            await journal.move(row.id, State.RUNNING, expect=State.DOWNLOADING)
        since = row.submitted_at
        if row.state is State.FAILED:  # --retry-failed on a task that may still be alive
            await journal.move(row.id, State.RUNNING, expect=State.FAILED, error=None)
            since = None  # asked to wait for it again: a whole task_timeout more
        if row.task_id is None:  # cannot happen for a collecting row; say so rather than guess
            raise RuntimeError(f"job {row.id} is {row.state.value} without a task id")
        handle = Handle(self.manifest.provider.name, row.task_id, row.client_id)
        await self._collect(row.id, handle, self.slots.take(), since)

    def _may_submit(self, job_id: str) -> bool:
        return (
            not self.halt.stopping
            and job_id in self.planned
            and self.store.get(job_id).state is State.PENDING
        )

    def _resume_all(self, tg: asyncio.TaskGroup) -> set[str]:
        """Start a line for every job an earlier run left with a task (orphans included: a
        paid task is collected whatever the manifest now says); the ids resumed."""
        resumed: set[str] = set()
        rows = list(self.store.rows([State.SUBMITTING, State.RUNNING, State.DOWNLOADING]))
        if self.options.retry_failed:
            rows += [
                r
                for r in self.store.rows([State.FAILED])
                if r.id in self.planned and r.task_id and r.fail_kind in RECHECK
            ]
        for row in rows:
            resumed.add(row.id)
            work = self._guarded(f"job {row.id}", self._resume_line(row))
            self._track(row.key, tg.create_task(work, name=f"resume:{row.id}"))
        return resumed

    def _fresh_ids(self, resumed: set[str]) -> Iterator[str]:
        states = [State.PENDING] + ([State.FAILED] if self.options.retry_failed else [])
        for summary in self.store.summaries(states):
            if summary.id not in self.planned or summary.id in resumed:
                continue
            yield summary.id

    async def _feed(self, tg: asyncio.TaskGroup, resumed: set[str]) -> None:
        """Start fresh jobs in manifest order, keeping only a bounded look-ahead in memory."""
        admission = asyncio.Semaphore(self.lookahead)
        max_jobs = self.options.max_jobs
        for started, job_id in enumerate(self._fresh_ids(resumed)):
            if self.halt.stopping:
                return
            if max_jobs is not None and started >= max_jobs:
                self.reporter.emit(Notice(f"--max-jobs {max_jobs} reached", "info"))
                return
            await admission.acquire()
            key = self.planned[job_id].key
            ahead = self.latest.get(key)

            async def line(job_id: str = job_id, ahead: asyncio.Task[Any] | None = ahead) -> None:
                try:
                    if ahead is not None:
                        # The same generation is already on its way: adopt it, do not pay again.
                        await asyncio.wait([ahead])
                    await self._fresh_line(job_id)
                finally:
                    admission.release()

            work = self._guarded(f"job {job_id}", line())
            self._track(key, tg.create_task(work, name=f"job:{job_id}"))

    def _track(self, key: str, task: asyncio.Task[Any]) -> None:
        self.latest[key] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self.latest.get(key) is done:
                del self.latest[key]

        task.add_done_callback(forget)

    # ------------------------------------------------------------------ supervision

    def _watch(self, where: str) -> Callable[[asyncio.Task[Any]], None]:
        """A done-callback for a background task whose failure must stop the run now."""

        def done(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                self._internal_error(where, exc, abort=True)

        return done

    async def _guarded(self, where: str, work: Awaitable[None]) -> None:
        """Run one job's (or the feed's) line; a bug in it stops new work, never the others."""
        try:
            await work
        except BatchStopped as exc:  # the disk: every later job would hit it too
            self.halt.stop_new(str(exc), exc.exit_code)
        except Exception as exc:  # a bug: the state is consistent (every move is atomic)
            self._internal_error(where, exc, abort=False)

    def _internal_error(self, where: str, exc: BaseException, *, abort: bool) -> None:
        reason = self.halt.internal_error(where, exc, abort=abort)
        self.log.error("%s", reason, exc_info=(type(exc), exc, exc.__traceback__))

    def _announce_stop(self, reason: str) -> None:
        self.reporter.emit(Notice(f"stopping new submissions: {reason}", "warning"))
        self.log.warning("stopping new submissions: %s", reason)

    # ------------------------------------------------------------------ bookkeeping

    def _count_committed(self) -> None:
        """Book what earlier runs submitted against the budget (it is spent, or on its way)."""
        for job_id, seconds, cost in committed(self.store, self.planned, self.manifest.budget):
            self.spending.count(job_id, seconds, cost)

    def _summary(self, started: float) -> RunSummary:
        creates, seconds, cost = self.spending.this_run()
        submit = getattr(self, "submit", None)
        return summarize_run(
            self.store,
            self.planned,
            self.manifest.budget,
            self.options,
            stopped=self.halt.code,
            stop_reason=self.halt.reason,
            wall_seconds=time.monotonic() - started,
            http_requests=self.requests,
            submitted=submit.submitted if submit is not None else 0,
            occupancy=self.slots.occupancy(),
            this_run=(creates, seconds, cost),
        )
