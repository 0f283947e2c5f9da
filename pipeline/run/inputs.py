"""The inputs stage: what a job sends, as the URLs its create carries.

The plan already prepared and measured every local input (:mod:`pipeline.plan.sending`): this
stage sends exactly those files. Only a URL input that needs preparation is fetched, prepared
and measured here (planning does not download). Then the storage turns each file into a URL
(the provider's upload API, object storage) or passes a URL through, in a bounded pool.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import (
    BatchFatalError,
    BatchStopped,
    ConfigError,
    InputError,
    PipelineError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import FailKind, InputRef
from pipeline.media.hashing import FileHasher
from pipeline.media.prepare import prepare
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import MediaPlan
from pipeline.plan.build import PlannedJob, cache_dir
from pipeline.plan.sending import Sent, SentMedia, as_is, prepared
from pipeline.providers.base import InputURLs
from pipeline.run.context import RunContext
from pipeline.settings import DEFAULTS
from pipeline.storage.uploads import LocalFile, Source, download_input


@dataclass(frozen=True)
class Ready:
    """A job's inputs, ready for its create: the URLs, and what they are (for provenance)."""

    urls: InputURLs
    sent: SentMedia

    @property
    def billed_seconds(self) -> float | None:
        return self.sent.billed_seconds


class InputsStage:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._prepare_pool = asyncio.Semaphore(DEFAULTS.preparations or os.cpu_count() or 2)
        self._upload_pool = asyncio.Semaphore(DEFAULTS.uploads)
        self._hasher = FileHasher(cache_dir(ctx.manifest) / "hashes.json")

    async def storage_ready(self) -> bool:
        """One read-only check of the storage (the bucket exists, its region, our access)
        before any job: a missing bucket stops the run with its name, nothing sent."""
        ctx = self.ctx
        try:
            await ctx.calls.repeat(ctx.storage.preflight, what="storage check")
        except PipelineError as exc:
            ctx.halt.stop_new(ctx.journal.redact(str(exc)), exc.exit_code)
            return False
        return True

    async def ready_or_none(self, pj: PlannedJob) -> Ready | None:
        """The job's inputs as URLs, or None with the job moved (failed: unusable) or left
        pending (an upload that kept failing; a batch-wide stop)."""
        ctx, job_id = self.ctx, pj.job.id
        try:
            return await self.ready(pj)
        except (InputError, RefusedError) as exc:
            await ctx.journal.fail(job_id, FailKind.INPUT, str(exc))
        except ConfigError as exc:  # the storage bucket is missing or refuses us: every job would
            ctx.halt.stop_new(ctx.journal.redact(str(exc)), exc.exit_code)
        except TransientError as exc:
            why = ctx.journal.redact(str(exc))
            ctx.log.warning("job %s: upload failed, left pending: %s", job_id, why)
        except BatchFatalError as exc:
            ctx.halt.stop_new(ctx.journal.redact(exc.message), exc.exit_code)
        except BatchStopped as exc:  # a full disk while fetching or preparing: stays pending
            ctx.halt.stop_new(str(exc), exc.exit_code)
        return None

    async def ready(self, pj: PlannedJob) -> Ready:
        """The job's inputs as URLs. InputError / RefusedError: the job cannot be sent;
        TransientError: try again later; BatchStopped: the disk."""
        sent = pj.sent
        if sent is None or sent.image is None or sent.video is None:
            sent = await self._prepare_urls(pj)
        if sent.image is None or sent.video is None:  # pragma: no cover - _prepare_urls fills both
            raise InputError("the plan left an input unprepared", job_id=pj.job.id)
        image, video = _source(sent.image), _source(sent.video)
        job_id = pj.job.id
        async with self._upload_pool:
            urls = await self.ctx.calls.repeat(
                lambda: self.ctx.storage.input_urls(job_id, image, video),
                what=f"job {job_id}: upload",
            )
        return Ready(urls, sent)

    async def _prepare_urls(self, pj: PlannedJob) -> SentMedia:
        """Fetch the URL inputs that need preparation, prepare and measure what is sent."""
        media = _media(pj)
        image_info, video_info = _infos(media, pj)
        image_info = await self._fetched(pj, pj.job.image, media.image.is_identity, image_info)
        video_info = await self._fetched(pj, pj.job.video, media.video.is_identity, video_info)
        local = replace(media, image_info=image_info, video_info=video_info)
        folder = cache_dir(self.ctx.manifest) / "prepared"
        async with self._prepare_pool:
            made = await asyncio.to_thread(
                prepare, local, self.ctx.tools, folder, hasher=self._hasher
            )
        tools, hasher, job = self.ctx.tools, self._hasher, pj.job
        image = as_is(image_info, pj.image_sha256, url=job.image.url)
        video = as_is(video_info, pj.video_sha256, url=job.video.url)
        if not media.image.is_identity:
            fmt = media.image.format or image_info.format
            image = await asyncio.to_thread(
                prepared, made.image, hasher, tools, duration=None, fmt=fmt
            )
        if not media.video.is_identity:
            video = await asyncio.to_thread(
                prepared, made.video, hasher, tools, duration=made.video_duration, fmt="mp4"
            )
        return SentMedia(image, video, measured=True)

    async def _fetched(
        self, pj: PlannedJob, ref: InputRef, identity: bool, info: MediaInfo
    ) -> MediaInfo:
        if ref.url is None or identity:
            return info
        url, folder = ref.url, cache_dir(self.ctx.manifest) / "inputs"
        local = await self.ctx.calls.repeat(
            lambda: download_input(self.ctx.client, url, folder, job_id=pj.job.id),
            what=f"job {pj.job.id}: input download",
        )
        return replace(info, source=str(local))


def _source(sent: Sent) -> Source:
    """A URL passed through as it is, or a local file (prepared or not) to turn into a URL."""
    if sent.url is not None:
        return sent.url
    if sent.path is None:
        raise InputError("an input has neither a file nor a URL to send")
    return LocalFile(Path(sent.path), sent.content_type, sent.sha256)


def _media(pj: PlannedJob) -> MediaPlan:
    if pj.media is None:
        raise InputError("the plan has no media facts for this job", job_id=pj.job.id)
    return pj.media


def _infos(media: MediaPlan, pj: PlannedJob) -> tuple[MediaInfo, MediaInfo]:
    if media.image_info is None or media.video_info is None:
        raise InputError("an input of this job was never probed", job_id=pj.job.id)
    return media.image_info, media.video_info
