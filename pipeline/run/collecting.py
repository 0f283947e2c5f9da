"""Collecting what is paid for: poll a task to its end, download and verify its result, resume.

Nothing here sends a create. A job reaches this code with a task id; from then on every path
ends in ``done``, ``failed`` with the provider's reason, or a state the next run picks up.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pipeline.dataset import results as outputs
from pipeline.dataset.metadata import write_sidecar
from pipeline.errors import (
    BatchStopped,
    OutputConflictError,
    ProviderError,
    ResultExpiredError,
    ResultInvalidError,
    StateError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, State, TaskStatus
from pipeline.run.base import DOWNLOAD_TRIES, BatchBase
from pipeline.run.crashpoints import crash_point
from pipeline.run.poll import PollerCrashed, TaskTimeout, UnreadableTask
from pipeline.run.retry import next_wait
from pipeline.run.slots import Lease
from pipeline.state.rows import JobRow


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class Collector(BatchBase):
    """Polls, downloads and resumes; see :class:`pipeline.run.submitting.Submitter` for creates."""

    async def _collect(self, job_id: str, handle: Handle, lease: Lease | None = None) -> None:
        """Poll to the end (the provider slot is given back then), then download."""
        try:
            status = await self.poller.wait(handle, label=f"job {job_id}")
        except (TaskTimeout, UnreadableTask) as exc:
            kind = FailKind.TIMEOUT if isinstance(exc, TaskTimeout) else FailKind.UNREADABLE
            kept = f"task {handle.task_id} kept: `run --retry-failed` asks about it again"
            await self._fail(job_id, kind, f"{exc}; {kept}")
            return
        except PollerCrashed:
            return  # the run is stopping; the task is still running and the next run polls it
        except ProviderError as exc:
            # The provider does not know a task it accepted (or refuses to say): it is paid for,
            # so a human decides; `--retry-failed` would pay for it again.
            why = f"the provider no longer answers for task {handle.task_id}: {exc}"
            await self._move(job_id, State.NEEDS_ATTENTION, error=self._ambiguous(why, job_id))
            return
        finally:
            if lease is not None:
                await lease.release()
        if status.phase == "failed":
            await self._fail(job_id, FailKind.TASK, status.reason or "the task failed")
            return
        await self._move(job_id, State.DOWNLOADING, result_url=status.result_url)
        await self._download(job_id, handle, status)

    async def _download(self, job_id: str, handle: Handle, status: TaskStatus) -> None:
        row = self.store.get(job_id)
        target = self._target(row)
        expect = self._expect_seconds(row)
        url = status.result_url
        attempt = 0
        refreshed_for_invalid = False
        async with self.download_pool:
            while True:
                if self.disk.released:
                    # The disk is full: the room left is for the state's task ids, not results.
                    self.log.warning("job %s: download left for the next run: disk full", job_id)
                    return
                try:
                    if not url:
                        raise ResultExpiredError("no result URL")
                    result = await outputs.download_result(
                        self.client,
                        url,
                        target,
                        tools=self.tools,
                        expect_seconds=expect,
                        job_id=job_id,
                        replace=job_id in self.options.replace,
                    )
                    crash_point("after-rename")
                    break
                except ResultExpiredError:
                    if attempt >= DOWNLOAD_TRIES:
                        await self._fail(
                            job_id, FailKind.RESULT, "result URL expired and could not be refreshed"
                        )
                        return
                    url = await self._refreshed(job_id, handle, status) or url
                except ResultInvalidError as exc:
                    # A bad URL or a broken body: asking the provider once more for the result
                    # is free; twice unusable and the job fails with the reason.
                    if refreshed_for_invalid:
                        await self._fail(job_id, FailKind.RESULT, f"result unusable: {exc}")
                        return
                    refreshed_for_invalid = True
                    url = await self._refreshed(job_id, handle, status) or url
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
                    await self._fail(job_id, FailKind.RESULT, f"result unusable: {exc}")
                    return
                attempt += 1
        await self._finish(job_id, result)

    async def _refreshed(self, job_id: str, handle: Handle, status: TaskStatus) -> str | None:
        """A fresh result URL from the provider (committed), or None when it gave none."""
        self.log.info("job %s: asking for a fresh result URL of task %s", job_id, handle.task_id)
        try:
            url = await self._retrying(
                lambda: self.provider.refresh_result_url(handle, status),
                what=f"job {job_id}: result URL refresh",
            )
        except ProviderError as exc:
            self.log.warning(
                "job %s: result URL refresh failed: %s", job_id, self._redact(str(exc))
            )
            return None
        if url:
            await self.commits.set_fields(job_id, result_url=url)
        return url

    async def _finish(self, job_id: str, result: outputs.ResultFile) -> None:
        facts = {"width": result.width, "height": result.height, "fps": result.fps,
                 "codec": result.codec, "size": result.size,
                 "mtime_ns": await asyncio.to_thread(_mtime_ns, result.path)}  # fmt: skip
        await self._move(
            job_id,
            State.DONE,
            output=str(result.path.relative_to(self.manifest.output_dir)),
            output_sha256=result.sha256,
            duration=result.duration,
            result=json.dumps(facts),
            error=None,
        )
        if self.is_orphan(job_id):  # kept with its provenance, outside the dataset
            await asyncio.to_thread(write_sidecar, self.store.get(job_id), self.manifest.output_dir)

    async def _resume(self, row: JobRow, lease: Lease | None) -> None:
        """A job this run found running or downloading: collect it (never create it again)."""
        if row.task_id is None:  # cannot happen for a running row; say so rather than guess
            raise StateError(f"job {row.id} is {row.state.value} without a task id")
        handle = Handle(self.config.name, row.task_id, row.client_id)
        if row.state is State.DOWNLOADING:
            existing = await asyncio.to_thread(
                outputs.verify_existing,
                self._target(row),
                tools=self.tools,
                expect_seconds=self._expect_seconds(row),
            )
            if existing is not None and (row.output_sha256 in (None, existing.sha256)):
                await self._finish(row.id, existing)
                return
            await self._move(row.id, State.RUNNING, expect=State.DOWNLOADING)
            lease = self.slots.take()
        await self._collect(row.id, handle, lease)

    async def _recheck(self, row: JobRow, lease: Lease) -> None:
        """``--retry-failed`` on a timed-out task: ask about it again before paying again."""
        await self._move(row.id, State.RUNNING, expect=State.FAILED, error=None)
        await self._resume(self.store.get(row.id), lease)
