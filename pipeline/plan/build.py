"""From a manifest to a plan: every job with its key, media facts, action, billed seconds, cost.

Planning spends nothing: it hashes inputs (cached), probes media and decides preparation, but
never calls a provider. Its caches (``hashes.json``, ``probes.json``) live where
:mod:`pipeline.plan.cache` finds room: a read-only manifest folder still plans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipeline.errors import MediaError
from pipeline.gcpause import gc_paused
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import FileHasher
from pipeline.media.probe import MediaInfo
from pipeline.media.tools import MediaTools, find_tools
from pipeline.plan import probing
from pipeline.plan.cache import CacheFolder
from pipeline.plan.jobpass import JobPass, input_hash
from pipeline.plan.planned import Plan, PlannedJob
from pipeline.plan.probing import cache_dir as cache_dir  # its home moved; importers keep it
from pipeline.settings import Settings

# Plan and PlannedJob live in plan.planned, input_hash in plan.jobpass; importers keep these.
__all__ = ["Plan", "PlannedJob", "cache_dir", "hash_inputs", "input_hash", "make_plan",
           "plan_cache", "probe_inputs", "totals"]  # fmt: skip


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
    with gc_paused():  # a few values per job, all kept (see pipeline.gcpause)
        planned = JobPass(manifest, hashes, facts, done=set(done_keys), hasher=hasher,
                          tools=tools).run(prepare=prepare)  # fmt: skip
    probing.drop_unneeded_fetches(manifest, planned)
    if prepare:
        hasher.save()
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
