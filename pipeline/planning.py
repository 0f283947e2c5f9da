"""From a manifest to a plan: every job with its key, media facts, action, billed seconds, cost.

Planning spends nothing: it hashes inputs (cached), probes media and decides preparation, but
never calls a provider.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.hashing import FileHasher, sha256_text
from pipeline.jobs import InputRef, Job, job_key
from pipeline.manifest import Manifest


@dataclass(frozen=True)
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
    image_info: dict[str, Any] | None = None
    video_info: dict[str, Any] | None = None

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
            "error": self.error,
            "image_info": self.image_info,
            "video_info": self.video_info,
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
            "totals": self.totals,
        }


def input_hash(ref: InputRef, hashes: dict[str, str]) -> str:
    """Content hash of a local input; a URL is identified by its text (it is not downloaded)."""
    if ref.path is not None:
        return hashes[str(ref.path)]
    return "url:" + sha256_text(ref.url or ref.raw)


def cache_dir(manifest: Manifest) -> Path:
    return manifest.output_dir / "cache"


def hash_inputs(manifest: Manifest, hasher: FileHasher | None = None) -> dict[str, str]:
    hasher = hasher or FileHasher(cache_dir(manifest) / "hashes.json")
    paths = [ref.path for job in manifest.jobs for ref in (job.image, job.video) if ref.path]
    hashes = hasher.hash_many(paths)
    hasher.save()
    return hashes


def make_plan(manifest: Manifest, *, hasher: FileHasher | None = None) -> Plan:
    hashes = hash_inputs(manifest, hasher)
    planned = []
    for job in manifest.jobs:
        image_sha = input_hash(job.image, hashes)
        video_sha = input_hash(job.video, hashes)
        key = job_key(job, image_sha256=image_sha, video_sha256=video_sha)
        planned.append(PlannedJob(job=job, key=key, image_sha256=image_sha, video_sha256=video_sha))
    return Plan(manifest=manifest, jobs=tuple(planned), totals=totals(manifest, planned))


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
