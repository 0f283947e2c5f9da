"""A recording fake provider for stage tests, registered through the real provider registry.

It answers from a script and records every call it was asked, together with what the state
said about the job at that moment (so a test can see that the intent was committed before the
create went out). No HTTP: the stages' decisions are what is tested; HTTP behaviour has its own
tests against real loopback servers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from pipeline.jobs import Handle, Job, TaskStatus
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig

Step = TaskStatus | BaseException | str
"""A scripted answer: a status, an error to raise, or a phase name ("running", "succeeded")."""


@dataclass
class Script:
    """What the fake answers; every list is consumed in order, its last entry repeats."""

    creates: list[Handle | BaseException] = field(default_factory=list)
    polls: dict[str, list[Step]] = field(default_factory=dict)
    lookups: list[Handle | BaseException | None] = field(default_factory=list)
    refreshes: list[str | BaseException | None] = field(default_factory=list)
    uploads: list[str | BaseException] = field(default_factory=list)


def _next(items: list[Any]) -> Any:
    return items.pop(0) if len(items) > 1 else items[0]


class FakeProvider:
    name: ClassVar[str] = "fake"
    default_model: ClassVar[str] = "fake-model"
    models: ClassVar[tuple[str, ...]] = ("fake-model",)
    default_base_url: ClassVar[str] = "http://fake.invalid"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 24 * 3600.0

    script: ClassVar[Script] = Script()
    asked: ClassVar[list[tuple[str, ...]]] = []
    """Every call, in order: ("submit", job_id, client_id, state at that moment), ("poll", id)..."""
    state_of: ClassVar[Callable[[str], str] | None] = None
    result_base: ClassVar[str] = "http://results.invalid"

    def __init__(
        self, config: ProviderConfig, credentials: Credentials, client: httpx.AsyncClient
    ) -> None:
        self.config = config

    @classmethod
    def reset(cls, script: Script, *, client_id: bool = False) -> None:
        cls.script = script
        cls.asked = []
        cls.has_client_id = client_id
        cls.state_of = None
        cls.result_base = "http://results.invalid"

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        self.asked.append(("upload", path.name, content_type))
        answer = _next(self.script.uploads or [f"http://files.invalid/{file_name}"])
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        state_of = type(self).state_of  # a plain function: looked up on the class, not bound
        seen = state_of(job.id) if state_of else ""
        self.asked.append(("submit", job.id, client_id or "", seen))
        answer = _next(self.script.creates or [Handle(self.name, f"task-{job.id}", client_id)])
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    async def poll(self, handle: Handle) -> TaskStatus:
        self.asked.append(("poll", handle.task_id))
        steps = self.script.polls.setdefault(handle.task_id, ["succeeded"])
        step = _next(steps)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, TaskStatus):
            return step
        url = f"{self.result_base}/{handle.task_id}.mp4" if step == "succeeded" else None
        reason = "the fake failed it" if step == "failed" else None
        return TaskStatus(handle.task_id, step, result_url=url, reason=reason)  # type: ignore[arg-type]

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        return {h.task_id: await self.poll(h) for h in handles}

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        self.asked.append(("lookup", job.id, client_id))
        answer = _next(self.script.lookups or [None])
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        self.asked.append(("refresh", handle.task_id))
        answer = _next(self.script.refreshes or [None])
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    @classmethod
    def calls(cls, kind: str) -> list[tuple[str, ...]]:
        return [c for c in cls.asked if c[0] == kind]
