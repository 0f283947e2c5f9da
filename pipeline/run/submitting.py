"""Spending money, carefully: prepare and upload a job's inputs, then create its task once.

The create protocol of design.md §3: commit the intent (``submitting``, a client id), POST the
create, commit the task id before anything else. A create that certainly did not happen is
retried; one that may have happened is looked up by client id where the provider has one, and
otherwise the job needs attention and is never re-sent automatically.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from pipeline.errors import (
    AmbiguousError,
    BatchFatalError,
    BatchStopped,
    InputError,
    ProviderError,
    RateLimitedError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, InputRef, Job, State
from pipeline.media.prepare import PreparedMedia, prepare
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import MediaPlan
from pipeline.plan.build import PlannedJob, cache_dir
from pipeline.progress.events import Notice
from pipeline.providers.base import InputURLs
from pipeline.run.base import CALL_TRIES, UNKNOWN
from pipeline.run.collecting import Collector
from pipeline.run.crashpoints import crash_point
from pipeline.run.retry import cause, next_wait
from pipeline.state.rows import DuplicateTaskError, JobRow
from pipeline.storage.uploads import LocalFile, Source, download_input

_CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
}


class _NotSubmitted(Exception):
    """The job left the way to its create before the intent was committed."""


class Submitter(Collector):
    """Takes a pending job to a running task (then hands it to the collector)."""

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
            await self._fail(job_id, FailKind.INPUT, str(exc))
            return
        except TransientError as exc:
            self.log.warning(
                "job %s: upload failed, left pending: %s", job_id, self._redact(str(exc))
            )
            return
        except BatchFatalError as exc:
            self.stop_new(self._redact(exc.message), exc.exit_code)
            return
        except BatchStopped as exc:  # a full disk while fetching or preparing: stays pending
            self.stop_new(str(exc), exc.exit_code)
            return
        lease = await self.slots.acquire()
        try:
            if self.stopping:
                return
            shortage = self.disk.shortage()
            if shortage is not None:
                self.stop_new(shortage, 3)
                return
            # Checked and booked in one step, no await between: concurrent jobs cannot all pass.
            refusal = self.spending.reserve(
                job_id, pj.billed_seconds or 0.0, pj.estimated_cost or 0.0
            )
            if refusal is not None:
                self.stop_new(refusal.text, 3)
                return
            try:
                await self.gate.wait()
                if self.stopping:
                    raise _NotSubmitted
                crash_point("before-intent")
                client_id = f"mp-{pj.key[:20]}-{row.attempt + 1}"
                row = await self._move(
                    job_id,
                    State.SUBMITTING,
                    expect=State.PENDING,
                    client_id=client_id,
                    attempt=row.attempt + 1,
                    billed_seconds=pj.billed_seconds,
                    inputs=_sent_record(pj, urls),
                    error=None,
                )
            except _NotSubmitted:
                self.spending.release(job_id)
                return
            except BaseException:
                # The intent may or may not be committed (a cancelled commit still lands): keep
                # the booking unless the job is certainly still pending.
                if self.store.get(job_id).state is State.PENDING:
                    self.spending.release(job_id)
                raise
            self.submitted += 1
            crash_point("after-intent")
            handle = await self._create(pj, urls, client_id)
            if handle is None:
                return
            # The create stays "in flight" for an abort until its task id is committed: a Ctrl-C
            # between the answer and the commit must not cancel the commit.
            try:
                crash_point("after-create-sent")
                await self._move(job_id, State.RUNNING, task_id=handle.task_id)
            except BatchStopped as exc:
                self._task_id_not_saved(job_id, handle, exc)
                return
            except DuplicateTaskError as exc:
                # Which job the id really names, and what this create made, only the provider
                # can say: never give two generations one video.
                what = f"the provider answered task id {handle.task_id}, already job {exc.holder}'s"
                await self._move(job_id, State.NEEDS_ATTENTION, error=self._ambiguous(what, job_id))
                return
            finally:
                self.creates_in_flight -= 1
            crash_point("after-task-id")
            await self._collect(job_id, handle, lease)
        finally:
            await lease.release()

    def _task_id_not_saved(self, job_id: str, handle: Handle, exc: BatchStopped) -> None:
        """The last resort when even the reserve could not hold a task id: say it, loudly."""
        text = (
            f"job {job_id}: the provider accepted task {handle.task_id} but it could not be saved "
            f"({exc}); free space, then `motion-pipeline resolve "
            f"{self.manifest.path} {job_id} --adopt {handle.task_id}`"
        )
        self.stop_new(str(exc), exc.exit_code)
        self.reporter.emit(Notice(text, "error"))
        self.log.error("%s", text)

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
        media = _probed(pj)
        job = pj.job
        sent = pj.sent
        if sent is not None and sent.image is not None and sent.video is not None:
            # The plan prepared (or needed nothing): send exactly what it measured.
            prepared = PreparedMedia(
                image=Path(sent.image.path or media.image_info.source if media.image_info else ""),
                video=Path(sent.video.path or media.video_info.source if media.video_info else ""),
            )
        elif media.is_identity:
            source_image, source_video = _infos(media, pj)
            prepared = PreparedMedia(
                image=Path(source_image.source), video=Path(source_video.source)
            )
        else:
            media = await self._localized(pj)
            async with self.prep_pool:
                prepared = await asyncio.to_thread(
                    prepare,
                    media,
                    self.tools,
                    cache_dir(self.manifest) / "prepared",
                    hasher=self.hasher,
                )
        image_info, video_info = _infos(media, pj)
        # A URL goes out as it is unless it was prepared; then the prepared file is uploaded.
        # A prepared file's type is the recipe's (a webp converted to png is a png).
        image_format = media.image.format or image_info.format
        video_format = "mp4" if not media.video.is_identity else video_info.format
        image: Source = (job.image.url if media.image.is_identity else None) or LocalFile(
            prepared.image,
            _content_type(prepared.image, image_format),
            sent.image.sha256 if sent and sent.image else None,
        )
        video: Source = (job.video.url if media.video.is_identity else None) or LocalFile(
            prepared.video,
            _content_type(prepared.video, video_format),
            sent.video.sha256 if sent and sent.video else None,
        )
        async with self.upload_pool:
            return await self._retrying(
                lambda: self.storage.input_urls(job.id, image, video), what=f"job {job.id}: upload"
            )

    async def _localized(self, pj: PlannedJob) -> MediaPlan:
        """The job's media plan with every http(s) input that must be prepared fetched to disk."""
        media = _probed(pj)
        image, video = _infos(media, pj)
        image_info = await self._fetched(pj.job.image, media.image.is_identity, image, pj)
        video_info = await self._fetched(pj.job.video, media.video.is_identity, video, pj)
        return replace(media, image_info=image_info, video_info=video_info)

    async def _fetched(
        self, ref: InputRef, identity: bool, info: MediaInfo, pj: PlannedJob
    ) -> MediaInfo:
        if ref.url is None or identity:
            return info
        url, folder = ref.url, cache_dir(self.manifest) / "inputs"
        local = await self._retrying(
            lambda: download_input(self.client, url, folder, job_id=pj.job.id),
            what=f"job {pj.job.id}: input download",
        )
        return replace(info, source=str(local))

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
            accepted = False
            try:
                handle = await self.provider.submit(job, urls, client_id=client_id)
                accepted = True  # the caller lowers creates_in_flight once the id is committed
                return handle
            except RateLimitedError as exc:
                self.breaker.record_success()
                wait = next_wait(attempt, exc.retry_after, base=1.0, cap=120.0, rng=self.rng)
                self.log.warning("job %s: create rate limited, every create pauses %.1f s (%s)",
                                 job.id, wait, self._redact(cause(exc)))  # fmt: skip
                self.gate.pause_for(wait)
            except TransientError as exc:
                self.breaker.record_failure()
                if attempt + 1 >= CALL_TRIES or self.stopping:
                    self.log.warning("job %s: create not accepted after %d tries (%s)", job.id,
                                     attempt + 1, self._redact(cause(exc)))  # fmt: skip
                    await self._unsubmit(job.id, f"create not accepted: {exc}")
                    return None
                wait = next_wait(attempt, exc.retry_after, base=1.0, cap=120.0, rng=self.rng)
                self.log.warning("job %s: create try %d not accepted, again in %.1f s (%s)",
                                 job.id, attempt + 1, wait, self._redact(cause(exc)))  # fmt: skip
                await self.sleeper.sleep(wait)
            except AmbiguousError as exc:
                self.breaker.record_failure()
                self.log.warning("job %s: create outcome unknown (%s)", job.id,
                                 self._redact(cause(exc)))  # fmt: skip
                found = await self._lookup(job, client_id) if cls.has_client_id else UNKNOWN
                if isinstance(found, Handle):
                    accepted = True
                    return found
                if found is UNKNOWN or reconciles >= 3 or self.stopping:
                    reason = self._ambiguous(str(exc), job.id)
                    await self._move(job.id, State.NEEDS_ATTENTION, error=reason)
                    return None
                # The lookup says the create never happened: sending it again is safe.
                reconciles += 1
            except RefusedError as exc:
                self.breaker.record_success()
                await self._fail(job.id, FailKind.REFUSED, f"refused by {cls.name}: {exc}")
                return None
            except BatchFatalError as exc:
                self.stop_new(self._redact(exc.message), exc.exit_code)
                await self._unsubmit(job.id, str(exc))
                return None
            finally:
                if not accepted:
                    self.creates_in_flight -= 1
            attempt += 1

    async def _lookup(self, job: Job, client_id: str) -> Handle | object | None:
        """The task an unanswered create made (Handle), None if it never happened, or UNKNOWN."""
        try:
            found: Handle | None = await self._retrying(
                lambda: self.provider.reconcile(job, client_id),
                what=f"job {job.id}: lookup by client id {client_id}",
            )
        except ProviderError as exc:
            self.log.warning("job %s: lookup by client id failed: %s", job.id, cause(exc))
            return UNKNOWN
        outcome = f"found task {found.task_id}" if found else "the create never happened"
        self.log.info("job %s: reconciled by client id %s: %s", job.id, client_id, outcome)
        return found

    async def _unsubmit(self, job_id: str, why: str) -> None:
        """The create certainly did not happen: back to pending for a later run."""
        await self._move(job_id, State.PENDING, error=why)
        self.spending.release(job_id)
        self.submitted -= 1

    async def _resume_submitting(self, row: JobRow) -> None:
        """A run stopped between the intent and the provider's answer."""
        cls = type(self.provider)
        if cls.has_client_id and row.client_id:
            handle = await self._lookup(self._job(row), row.client_id)
            if handle is UNKNOWN:
                reason = self._ambiguous("the provider could not be asked about the create", row.id)
                await self._move(row.id, State.NEEDS_ATTENTION, error=reason)
                return
            if handle is None:
                await self._unsubmit(row.id, "previous create never reached the provider")
                if not self.stopping and not self.is_orphan(row.id):
                    await self._fresh(row.id)  # the feed skips resumed jobs: submit it here, once
                return
            if not isinstance(handle, Handle):
                raise TypeError(f"lookup gave {handle!r}")
            await self._move(row.id, State.RUNNING, task_id=handle.task_id)
            await self._resume(self.store.get(row.id), self.slots.take())
            return
        await self._move(
            row.id,
            State.NEEDS_ATTENTION,
            error=self._ambiguous("the run stopped while the create was in flight", row.id),
        )


