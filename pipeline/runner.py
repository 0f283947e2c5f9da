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
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pipeline import outputs, providers
from pipeline.commits import GroupCommitter
from pipeline.crashpoints import arm, crash_point
from pipeline.errors import (
    AmbiguousError,
    BatchFatalError,
    BatchStopped,
    InputError,
    MissingKeyError,
    OutputConflictError,
    ProviderError,
    RateLimitedError,
    RefusedError,
    ResultExpiredError,
    TransientError,
)
from pipeline.jobs import Handle, State, TaskStatus
from pipeline.manifest import Manifest
from pipeline.media import MediaTools
from pipeline.mediaprep import PreparedMedia, prepare
from pipeline.planning import Plan, PlannedJob, cache_dir
from pipeline.poller import Poller, TaskTimeout
from pipeline.providers.base import Credentials, InputURLs, Provider, ProviderConfig
from pipeline.reporting import JobChanged, Notice, Reporter
from pipeline.retry import CircuitBreaker, PauseGate, RateLimiter, Sleeper, next_wait, sleeper_for
from pipeline.settings import Settings, redact
from pipeline.state import JobRow, StateStore
from pipeline.storage import LocalFile, Source, Storage

T = TypeVar("T")

EMBEDDED = "embedded"
"""``base_url`` of a provider served by the in-process sandbox."""
TIMEOUT_REASON = "task ran past task_timeout"
CREATE_TRIES = 8
DOWNLOAD_TRIES = 5
INTERRUPT_GRACE = 1.5
"""Seconds an in-flight create may take to answer after Ctrl-C before it is cancelled."""

_CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
}


@dataclass(frozen=True)
class RunOptions:
    concurrency: int | None = None
    max_jobs: int | None = None
    retry_failed: bool = False
    replace: frozenset[str] = frozenset()


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
    extra: dict[str, Any] = field(default_factory=dict)


def credentials_for(config: ProviderConfig, settings: Settings) -> Credentials:
    """The provider's keys from the environment; an unset variable is an exit-2 error."""
    values: dict[str, str] = {}
    missing: list[str] = []
    for role, var in config.key_envs.items():
        value = settings.secret(var)
        if value is None:
            missing.append(var)
        else:
            values[role] = value
    if missing:
        names = " and ".join(missing)
        raise MissingKeyError(f"set {names} in the environment: provider {config.name} needs it")
    return Credentials(values)


