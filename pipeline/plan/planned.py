"""A plan as values: every job with its key, media decision, action, billed seconds and cost,
and what it sends (:mod:`pipeline.plan.build` makes them; ``run`` and ``plan`` read them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.jobs import Job
from pipeline.manifest.model import Manifest
from pipeline.media.probe import MediaInfo
from pipeline.media.recipes import MediaPlan
from pipeline.plan.sending import SentMedia


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


def _facts(info: MediaInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    facts = info.facts()
    facts.pop("source", None)
    return facts
