"""From a manifest to a plan: every job with its key, media facts, action, billed seconds, cost.

Planning spends nothing: it hashes inputs (cached), probes media and decides preparation, but
never calls a provider. Its caches (``hashes.json``, ``probes.json``) live where
:mod:`pipeline.plan.cache` finds room: a read-only manifest folder still plans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import providers
from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, job_key
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.limits import limits_for
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import ImageRecipe, MediaPlan, VideoRecipe, plan_media
from pipeline.media.tools import MediaTools, find_tools
from pipeline.plan import probing, sending
from pipeline.plan.cache import CacheFolder
from pipeline.plan.probing import cache_dir as cache_dir  # its home moved; importers keep it
from pipeline.plan.sending import SentMedia
from pipeline.settings import Settings
from pipeline.storage.policy import can_send_files


@dataclass(frozen=True, slots=True)
class PlannedJob:
    job: Job
    key: str
    image_sha256: str
    video_sha256: str
    action: str = "ok"
    steps: tuple[str, ...] = ()
    billed_seconds: float | None = None
    estimated_cost: float | None = None
    error: str | None = None
    media: MediaPlan | None = None
    sent: SentMedia | None = None
    """What the provider will receive (prepared files measured); None when not prepared yet."""

    def as_dict(self) -> dict[str, Any]:
        job = self.job
        return {
            "id": job.id,
            "line": job.line,
            "image": str(job.image),
            "video": str(job.video),
            "settings": job.settings.as_dict(),
            "key": self.key,
            "action": self.action,
            "steps": list(self.steps),
            "billed_seconds": self.billed_seconds,
            "estimated_cost": self.estimated_cost,
            "billed_measured": self.sent is not None and self.sent.measured,
            "sent": self.sent.as_dict() if self.sent else None,
            "error": self.error,
        }


@dataclass(frozen=True)
class Plan:
    manifest: Manifest
    jobs: tuple[PlannedJob, ...]
    totals: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, *, jobs: bool = True) -> dict[str, Any]:
        m = self.manifest
        return {
            "manifest": str(m.path),
            "name": m.name,
            "output_dir": str(m.output_dir),
            "provider": m.provider.name,
            "model": m.provider.model,
            "jobs": [pj.as_dict() for pj in self.jobs] if jobs else [],
            "inputs": self.inputs(),
            "totals": self.totals,
        }

    def inputs(self) -> dict[str, dict[str, Any] | None]:
        """Probe facts per input (as jobs name them), listed once however many jobs share it."""
        out: dict[str, dict[str, Any] | None] = {}
        known: set[int] = set()  # ids of refs already listed with facts: the jobs share them
        for pj in self.jobs:
            media = pj.media
            for ref, info in (
                (pj.job.image, media.image_info if media else None),
                (pj.job.video, media.video_info if media else None),
            ):
                if id(ref) in known:
                    continue
                shown = str(ref)
                if out.get(shown) is None:
                    out[shown] = _facts(info)
                if out[shown] is not None:
                    known.add(id(ref))
        return out


def input_hash(ref: InputRef, hashes: dict[str, str]) -> str:
    """Content hash of a local input; a URL is identified by its text (it is not downloaded)."""
    if ref.path is not None:
        return hashes[str(ref.path)]
    return "url:" + sha256_text(ref.url or ref.raw)


def probe_inputs(
    manifest: Manifest,
    hashes: dict[str, str],
    tools: MediaTools,
    *,
    cache: CacheFolder | None = None,
) -> dict[str, MediaInfo | MediaError]:
    """Probe facts per input hash (see :mod:`pipeline.plan.probing`)."""
    return probing.probe_inputs(manifest, hashes, tools, cache=cache, input_hash=input_hash)


def plan_cache(manifest: Manifest, settings: Settings) -> CacheFolder:
    """Where planning's caches go: the output dir's ``cache/``, else a per-user folder."""
    return CacheFolder.for_output(manifest.output_dir, settings)


def hash_inputs(
    manifest: Manifest, hasher: FileHasher | None = None, *, cache: CacheFolder | None = None
) -> dict[str, str]:
    hasher = hasher or FileHasher(folder=cache)
    paths = [ref.path for job in manifest.jobs for ref in (job.image, job.video) if ref.path]
    hashes = hasher.hash_many(paths)
    hasher.save()
    return hashes


def make_plan(
    manifest: Manifest,
    settings: Settings | None = None,
    *,
    hasher: FileHasher | None = None,
    tools: MediaTools | None = None,
    done_keys: Sequence[str] = (),
    prepare: bool = False,
) -> Plan:
    """Hash, probe and plan every job. ``done_keys``: keys already generated (action ``done``).

    ``prepare``: also prepare what the provider will receive and measure it, so the billed
    seconds are the prepared clips' own (``plan`` and ``run``; ``validate`` only checks).
    """
    settings = settings or Settings.from_env()
    cache = plan_cache(manifest, settings)
    hasher = hasher or FileHasher(folder=cache)
    hashes = hash_inputs(manifest, hasher, cache=cache)
    tools = tools or find_tools(settings)
    facts = probe_inputs(manifest, hashes, tools, cache=cache)
    identity = _IdentityMemo()
    drafts = _drafts(manifest, hashes, facts, set(done_keys), identity)
    made = _prepare(manifest, drafts, tools, hasher) if prepare else None
    sends = _Sends(hasher, tools, identity)
    planned = [_planned(manifest, draft, made, sends) for draft in drafts]
    probing.drop_unneeded_fetches(manifest, planned)
    if prepare:
        hasher.save()
    return Plan(manifest=manifest, jobs=tuple(planned), totals=totals(manifest, planned))


class _Draft(NamedTuple):
    """A job's media decision and key, before what it sends is known (preparation is done for
    all jobs at once, between the two passes). A NamedTuple: a frozen dataclass's __init__
    costs six times as much, and there is one of these per job."""

    job: Job
    image_sha256: str
    video_sha256: str
    media: MediaPlan
    key: str
    action: str
    send_as_is: bool
    """Nothing to prepare before the run: both inputs go unchanged, or the run fetches one."""


def _drafts(
    manifest: Manifest,
    hashes: dict[str, str],
    facts: dict[str, MediaInfo | MediaError],
    done: set[str],
    identity: _IdentityMemo,
) -> list[_Draft]:
    provider_cls = providers.get(manifest.provider.name)
    can_send = can_send_files(provider_cls, manifest.storage)
    # Per input and per recipe, not per job: a 100 x 1,000 matrix has 1,100 inputs and a
    # handful of recipes, and its jobs share those objects (keyed by id: they outlive the plan).
    sha_of: dict[int, str] = {}
    for job in manifest.jobs:
        for ref in (job.image, job.video):
            if id(ref) not in sha_of:
                sha_of[id(ref)] = input_hash(ref, hashes)
    out = []
    for job in manifest.jobs:
        image_sha, video_sha = sha_of[id(job.image)], sha_of[id(job.video)]
        limits = limits_for(manifest.provider.name, job.model, job.settings.character_orientation)
        media = plan_media(job, facts[image_sha], facts[video_sha], limits,
                           has_sound_field=provider_cls.has_sound_field)  # fmt: skip
        if not can_send:
            media = _check_url_inputs(job, media, can_send=False)
        image_same, video_same = identity(media.image), identity(media.video)
        recipe = "" if image_same and video_same else media.key_recipe
        key = job_key(job, image_sha256=image_sha, video_sha256=video_sha, recipe=recipe)
        action = "done" if key in done and media.action != "reject" else media.action
        # An input to prepare that is a URL: the run fetches it first (planning downloads nothing).
        fetch_first = (job.image.is_url and not image_same) or (job.video.is_url and not video_same)
        send_as_is = (image_same and video_same) or fetch_first
        out.append(_Draft(job, image_sha, video_sha, media, key, action, send_as_is))
    return out


class _IdentityMemo:
    """``recipe.is_identity``, asked once per recipe object: recipes shares one per distinct
    input half among the jobs, and VideoRecipe.is_identity formats its text on every call."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[VideoRecipe | ImageRecipe, bool]] = {}

    def __call__(self, recipe: VideoRecipe | ImageRecipe) -> bool:
        hit = self._seen.get(id(recipe))
        if hit is None:  # the recipe is kept in the memo, so its id is not reused meanwhile
            hit = self._seen[id(recipe)] = (recipe, recipe.is_identity)
        return hit[1]


