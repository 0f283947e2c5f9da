"""What every part of a batch run shares: its values, pools and limits, and how it moves a job.

:class:`BatchBase` holds the state of one run; :mod:`pipeline.run.collecting` (poll, download,
resume) and :mod:`pipeline.run.submitting` (prepare, upload, create) build on it, and
:class:`pipeline.run.engine.Batch` puts them together. Every state change goes through
:meth:`BatchBase._move`: one group-committed transition, one progress event, one log line.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pipeline.dataset.metadata import job_from_spec
from pipeline.dataset.results import REPLACED_DIR
from pipeline.errors import RateLimitedError, TransientError
from pipeline.jobs import FailKind, Job, State
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.tools import MediaTools
from pipeline.plan.build import Plan, cache_dir
from pipeline.progress.events import JobChanged, Notice, Reporter
from pipeline.providers.base import Credentials, Provider
from pipeline.run.budget import Spending
from pipeline.run.disk import DiskGuard
from pipeline.run.halt import Halt
from pipeline.run.outage import Outage
from pipeline.run.poll import Poller
from pipeline.run.retry import (
    BreakerState,
    CircuitBreaker,
    PauseGate,
    RateLimiter,
    Sleeper,
    cause,
    next_wait,
    sleeper_for,
)
from pipeline.run.session import run_secrets
from pipeline.run.slots import Slots
from pipeline.settings import Settings, redact
from pipeline.state.commits import GroupCommitter
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore
from pipeline.storage.uploads import Storage

T = TypeVar("T")

CALL_TRIES = 8
"""Tries of one repeatable call, or of a create that certainly did not happen."""
DOWNLOAD_TRIES = 5


@dataclass(frozen=True)
class RunOptions:
    concurrency: int | None = None
    max_jobs: int | None = None
    retry_failed: bool = False
    replace: frozenset[str] = frozenset()
    """Job ids or glob patterns (``--replace``); expanded to ids before the run starts."""
    skip_invalid: bool = False
    """Run the jobs whose inputs are fine; the rejected ones fail (``--skip-invalid``)."""


class BatchBase:
    """The shared state of one run of one manifest."""

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
        disk: DiskGuard | None = None,
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
        self.disk = disk or DiskGuard(
            manifest.output_dir, floor=settings.min_free_bytes, reserve=settings.reserve_bytes
        )
        self.secrets = run_secrets(self.config, credentials, settings)
        self.sleeper: Sleeper = sleeper_for(settings)
        self.rng = random.Random()  # noqa: S311 - jitter for waits, not a secret
        self.gate = PauseGate(self.sleeper)
        self.breaker = CircuitBreaker(
            threshold=5, cooldown=30.0, clock=self.sleeper.monotonic, on_change=self._breaker_moved
        )
        rate = self.config.rate_limit
        self.limiter = RateLimiter(rate.requests, rate.per_seconds, sleeper=self.sleeper)
        self.concurrency = options.concurrency or self.config.concurrency
        self.slots = Slots(self.concurrency, time.monotonic)
        cpus = os.cpu_count() or 2
        self.prep_pool = asyncio.Semaphore(cpus)
        self.upload_pool = asyncio.Semaphore(4)
        self.download_pool = asyncio.Semaphore(max(4, min(16, self.concurrency)))
        self.halt = Halt(self._announce_stop)
        self.outage = Outage(time.monotonic, limit=settings.outage_seconds)
        self.creates_in_flight = 0
        self.submitted = 0
        self.videos = manifest.output_dir / "videos"
        # Planning saved every input's hash here: preparing reads no source a second time.
        self.hasher = FileHasher(cache_dir(manifest) / "hashes.json")
        self.spending = Spending(manifest.budget)
        self.requests = 0
        self.resumed: set[str] = set()
        """Jobs resumed by this run: the feed leaves them to their resume task."""
        self.latest: dict[str, asyncio.Task[Any]] = {}
        """The newest task per job key: a same-key twin waits for it, then adopts its result."""
        self.unsettled: dict[str, str] = {}
        """Job key -> a job of that key that needs attention: its twins wait, never pay again."""
        # Set in run(): they need the event loop or the HTTP client.
        self.commits: GroupCommitter
        self.provider: Provider
        self.storage: Storage
        self.poller: Poller
        self.client: httpx.AsyncClient

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

    async def _fail(self, job_id: str, kind: FailKind, error: str, **fields: Any) -> JobRow:
        """Move a job to ``failed``, saying why as data (``kind``) and for the user (``error``)."""
        return await self._move(job_id, State.FAILED, fail_kind=kind.value, error=error, **fields)

    # -- jobs of the manifest, and paid tasks the manifest no longer names (orphans)

    def is_orphan(self, job_id: str) -> bool:
        """A job in the state but not in the manifest (renamed, or retired by a replace)."""
        return job_id not in self.planned

    def _job(self, row: JobRow) -> Job:
        pj = self.planned.get(row.id)
        return pj.job if pj is not None else job_from_spec(row, self.config)

    def _expect_seconds(self, row: JobRow) -> float | None:
        pj = self.planned.get(row.id)
        return pj.billed_seconds if pj is not None else row.billed_seconds

    def _target(self, row: JobRow) -> Path:
        """Where a job's result goes: ``videos/<id>.mp4``, or under ``videos/replaced/`` for a
        paid task the manifest no longer names (kept, with its metadata beside it)."""
        if row.id in self.planned:
            return self.videos / f"{row.id}.mp4"
        tag = sha256_text(row.task_id or row.key)[:8]
        return self.videos / REPLACED_DIR / f"{row.id}.{tag}.mp4"

    def _ambiguous(self, what: str, job_id: str) -> str:
        return ambiguous_reason(what, self.manifest.path, job_id)

    def _breaker_moved(self, state: BreakerState) -> None:
        if state is BreakerState.OPEN:
            text = "circuit breaker open: the provider keeps failing, calls rest 30 s"
        else:
            text = "circuit breaker closed: the provider answers again"
        self.log.warning("%s", text)
        self.reporter.emit(Notice(text, "warning"))

    def _announce_stop(self, reason: str) -> None:
        self.reporter.emit(Notice(f"stopping new submissions: {reason}", "warning"))
        self.log.warning("stopping new submissions: %s", reason)

    def stop_new(self, reason: str, code: int) -> None:
        """No new creates from now on; the first reason wins."""
        self.halt.stop_new(reason, code)

    @property
    def stopping(self) -> bool:
        return self.halt.stopping

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, what: str) -> T:
        """A repeatable call (upload, poll, refresh): retried on transient errors with backoff.

        ``what`` names the call and its job in the log line each retry writes.
        """
        attempt = 0
        while True:
            try:
                return await call()
            except RateLimitedError as exc:
                wait = next_wait(attempt, exc.retry_after, base=1.0, cap=60.0, rng=self.rng)
                self.log.warning("%s: rate limited, every call pauses %.1f s (%s)", what, wait,
                                 self._redact(cause(exc)))  # fmt: skip
                self.gate.pause_for(wait)
                await self.gate.wait()
            except TransientError as exc:
                if attempt + 1 >= CALL_TRIES or self.stopping:
                    self.log.warning("%s: gave up after %d tries (%s)", what, attempt + 1,
                                     self._redact(cause(exc)))  # fmt: skip
                    raise
                wait = next_wait(attempt, exc.retry_after, base=1.0, cap=60.0, rng=self.rng)
                self.log.warning("%s: try %d failed, again in %.1f s (%s)", what, attempt + 1,
                                 wait, self._redact(cause(exc)))  # fmt: skip
                await self.sleeper.sleep(wait)
            attempt += 1


UNKNOWN = object()
"""A reconcile that could not tell whether the create happened."""


def ambiguous_reason(what: str, manifest: Path, job_id: str) -> str:
    """Why a job needs attention, with the exact commands that settle it."""
    resolve = f"motion-pipeline resolve {manifest} {job_id}"
    return (
        f"{what}; the provider may have created (and billed) a task. Check its dashboard, then "
        f"`{resolve} --adopt TASK_ID`, `{resolve} --resubmit` or `{resolve} --abandon`"
    )
