"""The pass over a manifest's jobs that makes each :class:`PlannedJob`, once.

Everything a job's plan is made of that it shares with other jobs is decided once per input or
per recipe, not once per job: a 100 x 1,000 matrix has 1,100 inputs, a handful of recipes and
one settings value, and its 100,000 jobs share those objects. So an input's content hash, a
recipe's ``is_identity`` (VideoRecipe formats its text on each call) and the :class:`Sent` of
an input sent unchanged are looked up by identity or by hash string, never recomputed per job.

A job whose inputs need preparing waits until every such job is known: they are prepared
together (:func:`sending.prepare_all`, each distinct source and recipe once), then finished.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from pipeline import providers
from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, job_key
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.limits import limits_for
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import ImageRecipe, MediaPlan, VideoRecipe, plan_media
from pipeline.media.tools import MediaTools
from pipeline.plan import sending
from pipeline.plan.planned import PlannedJob
from pipeline.plan.probing import cache_dir
from pipeline.storage.policy import can_send_files

Made = tuple[Path, Path, float | None]
"""A prepared job's image, video and the video's measured seconds (see sending.prepare_all)."""


def input_hash(ref: InputRef, hashes: dict[str, str]) -> str:
    """Content hash of a local input; a URL is identified by its text (it is not downloaded)."""
    if ref.path is not None:
        return hashes[str(ref.path)]
    return "url:" + sha256_text(ref.url or ref.raw)


class _Draft(NamedTuple):
    """A job's media decision and key, before what it sends is known. A NamedTuple: there is
    one per job, and a frozen dataclass's __init__ costs several times more."""

    job: Job
    image_sha256: str
    video_sha256: str
    media: MediaPlan
    key: str
    action: str
    image_same: bool
    video_same: bool
    """The input goes unchanged (its recipe is the identity)."""


