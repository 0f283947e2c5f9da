"""The Provider protocol every provider client implements, and the values it exchanges.

A provider module holds pure request builders and response parsers (tested with documented
payloads as plain dicts) plus one class that wires them to an injected ``httpx.AsyncClient``.
Every outcome of a call is either a value or one of the classified errors of
:mod:`pipeline.errors`:

- ``submit`` returns a :class:`~pipeline.jobs.Handle` (accepted), or raises
  :class:`~pipeline.errors.RefusedError` (job fails, never retried),
  :class:`~pipeline.errors.TransientError` (the create certainly did not happen: retry later),
  :class:`~pipeline.errors.AmbiguousError` (it may have happened: reconcile or ask a human),
  :class:`~pipeline.errors.BatchFatalError` (bad key, no credits: stop submitting).
- ``poll`` returns a :class:`~pipeline.jobs.TaskStatus`; transport trouble while polling is a
  :class:`~pipeline.errors.TransientError`, never a failed job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from pipeline.jobs import Handle, Job, TaskStatus
from pipeline.settings import DEFAULTS


@dataclass(frozen=True)
class RateLimit:
    requests: int = DEFAULTS.rate_requests
    per_seconds: float = DEFAULTS.rate_per_seconds


@dataclass(frozen=True)
class ProviderConfig:
    """The manifest's ``provider`` block with the provider's defaults filled in."""

    name: str
    model: str
    base_url: str
    upload_url: str | None = None
    key_envs: Mapping[str, str] = field(default_factory=dict)
    """Credential role -> environment variable, e.g. ``{"api_key": "KIE_API_KEY"}``."""
    concurrency: int = DEFAULTS.concurrency
    rate_limit: RateLimit = field(default_factory=RateLimit)
    poll_interval: float = DEFAULTS.poll_interval
    task_timeout: float = DEFAULTS.task_timeout
    options: Mapping[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    """Put into every create (in the provider's ``callback_field``) when the manifest has a
    ``callback`` block; never part of a job's identity."""


@dataclass(frozen=True)
class Credentials:
    """Secret values by role (``api_key``, ``access_key``, ``secret_key``). Never printed."""

    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, role: str) -> str:
        return self.values.get(role, "")

    def secrets(self) -> list[str]:
        return [v for v in self.values.values() if v]

    def __repr__(self) -> str:
        return f"Credentials(roles={sorted(self.values)})"

    __str__ = __repr__


@dataclass(frozen=True)
class InputURLs:
    """The URLs a create request carries for one job, and when each stops working.

    ``*_expires_at`` is Unix time, None for a URL that does not expire (an http(s) input sent as
    it is). :meth:`pipeline.storage.uploads.Storage.ensure_fresh` renews what is about to.
    """

    image_url: str
    video_url: str
    image_expires_at: float | None = None
    video_expires_at: float | None = None

    @property
    def expires_at(self) -> float | None:
        """The earlier expiry of the two, None when neither expires."""
        times = [t for t in (self.image_expires_at, self.video_expires_at) if t is not None]
        return min(times) if times else None


@runtime_checkable
class Provider(Protocol):
    """One provider protocol. Capabilities are class attributes the runner reads."""

    name: ClassVar[str]
    default_model: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    default_base_url: ClassVar[str]
    default_upload_url: ClassVar[str | None]
    key_envs: ClassVar[Mapping[str, str]]
    """Credential role -> default environment variable; empty when no key is needed."""
    has_upload: ClassVar[bool]
    """Local files can be uploaded to get a URL (otherwise inputs must be http(s) URLs)."""
    has_client_id: ClassVar[bool]
    """Creates carry our own id, so an ambiguous create can be reconciled by looking it up."""
    has_batch_poll: ClassVar[bool]
    """``poll_many`` answers many tasks in one request."""
    has_sound_field: ClassVar[bool]
    """The API has ``keep_original_sound``; without it audio is stripped locally when false."""
    upload_ttl: ClassVar[float]
    """Seconds an uploaded input stays available (re-upload after that)."""
    callback_field: ClassVar[str | None]
    """The create-body field of a URL the provider POSTs to when a task ends; None: none."""

    def __init__(
        self, config: ProviderConfig, credentials: Credentials, client: httpx.AsyncClient
    ) -> None: ...

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        """Upload a local file, return the URL to put in a create request."""
        ...

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle: ...

    async def poll(self, handle: Handle) -> TaskStatus: ...

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        """Poll several tasks; keyed by task id. Missing ids mean "ask again later"."""
        ...

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        """Find the task an ambiguous create made, by client id; None if it never happened."""
        ...

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """A fresh download URL for a finished task whose URL expired (None: cannot)."""
        ...