def _prepare(
    manifest: Manifest, drafts: list[_Draft], tools: MediaTools, hasher: FileHasher
) -> dict[str, tuple[Path, Path, float | None] | MediaError]:
    """Prepared local inputs, made (each distinct source and recipe once), by job id."""
    todo = [d.media for d in drafts if d.action != "reject" and not d.send_as_is]
    folder = cache_dir(manifest) / "prepared"
    return sending.prepare_all(todo, tools, folder, hasher) if todo else {}


def _planned(
    manifest: Manifest,
    draft: _Draft,
    made: dict[str, tuple[Path, Path, float | None] | MediaError] | None,
    sends: _Sends,
) -> PlannedJob:
    """The planned job, built once; with what it sends when inputs were prepared (``made``)."""
    job, media, action = draft.job, draft.media, draft.action
    mode = job.settings.mode
    billed = media.billed_seconds if action != "reject" else 0.0
    error, steps, sent = media.error, media.steps, None
    if made is not None and action != "reject":
        result = made.get(job.id)
        if isinstance(result, MediaError):
            action, steps, billed, error = "reject", ("reject",), 0.0, result.reason
        else:
            sent = sends(draft, result)
            if sent.measured and sent.billed_seconds:
                billed = sent.billed_seconds
    return PlannedJob(
        job=job,
        key=draft.key,
        image_sha256=draft.image_sha256,
        video_sha256=draft.video_sha256,
        action=action,
        steps=steps,
        billed_seconds=billed,
        estimated_cost=manifest.budget.cost(mode, billed),
        error=error,
        media=media,
        sent=sent,
    )


