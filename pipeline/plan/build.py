"""From a manifest to a plan: every job with its key, media facts, action, billed seconds, cost.

Planning spends nothing: it hashes inputs (cached), probes media and decides preparation, but
never calls a provider. Its caches (``hashes.json``, ``probes.json``) live where
:mod:`pipeline.plan.cache` finds room: a read-only manifest folder still plans.
"""

from __future__ import annotations

import asyncio
import functools
import types
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline import providers
from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, job_key
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.limits import limits_for
from pipeline.media.probe import MediaInfo, probe_many
from pipeline.media.recipes import MediaPlan, plan_media
from pipeline.media.tools import MediaTools, find_tools
from pipeline.plan import sending
from pipeline.plan.cache import CacheFolder
from pipeline.plan.sending import SentMedia
from pipeline.settings import Settings


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

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "manifest": str(m.path),
            "name": m.name,
            "output_dir": str(m.output_dir),
            "provider": m.provider.name,
            "model": m.provider.model,
            "jobs": [pj.as_dict() for pj in self.jobs],
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


def cache_dir(manifest: Manifest) -> Path:
    """``<output_dir>/cache``: the run's caches (prepared media, fetched inputs)."""
    return manifest.output_dir / "cache"


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
        media = _check_url_inputs(job, media, has_upload=provider_cls.has_upload)
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


def _check_url_inputs(job: Job, media: MediaPlan, *, has_upload: bool) -> MediaPlan:
    """A URL is sent as it is. One that needs preparation is downloaded, prepared and uploaded
    by the run where the provider has an upload API; elsewhere it is rejected here."""
    if media.error is not None or has_upload:
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
                    "API to send the prepared file: host a prepared copy and use its URL"
                ),
                error_path=str(ref),
            )
    return media


def probe_inputs(
    manifest: Manifest,
    hashes: dict[str, str],
    tools: MediaTools,
    *,
    cache: CacheFolder | None = None,
) -> dict[str, MediaInfo | MediaError]:
    """Probe facts per input hash; local files are probed once per content, cached on disk."""
    sources: dict[str, Path | str] = {}
    for job in manifest.jobs:
        for ref in (job.image, job.video):
            sources.setdefault(input_hash(ref, hashes), ref.path or ref.url or ref.raw)
    cached = _load_probe_cache(cache)
    facts: dict[str, MediaInfo | MediaError] = {}
    todo: list[str] = []
    for sha, source in sources.items():
        # URLs are cached by their text too: a URL's identity is its text (see input_hash), and a
        # re-run of a finished batch must not send a single request.
        hit = cached.get(sha)
        info = _cached_info(hit, str(source)) if hit is not None else None
        if info is not None:
            facts[sha] = info
        else:
            todo.append(sha)
    if todo:
        results = asyncio.run(probe_many([sources[sha] for sha in todo], tools))
        fresh = False
        for sha, result in zip(todo, results, strict=True):
            facts[sha] = result
            if isinstance(result, MediaInfo):
                cached[sha] = result.facts()
                fresh = True
        if fresh and cache is not None:
            cache.write_json(PROBE_CACHE, {"version": 1, "probes": cached})
    return facts


PROBE_CACHE = "probes.json"


def _load_probe_cache(cache: CacheFolder | None) -> dict[str, Any]:
    doc = cache.read_json(PROBE_CACHE) if cache is not None else None
    if isinstance(doc, dict) and doc.get("version") == 1 and isinstance(doc.get("probes"), dict):
        probes: dict[str, Any] = doc["probes"]
        return probes
    return {}


@functools.cache
def _info_types() -> dict[str, Any]:
    return typing.get_type_hints(MediaInfo)


def _cached_info(hit: Any, source: str) -> MediaInfo | None:
    """A cached probe entry as MediaInfo, or None when it is not one (edited, older, damaged)."""
    if not isinstance(hit, dict):
        return None
    values = {**hit, "source": source}
    hints = _info_types()
    if set(values) != {f.name for f in fields(MediaInfo)}:
        return None  # a field added or removed since it was written: probe again
    if not all(_fits(values[name], hints[name]) for name in values):
        return None
    return MediaInfo(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a simple annotation (int, float, str, bool, Literal, X | None)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)  # JSON writes 3.0 as 3.0, but a hand edit says 3
    return type(value) is hint


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