class JobPass:
    """Plans every job of one manifest (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        hashes: dict[str, str],
        facts: dict[str, MediaInfo | MediaError],
        *,
        done: set[str],
        hasher: FileHasher,
        tools: MediaTools,
    ) -> None:
        self.manifest, self.facts, self.done = manifest, facts, done
        self.hasher, self.tools = hasher, tools
        self.provider_cls = providers.get(manifest.provider.name)
        self.can_send = can_send_files(self.provider_cls, manifest.storage)
        # Keyed by id: the manifest keeps the refs (and the memos the recipes) alive meanwhile.
        self._sha_of: dict[int, str] = {}
        for job in manifest.jobs:
            for ref in (job.image, job.video):
                if id(ref) not in self._sha_of:
                    self._sha_of[id(ref)] = input_hash(ref, hashes)
        self._identity: dict[int, tuple[VideoRecipe | ImageRecipe, bool]] = {}
        self._as_is: dict[str, sending.Sent] = {}

    def run(self, *, prepare: bool) -> list[PlannedJob]:
        """Every job planned, in manifest order; ``prepare``: with what it sends, measured."""
        planned: list[PlannedJob | None] = []
        waiting: list[tuple[int, _Draft]] = []  # jobs whose inputs must be prepared first
        for job in self.manifest.jobs:
            draft = self._draft(job)
            needs_files = draft.action != "reject" and not (
                # an input to prepare that is a URL: the run fetches it first (planning
                # downloads nothing), so nothing is prepared now
                (draft.image_same and draft.video_same)
                or (job.image.is_url and not draft.image_same)
                or (job.video.is_url and not draft.video_same)
            )
            if prepare and needs_files:
                waiting.append((len(planned), draft))
                planned.append(None)
            else:
                planned.append(self._finish(draft, prepare=prepare, made=None))
        if waiting:
            folder = cache_dir(self.manifest) / "prepared"
            todo = [draft.media for _, draft in waiting]
            made = sending.prepare_all(todo, self.tools, folder, self.hasher)
            for i, draft in waiting:
                planned[i] = self._finish(draft, prepare=True, made=made.get(draft.job.id))
        return [pj for pj in planned if pj is not None]  # all of them, by now

    def _same(self, recipe: VideoRecipe | ImageRecipe) -> bool:
        hit = self._identity.get(id(recipe))
        if hit is None:  # kept with the answer, so its id is not reused meanwhile
            hit = self._identity[id(recipe)] = (recipe, recipe.is_identity)
        return hit[1]

    def _draft(self, job: Job) -> _Draft:
        image_sha, video_sha = self._sha_of[id(job.image)], self._sha_of[id(job.video)]
        limits = limits_for(
            self.manifest.provider.name, job.model, job.settings.character_orientation
        )
        media = plan_media(job, self.facts[image_sha], self.facts[video_sha], limits,
                           has_sound_field=self.provider_cls.has_sound_field)  # fmt: skip
        if not self.can_send:
            media = _check_url_inputs(job, media)
        image_same, video_same = self._same(media.image), self._same(media.video)
        recipe = "" if image_same and video_same else media.key_recipe
        key = job_key(job, image_sha256=image_sha, video_sha256=video_sha, recipe=recipe)
        action = "done" if key in self.done and media.action != "reject" else media.action
        return _Draft(job, image_sha, video_sha, media, key, action, image_same, video_same)

    def _finish(
        self, draft: _Draft, *, prepare: bool, made: Made | MediaError | None
    ) -> PlannedJob:
        job, media, action = draft.job, draft.media, draft.action
        billed = media.billed_seconds if action != "reject" else 0.0
        error, steps, sent = media.error, media.steps, None
        if prepare and action != "reject":
            if isinstance(made, MediaError):
                action, steps, billed, error = "reject", ("reject",), 0.0, made.reason
            else:
                sent = self._sent(draft, made)
                measured = sent.billed_seconds if sent.measured else None
                if measured:
                    billed = measured
        return PlannedJob(
            job=job,
            key=draft.key,
            image_sha256=draft.image_sha256,
            video_sha256=draft.video_sha256,
            action=action,
            steps=steps,
            billed_seconds=billed,
            estimated_cost=self.manifest.budget.cost(job.settings.mode, billed),
            error=error,
            media=media,
            sent=sent,
        )

    def _as_is_sent(self, info: MediaInfo, sha256: str, url: str | None) -> sending.Sent:
        # One shared value per content hash (the facts are facts[sha], so the value is the
        # same), found by that string instead of hashing the MediaInfo for every job.
        sent = self._as_is.get(sha256)
        if sent is None:
            sent = self._as_is[sha256] = sending.as_is(info, sha256, url=url)
        return sent

    def _sent(self, draft: _Draft, made: Made | None) -> sending.SentMedia:
        """What the provider receives: inputs as they are, or prepared files, measured."""
        media, job = draft.media, draft.job
        image_info, video_info = media.image_info, media.video_info
        if image_info is None or video_info is None:
            return sending.SentMedia(None, None, measured=False)
        image: sending.Sent | None = self._as_is_sent(image_info, draft.image_sha256, job.image.url)
        video: sending.Sent | None = self._as_is_sent(video_info, draft.video_sha256, job.video.url)
        if made is not None:
            image_path, video_path, duration = made
            hasher, tools = self.hasher, self.tools
            if not draft.image_same:
                fmt = media.image.format or image_info.format
                image = sending.prepared(image_path, hasher, tools, duration=None, fmt=fmt)
            if not draft.video_same:
                video = sending.prepared(video_path, hasher, tools, duration=duration, fmt="mp4")
        elif not (draft.image_same and draft.video_same):  # a URL the run fetches and prepares
            image = image if draft.image_same else None
            video = video if draft.video_same else None
            return sending.SentMedia(image, video, measured=False)
        return sending.SentMedia(image, video, measured=True)


def _check_url_inputs(job: Job, media: MediaPlan) -> MediaPlan:
    """A URL is sent as it is. One that needs preparation is downloaded, prepared and uploaded
    by the run where files can be sent (an upload API or the manifest's storage); elsewhere
    (where this is called) it is rejected here."""
    if media.error is not None:
        return media
    for ref, identity, what in (
        (job.video, media.video.is_identity, "video"),
        (job.image, media.image.is_identity, "image"),
    ):
        if ref.is_url and not identity:
            steps = ", ".join(media.steps)
            return replace(
                media,
                action="reject",
                steps=("reject",),
                billed_seconds=0.0,
                error=(
                    f"{what} URL needs preparation ({steps}) and {job.provider} has no upload "
                    "API to send the prepared file: add a storage block (an S3-compatible "
                    "bucket), or host a prepared copy and use its URL"
                ),
                error_path=str(ref),
            )
    return media
