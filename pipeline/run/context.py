"""What every stage of a run is given, once, by the engine: a frozen set of dependencies.

No stage reaches into another or into the engine: each receives this context and owns its own
pools and counters. The helpers here answer what every stage asks the same way (which job this
row is, what it is billed, where its result goes, how to word an ambiguous create).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.dataset.metadata import job_from_spec
from pipeline.dataset.names import REPLACED_DIR
from pipeline.jobs import Job
from pipeline.manifest.model import Manifest
from pipeline.media.hashing import sha256_text
from pipeline.media.tools import MediaTools
from pipeline.plan.build import PlannedJob
from pipeline.providers.base import Provider
from pipeline.run.budget import Spending
from pipeline.run.calls import Calls
from pipeline.run.disk import DiskGuard
from pipeline.run.halt import Halt
from pipeline.run.journal import Journal
from pipeline.run.options import RunOptions
from pipeline.run.slots import Slots
from pipeline.settings import Settings
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore
from pipeline.storage.uploads import Storage


@dataclass(frozen=True)
class RunContext:
    manifest: Manifest
    planned: Mapping[str, PlannedJob]
    options: RunOptions
    settings: Settings
    store: StateStore
    journal: Journal
    provider: Provider
    client: httpx.AsyncClient
    storage: Storage
    tools: MediaTools
    calls: Calls
    halt: Halt
    spending: Spending
    disk: DiskGuard
    slots: Slots
    log: logging.Logger

    @property
    def videos(self) -> Path:
        return self.manifest.output_dir / "videos"

    @property
    def provider_type(self) -> type[Provider]:
        """The provider's class: its capabilities (``has_client_id``...) are class attributes."""
        return type(self.provider)

    def is_orphan(self, job_id: str) -> bool:
        """A job in the state but not in the manifest (renamed, or retired by a replace)."""
        return job_id not in self.planned

    def job(self, row: JobRow) -> Job:
        pj = self.planned.get(row.id)
        return pj.job if pj is not None else job_from_spec(row, self.manifest.provider)

    def expect_seconds(self, row: JobRow) -> float | None:
        pj = self.planned.get(row.id)
        return pj.billed_seconds if pj is not None else row.billed_seconds

    def target(self, row: JobRow) -> Path:
        """Where a job's result goes: ``videos/<id>.mp4``, or under ``videos/replaced/`` for a
        paid task the manifest no longer names (kept, with its metadata beside it)."""
        if row.id in self.planned:
            return self.videos / f"{row.id}.mp4"
        tag = sha256_text(row.task_id or row.key)[:8]
        return self.videos / REPLACED_DIR / f"{row.id}.{tag}.mp4"

    def ambiguous(self, what: str, job_id: str) -> str:
        """Why a job needs attention, with the exact commands that settle it."""
        resolve = f"motion-pipeline resolve {self.manifest.path} {job_id}"
        return (
            f"{what}; the provider may have created (and billed) a task. Check its dashboard, "
            f"then `{resolve} --adopt TASK_ID`, `{resolve} --resubmit` or `{resolve} --abandon`"
        )