class _Sends:
    """What each job sends (:class:`sending.SentMedia`). An input sent unchanged is one shared
    value per content hash (its facts are ``facts[sha]``, so the value is the same), looked up
    by that string rather than by hashing its MediaInfo for each of 100,000 jobs."""

    def __init__(self, hasher: FileHasher, tools: MediaTools, identity: _IdentityMemo) -> None:
        self.hasher, self.tools, self.identity = hasher, tools, identity
        self._as_is: dict[str, sending.Sent] = {}

    def as_is(self, info: MediaInfo, sha256: str, url: str | None) -> sending.Sent:
        sent = self._as_is.get(sha256)
        if sent is None:
            sent = self._as_is[sha256] = sending.as_is(info, sha256, url=url)
        return sent

    def __call__(
        self, draft: _Draft, made: tuple[Path, Path, float | None] | None
    ) -> sending.SentMedia:
        media, job = draft.media, draft.job
        image_info, video_info = media.image_info, media.video_info
        if image_info is None or video_info is None:
            return sending.SentMedia(None, None, measured=False)
        image: sending.Sent | None = self.as_is(image_info, draft.image_sha256, job.image.url)
        video: sending.Sent | None = self.as_is(video_info, draft.video_sha256, job.video.url)
        image_same, video_same = self.identity(media.image), self.identity(media.video)
        if made is not None:
            image_path, video_path, duration = made
            hasher, tools = self.hasher, self.tools
            if not image_same:
                fmt = media.image.format or image_info.format
                image = sending.prepared(image_path, hasher, tools, duration=None, fmt=fmt)
            if not video_same:
                video = sending.prepared(video_path, hasher, tools, duration=duration, fmt="mp4")
        elif not (image_same and video_same):  # a URL the run fetches and prepares: not measured
            image = image if image_same else None
            video = video if video_same else None
            return sending.SentMedia(image, video, measured=False)
        return sending.SentMedia(image, video, measured=True)


def _check_url_inputs(job: Job, media: MediaPlan, *, can_send: bool) -> MediaPlan:
    """A URL is sent as it is. One that needs preparation is downloaded, prepared and uploaded
    by the run where files can be sent (an upload API or the manifest's storage); elsewhere it
    is rejected here."""
    if media.error is not None or can_send:
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


def _facts(info: MediaInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    facts = info.facts()
    facts.pop("source", None)
    return facts


def totals(manifest: Manifest, planned: list[PlannedJob]) -> dict[str, Any]:
    actions = Counter(pj.action for pj in planned)
    per_mode: dict[str, dict[str, Any]] = {}
    for pj in planned:
        if pj.action in {"reject", "done"}:
            continue
        mode = pj.job.settings.mode
        entry = per_mode.setdefault(mode, {"jobs": 0, "billed_seconds": 0.0, "estimated_cost": 0.0})
        entry["jobs"] += 1
        entry["billed_seconds"] += pj.billed_seconds or 0.0
        if pj.estimated_cost is None:
            entry["estimated_cost"] = None
        elif entry["estimated_cost"] is not None:
            entry["estimated_cost"] += pj.estimated_cost
    for entry in per_mode.values():
        entry["billed_seconds"] = round(entry["billed_seconds"], 3)
        if entry["estimated_cost"] is not None:
            entry["estimated_cost"] = round(entry["estimated_cost"], 4)
    costs = [e["estimated_cost"] for e in per_mode.values()]
    return {
        "jobs": len(planned),
        "actions": dict(sorted(actions.items())),
        "per_mode": per_mode,
        "billed_seconds": round(sum(e["billed_seconds"] for e in per_mode.values()), 3),
        "estimated_cost": None if None in costs else round(sum(costs), 4),
        "currency": manifest.budget.currency,
    }