class Slots:
    """Tasks in flight at the provider. Resumed tasks take a slot without waiting for one."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self.used = 0
        self.waiting = 0
        self._cond = asyncio.Condition()
        self._clock = clock
        self._mark = clock()
        self.busy_time = 0.0
        self.contended_time = 0.0

    def _account(self) -> None:
        now = self._clock()
        if self.waiting:  # someone wants a slot: every free one is capacity lost
            self.busy_time += min(self.used, self.size) * (now - self._mark)
            self.contended_time += self.size * (now - self._mark)
        self._mark = now

    async def acquire(self) -> None:
        async with self._cond:
            self._account()
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.used < self.size)
            finally:
                self._account()
                self.waiting -= 1
            self.used += 1

    def take(self) -> None:
        self._account()
        self.used += 1

    async def release(self) -> None:
        async with self._cond:
            self._account()
            self.used -= 1
            self._cond.notify()

    def occupancy(self) -> float | None:
        self._account()
        return None if not self.contended_time else self.busy_time / self.contended_time


class Batch:
    """One run of one manifest against its state. Build with :func:`run_batch`."""

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
        log: Any,
    ) -> None:
        self.manifest = manifest
        self.config = manifest.provider
        self.planned = {pj.job.id: pj for pj in plan.jobs}
        self.store = store
        self.settings = settings
        self.options = options
        self.reporter = reporter
        self.credentials = credentials
        self.tools = tools
        self.log = log
        self.secrets = [*credentials.secrets(), *settings.secrets(self.config.key_envs.values())]
        self.sleeper: Sleeper = sleeper_for(settings)
        self.rng = random.Random()  # noqa: S311 - jitter for waits, not a secret
        self.gate = PauseGate(self.sleeper)
        self.breaker = CircuitBreaker(threshold=5, cooldown=30.0, clock=self.sleeper.monotonic)
        rate = self.config.rate_limit
        self.limiter = RateLimiter(rate.requests, rate.per_seconds, sleeper=self.sleeper)
        self.concurrency = options.concurrency or self.config.concurrency
        self.slots = Slots(self.concurrency, time.monotonic)
        cpus = os.cpu_count() or 2
        self.prep_pool = asyncio.Semaphore(cpus)
        self.upload_pool = asyncio.Semaphore(4)
        self.download_pool = asyncio.Semaphore(max(4, min(16, self.concurrency)))
        self.stop_reason: str | None = None
        self.stop_code = 0
        self.interrupted = False
        self.creates_in_flight = 0
        self.submitted = 0
        self.videos = manifest.output_dir / "videos"
        self.committed_seconds = 0.0
        self.committed_cost = 0.0
        self.requests = 0
        self.resumed: set[str] = set()
        """Jobs resumed by this run: the feed leaves them to their resume task."""
        self.latest: dict[str, asyncio.Task[Any]] = {}
        self.unsettled: dict[str, str] = {}
        """Job key -> a job of that key that needs attention: its twins wait, never pay again."""
        """The newest task per job key: a same-key twin waits for it, then adopts its result."""
        # Set in run(): they need the event loop or the HTTP client.
        self.commits: GroupCommitter
        self.provider: Provider
        self.storage: Storage
        self.poller: Poller
        self.client: httpx.AsyncClient

    # ------------------------------------------------------------------ state helpers

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)

    async def _move(self, job_id: str, to: State, **fields: Any) -> JobRow:
        if fields.get("error"):
            fields["error"] = self._redact(str(fields["error"]))
        previous = self.store.get(job_id).state
        row = await self.commits.transition(job_id, to, **fields)
        if to is State.NEEDS_ATTENTION:
            self.unsettled.setdefault(row.key, job_id)
        detail = fields.get("error") or fields.get("task_id") or ""
        billed = row.billed_seconds if to is State.DONE else None
        self.reporter.emit(JobChanged(job_id, to, str(detail), billed, previous=previous))
        self.log.info("job %s: %s%s", job_id, to.value, f" ({detail})" if detail else "")
        return row

    def stop_new(self, reason: str, code: int) -> None:
        """No new creates from now on; the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_code = code
            self.reporter.emit(Notice(f"stopping new submissions: {reason}", "warning"))
            self.log.warning("stopping new submissions: %s", reason)

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    # ------------------------------------------------------------------ the run

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
        with self._embedded_provider() as config:

            async def count(_request: httpx.Request) -> None:
                self.requests += 1

            async with httpx.AsyncClient(
                limits=limits, timeout=timeout, event_hooks={"request": [count]}
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
                )
                async with GroupCommitter(self.store) as self.commits:
                    await self._work()
        summary = self._summary(started)
        self._write_metadata()
        return summary

    async def _work(self) -> None:
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, main)
        poller = asyncio.create_task(self.poller.run(), name="poller")
        try:
            async with asyncio.TaskGroup() as tg:
                self._resume_all(tg)
                tg.create_task(self._feed(tg), name="feed")
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            main.uncancel()
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def _on_signal(self, main: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        if self.interrupted:  # a second Ctrl-C: stop now
            main.cancel()
            return
        self.interrupted = True
        self.stop_new("interrupted", 130)
        deadline = loop.time() + INTERRUPT_GRACE

        def cancel_when_quiet() -> None:
            # Let creates already on the wire answer (their task ids get committed), briefly.
            if self.creates_in_flight and loop.time() < deadline:
                loop.call_later(0.05, cancel_when_quiet)
            else:
                main.cancel()

        cancel_when_quiet()

    def _resume_all(self, tg: asyncio.TaskGroup) -> None:
        for row in self.store.rows([State.SUBMITTING, State.RUNNING, State.DOWNLOADING]):
            if row.id not in self.planned:
                continue  # no longer in the manifest: left alone, still in the state
            if row.state is not State.SUBMITTING:
                self.slots.take() if row.state is State.RUNNING else None
            self.resumed.add(row.id)
            self._track(row.key, tg.create_task(self._resume(row), name=f"resume:{row.id}"))
        if self.options.retry_failed:
            for row in self.store.rows([State.FAILED]):
                if row.id in self.planned and row.task_id and TIMEOUT_REASON in (row.error or ""):
                    self.slots.take()
                    tg.create_task(self._recheck(row), name=f"recheck:{row.id}")

    def _fresh_ids(self) -> Iterator[str]:
        states = [State.PENDING] + ([State.FAILED] if self.options.retry_failed else [])
        for summary in self.store.summaries(states):
            if summary.id not in self.planned or summary.id in self.resumed:
                continue
            if (
                summary.state is State.FAILED
                and summary.task_id
                and TIMEOUT_REASON in (summary.error or "")
            ):
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

            self._track(key, tg.create_task(job(), name=f"job:{job_id}"))

    def _track(self, key: str, task: asyncio.Task[Any]) -> None:
        self.latest[key] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self.latest.get(key) is done:
                del self.latest[key]

        task.add_done_callback(forget)

    # ------------------------------------------------------------------ fresh jobs

    async def _fresh(self, job_id: str) -> None:
        pj = self.planned[job_id]
        row = self.store.get(job_id)
        if row.state is State.FAILED:
            row = await self._move(job_id, State.PENDING, error=None)
        if await self._adopt_twin(pj):
            return
        blocker = self.unsettled.get(pj.key)
        if blocker is not None and blocker != job_id:
            # Its create may have made (and billed) this very generation: resolve that first.
            why = f"left pending: job {blocker}, the same generation, needs attention"
            self.log.warning("job %s: %s", job_id, why)
            self.reporter.emit(Notice(f"job {job_id} {why}", "warning"))
            return
        try:
            urls = await self._inputs(pj)
        except (InputError, RefusedError) as exc:
            await self._move(job_id, State.FAILED, error=str(exc))
            return
        except TransientError as exc:
            self.log.warning(
                "job %s: upload failed, left pending: %s", job_id, self._redact(str(exc))
            )
            return
        except BatchFatalError as exc:
            self.stop_new(self._redact(exc.message), exc.exit_code)
            return
        await self.slots.acquire()
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                await self.slots.release()

        try:
            if self.stopping or not self._within_budget(pj):
                return
            await self.gate.wait()
            crash_point("before-intent")
            client_id = f"mp-{pj.key[:20]}-{row.attempt + 1}"
            row = await self._move(
                job_id,
                State.SUBMITTING,
                expect=State.PENDING,
                client_id=client_id,
                attempt=row.attempt + 1,
                billed_seconds=pj.billed_seconds,
                error=None,
            )
            self.committed_seconds += pj.billed_seconds or 0.0
            self.committed_cost += pj.estimated_cost or 0.0
            self.submitted += 1
            crash_point("after-intent")
            handle = await self._create(pj, urls, client_id)
            if handle is None:
                return
            crash_point("after-create-sent")
            await self._move(job_id, State.RUNNING, task_id=handle.task_id)
            crash_point("after-task-id")
            await self._collect(job_id, handle, release=release)
        finally:
            await release()

    def _within_budget(self, pj: PlannedJob) -> bool:
        budget = self.manifest.budget
        seconds = pj.billed_seconds or 0.0
        if budget.max_seconds is not None and self.committed_seconds + seconds > budget.max_seconds:
            used = f"{self.committed_seconds:.1f}"
            self.stop_new(f"budget reached: {used} of {budget.max_seconds:g} s billed", 3)
            return False
        cost = pj.estimated_cost or 0.0
        if budget.max_cost is not None and self.committed_cost + cost > budget.max_cost:
            used = f"{self.committed_cost:.2f}"
            self.stop_new(f"budget reached: {used} of {budget.max_cost:g} {budget.currency}", 3)
            return False
        return True

    async def _adopt_twin(self, pj: PlannedJob) -> bool:
        """Same key already done under another id: reuse that result, pay nothing."""
        twin = self.store.find_done_by_key(pj.key)
        if twin is None or twin.id == pj.job.id or not twin.output:
            return False
        source = self.manifest.output_dir / twin.output
        target = self.videos / f"{pj.job.id}.mp4"
        if not source.is_file():
            return False
        await asyncio.to_thread(_link_or_copy, source, target)
        await self._move(
            pj.job.id,
            State.DONE,
            task_id=twin.task_id,
            output=str(target.relative_to(self.manifest.output_dir)),
            output_sha256=twin.output_sha256,
            duration=twin.duration,
            billed_seconds=0.0,
            result=twin.result,
            detail={"adopted_from": twin.id},
        )
        return True

    async def _inputs(self, pj: PlannedJob) -> InputURLs:
        media = pj.media
        assert media is not None and media.image_info is not None and media.video_info is not None
        if media.video.is_identity and media.image.is_identity:
            prepared = PreparedMedia(
                image=Path(media.image_info.source), video=Path(media.video_info.source)
            )
        else:
            async with self.prep_pool:
                prepared = await asyncio.to_thread(
                    prepare, media, self.tools, cache_dir(self.manifest) / "prepared"
                )
        image: Source = pj.job.image.url or LocalFile(
            prepared.image,
            _content_type(prepared.image, media.image_info.format),
            pj.image_sha256 if media.image.is_identity else None,
        )
        video: Source = pj.job.video.url or LocalFile(
            prepared.video,
            _content_type(prepared.video, media.video_info.format),
            pj.video_sha256 if media.video.is_identity else None,
        )
        async with self.upload_pool:
            return await self._retrying(lambda: self.storage.input_urls(pj.job.id, image, video))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A repeatable call (upload, poll, refresh): retried on transient errors with backoff."""
        attempt = 0
        while True:
            try:
                return await call()
            except RateLimitedError as exc:
                self.gate.pause_for(
                    next_wait(attempt, exc.retry_after, base=1.0, cap=60.0, rng=self.rng)
                )
                await self.gate.wait()
            except TransientError as exc:
                if attempt + 1 >= CREATE_TRIES or self.stopping:
                    raise
                await self.sleeper.sleep(
                    next_wait(attempt, exc.retry_after, base=1.0, cap=60.0, rng=self.rng)
                )
            attempt += 1

    async def _create(self, pj: PlannedJob, urls: InputURLs, client_id: str) -> Handle | None:
        """POST the create; None when the job left ``submitting`` some other way."""
        job = pj.job
        cls = type(self.provider)
        attempt = 0
        reconciles = 0
        while True:
            while not self.breaker.allow():
                await self.sleeper.sleep(max(self.breaker.retry_in(), 0.05))
            await self.limiter.acquire()
            await self.gate.wait()
            self.creates_in_flight += 1
            try:
                return await self.provider.submit(job, urls, client_id=client_id)
            except RateLimitedError as exc:
                self.breaker.record_success()
                self.gate.pause_for(
                    next_wait(attempt, exc.retry_after, base=1.0, cap=120.0, rng=self.rng)
                )
            except TransientError as exc:
                self.breaker.record_failure()
                if attempt + 1 >= CREATE_TRIES or self.stopping:
                    await self._unsubmit(job.id, f"create not accepted: {exc}")
                    return None
                await self.sleeper.sleep(
                    next_wait(attempt, exc.retry_after, base=1.0, cap=120.0, rng=self.rng)
                )
            except AmbiguousError as exc:
                self.breaker.record_failure()
                found = await self._lookup(pj, client_id) if cls.has_client_id else _UNKNOWN
                if isinstance(found, Handle):
                    return found
                if found is _UNKNOWN or reconciles >= 3 or self.stopping:
                    reason = _ambiguous_reason(str(exc))
                    await self._move(job.id, State.NEEDS_ATTENTION, error=reason)
                    return None
                # The lookup says the create never happened: sending it again is safe.
                reconciles += 1
            except RefusedError as exc:
                self.breaker.record_success()
                await self._move(job.id, State.FAILED, error=f"refused by {cls.name}: {exc}")
                return None
            except BatchFatalError as exc:
                self.stop_new(self._redact(exc.message), exc.exit_code)
                await self._unsubmit(job.id, str(exc))
                return None
            finally:
                self.creates_in_flight -= 1
            attempt += 1

    async def _lookup(self, pj: PlannedJob, client_id: str) -> Handle | object | None:
        """The task an unanswered create made (Handle), None if it never happened, or _UNKNOWN."""
        try:
            found: Handle | None = await self._retrying(
                lambda: self.provider.reconcile(pj.job, client_id)
            )
        except ProviderError as exc:
            self.log.warning("job %s: lookup by client id failed: %s", pj.job.id, exc)
            return _UNKNOWN
        return found

    async def _unsubmit(self, job_id: str, why: str) -> None:
        """The create certainly did not happen: back to pending for a later run."""
        await self._move(job_id, State.PENDING, error=why)
        pj = self.planned[job_id]
        self.committed_seconds -= pj.billed_seconds or 0.0
        self.committed_cost -= pj.estimated_cost or 0.0
        self.submitted -= 1

    # ------------------------------------------------------------------ running tasks

    async def _collect(
        self, job_id: str, handle: Handle, *, release: Callable[[], Any] | None = None
    ) -> None:
        try:
            status = await self.poller.wait(handle)
        except TaskTimeout as exc:
            await self._move(
                job_id,
                State.FAILED,
                error=f"{exc}; task {handle.task_id} kept: `run --retry-failed` re-checks it",
            )
            return
        except ProviderError as exc:
            await self._move(job_id, State.FAILED, error=str(exc))
            return
        finally:
            if release is not None:
                await release()
        if status.phase == "failed":
            await self._move(job_id, State.FAILED, error=status.reason or "the task failed")
            return
        await self._move(job_id, State.DOWNLOADING, result_url=status.result_url)
        await self._download(job_id, handle, status)

    async def _download(self, job_id: str, handle: Handle, status: TaskStatus) -> None:
        pj = self.planned[job_id]
        target = self.videos / f"{job_id}.mp4"
        url = status.result_url
        attempt = 0
        async with self.download_pool:
            while True:
                try:
                    if not url:
                        raise ResultExpiredError("no result URL")
                    result = await outputs.download_result(
                        self.client,
                        url,
                        target,
                        tools=self.tools,
                        expect_seconds=pj.billed_seconds,
                        job_id=job_id,
                        replace=job_id in self.options.replace,
                    )
                    crash_point("after-rename")
                    break
                except ResultExpiredError:
                    if attempt >= DOWNLOAD_TRIES:
                        await self._move(
                            job_id,
                            State.FAILED,
                            error="result URL expired and could not be refreshed",
                        )
                        return
                    url = await self._retrying(
                        lambda: self.provider.refresh_result_url(handle, status)
                    )
                    if url:
                        await self.commits.set_fields(job_id, result_url=url)
                except TransientError as exc:
                    if attempt >= DOWNLOAD_TRIES or self.stopping:
                        self.log.warning(
                            "job %s: download left for the next run: %s",
                            job_id,
                            self._redact(str(exc)),
                        )
                        return
                    await self.sleeper.sleep(
                        next_wait(attempt, None, base=1.0, cap=60.0, rng=self.rng)
                    )
                except BatchStopped as exc:
                    self.stop_new(str(exc), exc.exit_code)
                    return
                except OutputConflictError as exc:
                    await self._move(job_id, State.NEEDS_ATTENTION, error=str(exc))
                    return
                except ProviderError as exc:
                    await self._move(job_id, State.FAILED, error=f"result unusable: {exc}")
                    return
                attempt += 1
        await self._finish(job_id, result)

    async def _finish(self, job_id: str, result: outputs.ResultFile) -> None:
        facts = {"width": result.width, "height": result.height, "fps": result.fps,
                 "codec": result.codec, "size": result.size}  # fmt: skip
        await self._move(
            job_id,
            State.DONE,
            output=str(result.path.relative_to(self.manifest.output_dir)),
            output_sha256=result.sha256,
            duration=result.duration,
            result=json.dumps(facts),
            error=None,
        )

    async def _resume(self, row: JobRow) -> None:
        if row.state is State.SUBMITTING:
            await self._resume_submitting(row)
            return
        assert row.task_id is not None
        handle = Handle(self.config.name, row.task_id, row.client_id)
        if row.state is State.DOWNLOADING:
            target = self.videos / f"{row.id}.mp4"
            pj = self.planned[row.id]
            existing = await asyncio.to_thread(
                outputs.verify_existing, target, tools=self.tools, expect_seconds=pj.billed_seconds
            )
            if existing is not None and (row.output_sha256 in (None, existing.sha256)):
                await self._finish(row.id, existing)
                return
            await self._move(row.id, State.RUNNING, expect=State.DOWNLOADING)
            self.slots.take()
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                await self.slots.release()

        await self._collect(row.id, handle, release=release)

    async def _resume_submitting(self, row: JobRow) -> None:
        """A run stopped between the intent and the provider's answer."""
        pj = self.planned[row.id]
        cls = type(self.provider)
        if cls.has_client_id and row.client_id:
            handle = await self._lookup(pj, row.client_id)
            if handle is _UNKNOWN:
                reason = _ambiguous_reason("the provider could not be asked about the create")
                await self._move(row.id, State.NEEDS_ATTENTION, error=reason)
                return
            if handle is None:
                await self._unsubmit(row.id, "previous create never reached the provider")
                if not self.stopping:  # the feed skips resumed jobs: submit it here, once
                    await self._fresh(row.id)
                return
            assert isinstance(handle, Handle)
            await self._move(row.id, State.RUNNING, task_id=handle.task_id)
            self.slots.take()
            await self._resume(self.store.get(row.id))
            return
        await self._move(
            row.id,
            State.NEEDS_ATTENTION,
            error=_ambiguous_reason("the run stopped while the create was in flight"),
        )

    async def _recheck(self, row: JobRow) -> None:
        """``--retry-failed`` on a timed-out task: ask about it again before paying again."""
        await self._move(row.id, State.RUNNING, expect=State.FAILED, error=None)
        await self._resume(self.store.get(row.id))

    # ------------------------------------------------------------------ bookkeeping

    def _count_committed(self) -> None:
        for row in self.store.rows():
            if row.state is State.PENDING or (row.state is State.FAILED and not row.task_id):
                continue
            seconds = row.billed_seconds or 0.0
            self.committed_seconds += seconds
            pj = self.planned.get(row.id)
            if pj is not None:
                self.committed_cost += (
                    self.manifest.budget.cost(pj.job.settings.mode, seconds) or 0.0
                )

    @contextlib.contextmanager
    def _embedded_provider(self) -> Iterator[ProviderConfig]:
        config = self.config
        if config.base_url != EMBEDDED:
            yield config
            return
        from pipeline.sandbox import SandboxServer  # the sandbox costs nothing unless used

        data = cache_dir(self.manifest) / "sandbox"
        with SandboxServer(data_dir=data, tools=self.tools) as server:
            yield ProviderConfig(
                **{**config.__dict__, "base_url": server.base_url, "upload_url": server.base_url}
            )

    def _summary(self, started: float) -> RunSummary:
        counts = self.store.counts()
        planned = set(self.planned)
        if self.stop_code:
            code = self.stop_code
        elif counts[State.FAILED] or counts[State.NEEDS_ATTENTION] or self._unfinished(planned):
            code = 1
        else:
            code = 0
        seconds = sum(
            (r.billed_seconds or 0.0) for r in self.store.rows([State.DONE]) if r.id in planned
        )
        return RunSummary(
            counts=counts,
            exit_code=code,
            stop_reason=self.stop_reason,
            seconds_billed=seconds,
            wall_seconds=time.monotonic() - started,
            http_requests=self.requests,
            submitted=self.submitted,
            occupancy=self.slots.occupancy(),
        )

    def _unfinished(self, planned: set[str]) -> bool:
        """A job of the manifest is not done yet, though nothing stopped the run (exit 1, not 0)."""
        left = [State.SUBMITTING, State.RUNNING, State.DOWNLOADING]
        if self.options.max_jobs is None:  # --max-jobs leaves the rest pending on purpose
            left.append(State.PENDING)
        return any(s.id in planned for s in self.store.summaries(left))

    def _write_metadata(self) -> None:
        records = []
        for row in self.store.rows([State.DONE]):
            pj = self.planned.get(row.id)
            if pj is not None and row.output and row.task_id:
                records.append(outputs.metadata_record(self._metadata(row, pj)))
        outputs.write_metadata(self.manifest.output_dir, records)

    def _metadata(self, row: JobRow, pj: PlannedJob) -> outputs.ResultMetadata:
        facts = json.loads(row.result) if row.result else {}
        job = pj.job
        return outputs.ResultMetadata(
            job_id=row.id,
            job_key=row.key,
            source_image=job.image.raw,
            driving_video=job.video.raw,
            source_image_sha256=pj.image_sha256,
            driving_video_sha256=pj.video_sha256,
            settings=job.settings.as_dict(),
            provider=self.config.name,
            model=self.config.model,
            task_id=row.task_id or "",
            output_sha256=row.output_sha256 or "",
            duration=row.duration,
            width=facts.get("width"),
            height=facts.get("height"),
            fps=facts.get("fps"),
            codec=facts.get("codec"),
            output_size=facts.get("size"),
            billed_seconds=row.billed_seconds,
            submitted_at=row.submitted_at,
            finished_at=row.finished_at,
            media_recipe=pj.media.key_recipe if pj.media else "",
        )


_UNKNOWN = object()
"""A reconcile that could not tell whether the create happened."""


def _ambiguous_reason(what: str) -> str:
    return (
        f"{what}; the provider may have created (and billed) a task. Check its dashboard, then "
        "`motion-pipeline resolve MANIFEST JOB --adopt TASK_ID`, `--resubmit` or `--abandon`"
    )


def _content_type(path: Path, detected: str) -> str:
    return _CONTENT_TYPES.get(detected) or _CONTENT_TYPES.get(
        path.suffix.lstrip(".").lower(), "application/octet-stream"
    )


def _link_or_copy(source: Path, target: Path) -> None:
    import shutil

    if target.exists():
        return
    tmp = target.with_name(f".adopt-{target.name}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
