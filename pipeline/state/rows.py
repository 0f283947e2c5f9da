"""The values the state store takes and returns, and how a job row is decoded.

Plain frozen dataclasses: what the runner registers (:class:`JobRecord`), what registering found
(:class:`SyncResult`, :class:`KeyChange`), a stored job (:class:`JobRow`, :class:`JobSummary`),
one entry of its history (:class:`Event`), and :class:`StaleStateError` for a job that someone
else moved first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import StateError
from pipeline.jobs import State


@dataclass(frozen=True)
class JobRecord:
    """A manifest job as :meth:`pipeline.state.store.StateStore.sync_jobs` registers it."""

    id: str
    key: str
    spec: Mapping[str, Any]
    """What the runner needs to rebuild the job: inputs, settings, provider, model (JSON)."""


@dataclass(frozen=True)
class RestoredJob:
    """A job rebuilt from the output directory (metadata.jsonl) after the state was lost."""

    id: str
    key: str
    state: State
    spec: Mapping[str, Any]
    task_id: str | None
    output: str | None = None
    output_sha256: str | None = None
    duration: float | None = None
    billed_seconds: float | None = None
    result: str | None = None
    submitted_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class KeyChange:
    """A registered job whose manifest key no longer matches the stored one."""

    job_id: str
    old_key: str
    new_key: str
    state: State
    task_id: str | None


@dataclass(frozen=True)
class SyncResult:
    inserted: int
    changed: tuple[KeyChange, ...] = ()


@dataclass(frozen=True)
class JobRow:
    id: str
    key: str
    state: State
    spec_json: str
    client_id: str | None
    attempt: int
    task_id: str | None
    result_url: str | None
    output: str | None
    output_sha256: str | None
    billed_seconds: float | None
    duration: float | None
    error: str | None
    created_at: str
    updated_at: str
    submitted_at: str | None
    finished_at: str | None
    result: str | None
    """JSON facts about the downloaded result (width, height, fps, codec, size) for metadata."""
    fail_kind: str | None = None
    """Why a failed job failed (:class:`FailKind`), as data."""
    inputs: str | None = None
    """JSON facts about what was sent to the provider (prepared files, hashes, recipe)."""

    @property
    def spec(self) -> dict[str, Any]:
        """Parsed on use: a 100,000-row status listing should not decode every spec."""
        value: dict[str, Any] = json.loads(self.spec_json)
        return value


@dataclass(frozen=True)
class JobSummary:
    """The columns ``status`` shows for one job."""

    id: str
    state: State
    task_id: str | None
    error: str | None
    output: str | None
    fail_kind: str | None = None


@dataclass(frozen=True)
class BriefRow:
    """What planning and the money figures need of every job: no spec decoded (100,000 rows)."""

    id: str
    key: str
    state: State
    task_id: str | None
    fail_kind: str | None
    billed_seconds: float | None
    mode: str | None


@dataclass(frozen=True)
class OutputRow:
    """A done job's result as the state knows it: what the output check compares with the disk."""

    id: str
    task_id: str | None
    output: str | None
    output_sha256: str | None
    result: str | None


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    at: str
    from_state: State | None
    to_state: State
    detail: dict[str, Any] = field(default_factory=dict)


class StaleStateError(StateError):
    """``transition(expect=...)`` found the job in another state (someone else moved it)."""

    def __init__(self, message: str, *, actual: State) -> None:
        super().__init__(message)
        self.actual = actual


class DuplicateTaskError(StateError):
    """A task id already belongs to another job of a different generation (key).

    A provider that answers one id for two different creates would otherwise give both jobs
    the same video and credit both prompts with it.
    """

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


#: The columns of ``jobs`` in :class:`JobRow`'s field order, for :func:`job_row`.
SELECT_JOBS = (
    "SELECT id, key, state, spec, client_id, attempt, task_id, result_url, output, output_sha256, "
    "billed_seconds, duration, error, created_at, updated_at, submitted_at, finished_at, result, "
    "fail_kind, inputs FROM jobs"
)


#: A State by its stored value: a dict lookup is ~5x cheaper than ``State(value)``.
STATE_BY_VALUE = {s.value: s for s in State}


def job_row(r: tuple[Any, ...]) -> JobRow:
    """A :data:`SELECT_JOBS` result row as a JobRow."""
    return JobRow(r[0], r[1], STATE_BY_VALUE[r[2]], *r[3:])
