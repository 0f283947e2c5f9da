"""The download stage: fetch a finished task's result, verify it, publish it, record it done.

Nothing here sends a create. The one streaming download (:mod:`pipeline.storage.fetch`) streams
to a temp file, verifies it with ffprobe and renames it into place; here the stage decides what
each failure means: an expired URL is refreshed from the provider, an unusable result is asked
for once more and then fails the job, transport trouble is retried and then left for the next
run, a full disk stops the batch, another video in the result's place needs attention.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

from pipeline.dataset import results
from pipeline.dataset.metadata import write_sidecar
from pipeline.errors import (
    BatchStopped,
    OutputConflictError,
    ProviderError,
    ResultExpiredError,
    ResultInvalidError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, State, TaskStatus
from pipeline.run.context import RunContext
from pipeline.run.crashpoints import crash_point
from pipeline.settings import DEFAULTS
from pipeline.state.rows import JobRow


class DownloadStage:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._pool = asyncio.Semaphore(DEFAULTS.downloads)

    async def fetch(self, job_id: str, handle: Handle, status: TaskStatus) -> None:
        """Download ``status``'s result; the job ends done, failed, needs attention, or stays
        ``downloading`` for the next run (with the reason in run.log)."""
        ctx = self.ctx
        row = ctx.store.get(job_id)
        target, expect = ctx.target(row), ctx.expect_seconds(row)
        replace = job_id in ctx.options.replace
        url = status.result_url
        refreshes = 0
        asked_again = False
        async with self._pool:
            while True:
                if ctx.disk.released:
                    # The disk is full: the room left is for the state's task ids, not results.
                    ctx.log.warning("job %s: download left for the next run: disk full", job_id)
                    return
                try:
                    if not url:
                        raise ResultExpiredError("no result URL")
                    result = await ctx.calls.repeat(
                        functools.partial(
                            results.download_result, ctx.client, url, target, tools=ctx.tools,
                            expect_seconds=expect, job_id=job_id, replace=replace,
                        ),
                        what=f"job {job_id}: download",
                        tries=DEFAULTS.download_tries,
                        final=(ResultExpiredError,),
                    )  # fmt: skip
                    crash_point("after-rename")
                    break
                except ResultExpiredError:
                    if refreshes >= DEFAULTS.result_refreshes:
                        why = "result URL expired and could not be refreshed"
                        await ctx.journal.fail(job_id, FailKind.RESULT, why)
                        return
                    refreshes += 1
                    url = await self._refreshed(job_id, handle, status) or url
                except ResultInvalidError as exc:
                    # A bad URL or a broken body: asking the provider once more for the result
                    # is free; twice unusable and the job fails with the reason.
                    if asked_again:
                        await ctx.journal.fail(job_id, FailKind.RESULT, f"result unusable: {exc}")
                        return
                    asked_again = True
                    url = await self._refreshed(job_id, handle, status) or url
                except TransientError as exc:
                    why = ctx.journal.redact(str(exc))
                    ctx.log.warning("job %s: download left for the next run: %s", job_id, why)
                    return
                except BatchStopped as exc:
                    ctx.halt.stop_new(str(exc), exc.exit_code)
                    return
                except OutputConflictError as exc:
                    await ctx.journal.move(job_id, State.NEEDS_ATTENTION, error=str(exc))
                    return
                except ProviderError as exc:
                    await ctx.journal.fail(job_id, FailKind.RESULT, f"result unusable: {exc}")
                    return
        await self.finish(job_id, result)

    async def _refreshed(self, job_id: str, handle: Handle, status: TaskStatus) -> str | None:
        """A fresh result URL from the provider (committed), or None when it gave none."""
        ctx = self.ctx
        ctx.log.info("job %s: asking for a fresh result URL of task %s", job_id, handle.task_id)
        try:
            url = await ctx.calls.repeat(
                lambda: ctx.provider.refresh_result_url(handle, status),
                what=f"job {job_id}: result URL refresh",
            )
        except ProviderError as exc:
            why = ctx.journal.redact(str(exc))
            ctx.log.warning("job %s: result URL refresh failed: %s", job_id, why)
            return None
        if url:
            await ctx.journal.set_fields(job_id, result_url=url)
        return url

    async def finish(self, job_id: str, result: results.ResultFile) -> None:
        """Record a verified result: ``done``, with the facts metadata.jsonl and the output
        check need (sizes, time stamp); an orphan's metadata goes beside its video."""
        ctx = self.ctx
        mtime = result.mtime_ns
        if mtime is None:  # a result adopted on resume: not stat-ed yet
            mtime = await asyncio.to_thread(_mtime_ns, result.path)
        facts = {"width": result.width, "height": result.height, "fps": result.fps,
                 "codec": result.codec, "size": result.size, "mtime_ns": mtime}  # fmt: skip
        await ctx.journal.move(
            job_id,
            State.DONE,
            output=str(result.path.relative_to(ctx.manifest.output_dir)),
            output_sha256=result.sha256,
            duration=result.duration,
            result=json.dumps(facts),
            error=None,
        )
        if ctx.is_orphan(job_id):  # kept with its provenance, outside the dataset
            await asyncio.to_thread(write_sidecar, ctx.store.get(job_id), ctx.manifest.output_dir)

    async def existing(self, row: JobRow) -> results.ResultFile | None:
        """The result a killed run already renamed into place, when it verifies (resume)."""
        ctx = self.ctx
        found = await asyncio.to_thread(
            results.verify_existing,
            ctx.target(row),
            tools=ctx.tools,
            expect_seconds=ctx.expect_seconds(row),
        )
        if found is not None and row.output_sha256 in (None, found.sha256):
            return found
        return None


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