def _sent_record(pj: PlannedJob, urls: InputURLs) -> str:
    """What this create sends, for the state and metadata.jsonl: files, hashes, the recipe."""
    media = pj.media
    doc: dict[str, object] = {
        "image_url": urls.image_url,
        "video_url": urls.video_url,
        "video_recipe": media.video.as_dict() if media else None,
        "image_recipe": media.image.as_dict() if media else None,
        **(pj.sent.as_dict() if pj.sent else {"image": None, "video": None}),
    }
    return json.dumps(doc, separators=(",", ":"))


def _probed(pj: PlannedJob) -> MediaPlan:
    """The job's media plan; planning made one for every job it did not reject."""
    if pj.media is None:
        raise InputError("the plan has no media facts for this job", job_id=pj.job.id)
    return pj.media


def _infos(media: MediaPlan, pj: PlannedJob) -> tuple[MediaInfo, MediaInfo]:
    if media.image_info is None or media.video_info is None:
        raise InputError("an input of this job was never probed", job_id=pj.job.id)
    return media.image_info, media.video_info


def _content_type(path: Path, detected: str) -> str:
    return _CONTENT_TYPES.get(detected) or _CONTENT_TYPES.get(
        path.suffix.lstrip(".").lower(), "application/octet-stream"
    )


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    tmp = target.with_name(f".adopt-{target.name}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
