"""``resolve``: the user settles a job that needs attention (adopt, resubmit, abandon).

Every choice is taken under the run lock and recorded in the job's history; only ``--adopt``
talks to the provider, to make sure the task id exists before it is trusted.
"""

from __future__ import annotations

import asyncio

from pipeline.errors import (
    BadReplyError,
    BatchStopped,
    ConfigError,
    RefusedError,
    StateError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, State
from pipeline.manifest.model import Manifest
from pipeline.media.tools import find_tools
from pipeline.providers.base import ProviderConfig
from pipeline.run.session import credentials_for, endpoint, provider_client
from pipeline.settings import Settings
from pipeline.state.database import state_path
from pipeline.state.lock import RunLock
from pipeline.state.rows import DuplicateTaskError
from pipeline.state.store import StateStore


def resolve_job(
    manifest: Manifest,
    job_id: str,
    *,
    adopt: str | None,
    resubmit: bool,
    abandon: bool,
    settings: Settings | None = None,
) -> str:
    """Settle a job that needs attention; returns what was done, for the user.

    ``--adopt`` first asks the provider about the task id (a typo must not be adopted: the run
    would poll a task that does not exist, and ``--retry-failed`` would then pay again).
    ``--abandon`` also gives up a job stuck collecting (running, downloading): its task is paid
    and is given up knowingly. ``--resubmit`` pays again, so it only takes settled jobs.
    """
    if adopt is not None:
        adopt = adopt.strip()
        if not adopt:
            raise ConfigError("--adopt needs the provider's task id (it was empty)")
    output_dir = manifest.output_dir
    if not state_path(output_dir).exists():
        raise ConfigError(f"nothing has run for {manifest.path} yet: there is no job to resolve")
    with RunLock.acquire(output_dir), StateStore.open(output_dir) as store:
        try:
            row = store.get(job_id)
        except StateError:
            raise ConfigError(f"job {job_id!r} is not in the state of {output_dir}") from None
        allowed = _ADOPTABLE if adopt is not None else _RESUBMITTABLE if resubmit else _ABANDONABLE
        if row.state not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise ConfigError(f"job {job_id} is {row.state.value}: this resolve takes {names} jobs")
        if adopt is not None:
            _ask_about(manifest, adopt, settings or Settings.from_env())
            try:
                store.transition(
                    job_id, State.RUNNING, task_id=adopt, error=None,
                    detail={"op": "resolve", "adopt": adopt},
                )  # fmt: skip
            except DuplicateTaskError as exc:
                raise ConfigError(f"cannot adopt task {adopt}: {exc}") from None
            return f"job {job_id}: adopted task {adopt}; the next run polls and downloads it"
        if resubmit:
            store.transition(
                job_id, State.PENDING, error=None, detail={"op": "resolve", "resubmit": True}
            )
            return f"job {job_id}: back to pending; the next run submits it again (and pays again)"
        store.transition(
            job_id,
            State.FAILED,
            error="abandoned by the user",
            fail_kind=FailKind.ABANDONED.value,
            detail={"op": "resolve", "abandon": True},
        )
        paid = f" (task {row.task_id} is given up)" if row.task_id else ""
        return f"job {job_id}: abandoned (failed){paid}"


_ADOPTABLE = frozenset({State.NEEDS_ATTENTION, State.FAILED})
_RESUBMITTABLE = frozenset({State.NEEDS_ATTENTION, State.FAILED})
_ABANDONABLE = frozenset(
    {State.NEEDS_ATTENTION, State.FAILED, State.SUBMITTING, State.RUNNING, State.DOWNLOADING}
)


def _ask_about(manifest: Manifest, task_id: str, settings: Settings) -> None:
    """Refuse a task id the provider does not know (exit 2), or cannot be asked about (exit 3)."""
    credentials = credentials_for(manifest.provider, settings)
    tools = find_tools(settings)

    async def ask(config: ProviderConfig) -> None:
        async with provider_client(config, credentials) as provider:
            await provider.poll(Handle(config.name, task_id))

    with endpoint(manifest, tools) as config:
        try:
            asyncio.run(ask(config))
        except (RefusedError, BadReplyError) as exc:
            raise ConfigError(
                f"{config.name} does not know task {task_id!r} ({exc}); nothing was changed"
            ) from None
        except TransientError as exc:
            raise BatchStopped(
                f"cannot ask {config.name} about task {task_id!r} ({exc}); nothing was changed, "
                "try again later"
            ) from None
