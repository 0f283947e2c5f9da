"""Jobs and what is known about them: settings, inputs, key, provider handle, status, states.

Everything here is a frozen value; the state store (:mod:`pipeline.state.store`) owns their history.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

Mode = Literal["std", "pro"]
Orientation = Literal["image", "video"]


@dataclass(frozen=True, slots=True)
class Trim:
    """An explicit window of the driving clip, in seconds; ``end=None`` means to the end."""

    start: float = 0.0
    end: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.start == 0 and self.end is None


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Every generation setting of one job, after defaults and matrix values were applied."""

    mode: Mode = "std"
    character_orientation: Orientation = "video"
    keep_original_sound: bool = True
    prompt: str = ""
    trim: Trim = field(default_factory=Trim)

    def as_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies and is the slowest part of a 10k-job plan.
        return {
            "mode": self.mode,
            "character_orientation": self.character_orientation,
            "keep_original_sound": self.keep_original_sound,
            "prompt": self.prompt,
            "trim": {"start": self.trim.start, "end": self.trim.end},
        }


@dataclass(frozen=True, slots=True)
class InputRef:
    """One image or video input as the manifest named it.

    Exactly one of ``path`` (absolute, resolved against the manifest) or ``url`` is set.
    """

    raw: str
    path: Path | None = None
    url: str | None = None

    @property
    def is_url(self) -> bool:
        return self.url is not None

    @property
    def stem(self) -> str:
        if self.path is not None:
            return self.path.stem
        tail = (self.url or self.raw).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return tail.rsplit(".", 1)[0] if "." in tail else tail

    def __str__(self) -> str:
        return self.url if self.url is not None else str(self.path)


@dataclass(frozen=True, slots=True)
class Job:
    """One generation: a character image, a driving video and settings, for one provider."""

    id: str
    image: InputRef
    video: InputRef
    settings: JobSettings
    provider: str
    model: str
    line: int = 0
    """Manifest line the job came from (a ``jobs`` entry or the ``matrix`` block)."""
    where: str = "$"
    """JSON path of that manifest entry (``$.jobs[3]`` or ``$.matrix``), for diagnostics."""


def job_key(
    job: Job,
    *,
    image_sha256: str,
    video_sha256: str,
    recipe: str = "",
) -> str:
    """The identity of a generation: same key, same paid result, never bought twice.

    ``video_sha256`` is the content hash of the *source* driving clip and ``recipe`` names the
    deterministic preparation applied to it (trim window, scale, audio strip), so the key stays
    stable when ffmpeg's encoder output changes between versions.
    """
    # Fields joined by a separator no field can contain (hex, ids, JSON): cheap and unambiguous.
    fields = ("v1", job.provider, job.model, _settings_json(job.settings), image_sha256,
              video_sha256, recipe)  # fmt: skip
    blob = "\x1f".join(fields).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _settings_json(settings: JobSettings) -> str:
    return json.dumps(settings.as_dict(), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- provider side


@dataclass(frozen=True, slots=True)
class Handle:
    """What a provider gave back for an accepted create: enough to poll it forever after."""

    provider: str
    task_id: str
    client_id: str | None = None


TaskPhase = Literal["running", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """One poll answer, normalised. Unknown provider states are ``running``."""

    task_id: str
    phase: TaskPhase
    result_url: str | None = None
    reason: str | None = None
    """The provider's own failure reason (e.g. its moderation message), redacted."""
    provider_state: str = ""
    duration: float | None = None
    progress: float | None = None
    ran_seconds: float | None = None
    """How long the provider says the task ran, creation to end, where it says so: what the
    poller learns the batch's task durations from (kept inside what its own polls saw)."""

    @property
    def is_terminal(self) -> bool:
        return self.phase != "running"


# --------------------------------------------------------------------------- job states


class State(StrEnum):
    """The closed set of job states shown to users."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"


#: Allowed transitions; the state store refuses any other.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.SUBMITTING, State.FAILED, State.DONE}),
    State.SUBMITTING: frozenset(
        {State.RUNNING, State.FAILED, State.NEEDS_ATTENTION, State.PENDING}
    ),
    State.RUNNING: frozenset(
        {State.DOWNLOADING, State.FAILED, State.RUNNING, State.NEEDS_ATTENTION}
    ),
    State.DOWNLOADING: frozenset(
        {State.DONE, State.FAILED, State.RUNNING, State.DOWNLOADING, State.NEEDS_ATTENTION}
    ),
    State.DONE: frozenset({State.PENDING, State.RUNNING, State.NEEDS_ATTENTION}),
    State.FAILED: frozenset({State.PENDING, State.RUNNING, State.SUBMITTING}),
    State.NEEDS_ATTENTION: frozenset({State.RUNNING, State.PENDING, State.FAILED}),
}


class FailKind(StrEnum):
    """Why a job is ``failed``, as data: it decides what ``run --retry-failed`` does with it."""

    TASK = "task"
    """The provider ran the task and it failed (moderation...): a retry pays again."""
    REFUSED = "refused"
    """The provider refused the create: nothing was paid."""
    INPUT = "input"
    """An input could not be used or prepared: nothing was paid."""
    TIMEOUT = "timeout"
    """The task ran past task_timeout: it may still finish; asked again before paying again."""
    UNREADABLE = "unreadable"
    """The provider's answers about the task could not be read: asked again before paying."""
    RESULT = "result"
    """The result was served but unusable, or could not be fetched again."""
    ABANDONED = "abandoned"
    """Given up by the user (``resolve --abandon``)."""


#: Failed jobs whose task may still be alive: ``--retry-failed`` polls them before paying again.
RECHECK = frozenset({FailKind.TIMEOUT, FailKind.UNREADABLE})
