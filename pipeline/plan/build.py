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
from typing import Any

from pipeline import providers
from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, job_key
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.limits import limits_for
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import MediaPlan, plan_media
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
        for pj in self.jobs:
            media = pj.media
            for ref, info in (
                (pj.job.image, media.image_info if media else None),
                (pj.job.video, media.video_info if media else None),
            ):
                if str(ref) not in out or out[str(ref)] is None:
                    out[str(ref)] = _facts(info)
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
    provider_cls = providers.get(manifest.provider.name)
    done = set(done_keys)
    planned = []
    for job in manifest.jobs:
        image_sha = input_hash(job.image, hashes)
        video_sha = input_hash(job.video, hashes)
        limits = limits_for(manifest.provider.name, job.model, job.settings.character_orientation)
        media = plan_media(
            job,
            facts[image_sha],
            facts[video_sha],
            limits,
            has_sound_field=provider_cls.has_sound_field,
        )
        media = _check_url_inputs(
            job, media, can_send=can_send_files(provider_cls, manifest.storage)
        )
        key = job_key(job, image_sha256=image_sha, video_sha256=video_sha, recipe=media.key_recipe)
        action = "done" if key in done and media.action != "reject" else media.action
        billed = media.billed_seconds if action != "reject" else 0.0
        planned.append(
            PlannedJob(
                job=job,
                key=key,
                image_sha256=image_sha,
                video_sha256=video_sha,
                action=action,
                steps=media.steps,
                billed_seconds=billed,
                estimated_cost=manifest.budget.cost(job.settings.mode, billed),
                error=media.error,
                media=media,
            )
        )
    probing.drop_unneeded_fetches(manifest, planned)
    if prepare:
        planned = _prepared(manifest, planned, tools, hasher, cache)
        hasher.save()
    return Plan(manifest=manifest, jobs=tuple(planned), totals=totals(manifest, planned))


def _prepared(
    manifest: Manifest,
    planned: list[PlannedJob],
    tools: MediaTools,
    hasher: FileHasher,
    cache: CacheFolder,
) -> list[PlannedJob]:
    """Each job with what it sends: prepared local inputs made and measured (see sending)."""
    todo = [
        pj.media
        for pj in planned
        if pj.media is not None and pj.action != "reject" and not pj.media.is_identity
        and not _fetch_first(pj, pj.media)
    ]  # fmt: skip
    folder = cache_dir(manifest) / "prepared"
    made = sending.prepare_all(todo, tools, folder, hasher) if todo else {}
    out = []
    for pj in planned:
        media = pj.media
        if media is None or pj.action == "reject":
            out.append(pj)
            continue
        result = made.get(pj.job.id)
        if isinstance(result, MediaError):
            out.append(replace(pj, action="reject", steps=("reject",), billed_seconds=0.0,
                               estimated_cost=manifest.budget.cost(pj.job.settings.mode, 0.0),
                               error=result.reason))  # fmt: skip
            continue
        sent = _sent(pj, media, result, hasher, tools)
        billed = sent.billed_seconds if sent.measured and sent.billed_seconds else pj.billed_seconds
        cost = manifest.budget.cost(pj.job.settings.mode, billed or 0.0)
        out.append(replace(pj, sent=sent, billed_seconds=billed, estimated_cost=cost))
    return out


def _fetch_first(pj: PlannedJob, media: MediaPlan) -> bool:
    """An input to prepare is a URL: the run fetches it first (planning downloads nothing)."""
    return (pj.job.image.is_url and not media.image.is_identity) or (
        pj.job.video.is_url and not media.video.is_identity
    )


def _sent(
    pj: PlannedJob,
    media: MediaPlan,
    made: tuple[Path, Path, float | None] | None,
    hasher: FileHasher,
    tools: MediaTools,
) -> sending.SentMedia:
    image_info, video_info = media.image_info, media.video_info
    if image_info is None or video_info is None:
        return sending.SentMedia(None, None, measured=False)
    job = pj.job
    image: sending.Sent | None = sending.as_is(image_info, pj.image_sha256, url=job.image.url)
    video: sending.Sent | None = sending.as_is(video_info, pj.video_sha256, url=job.video.url)
    if made is not None:
        image_path, video_path, duration = made
        if not media.image.is_identity:
            fmt = media.image.format or image_info.format
            image = sending.prepared(image_path, hasher, tools, duration=None, fmt=fmt)
        if not media.video.is_identity:
            video = sending.prepared(video_path, hasher, tools, duration=duration, fmt="mp4")
    elif not media.is_identity:  # a URL the run fetches and prepares: not measured yet
        image = None if not media.image.is_identity else image
        video = None if not media.video.is_identity else video
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
