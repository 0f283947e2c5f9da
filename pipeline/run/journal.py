"""The journal of a run: every move of a job is one group-committed transition, one progress
event and one log line, in that order, with the error text redacted once here.

It also remembers which generation (job key) has a job that needs attention: that job's create
may have made (and billed) the very generation its twins would pay for again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.jobs import FailKind, State
from pipeline.progress.events import JobChanged, Level, Notice, Reporter
from pipeline.settings import redact
from pipeline.state.commits import GroupCommitter
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore


class Journal:
    def __init__(
        self,
        store: StateStore,
        commits: GroupCommitter,
        reporter: Reporter,
        log: logging.Logger,
        secrets: Sequence[str],
    ) -> None:
        self.store = store
        self.commits = commits
        self.reporter = reporter
        self.log = log
        self.secrets = tuple(secrets)
        self.unsettled: dict[str, str] = {
            row.key: row.id for row in store.rows([State.NEEDS_ATTENTION])
        }
        """Job key -> a job of that key that needs attention: its twins wait, never pay again."""

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    async def move(self, job_id: str, to: State, **fields: Any) -> JobRow:
        """Commit a transition (fields included), then tell the reporter and the log."""
        if fields.get("error"):
            fields["error"] = self.redact(str(fields["error"]))
        previous = self.store.get(job_id).state
        row = await self.commits.transition(job_id, to, **fields)
        if to is State.NEEDS_ATTENTION:
            self.unsettled.setdefault(row.key, job_id)
        detail = fields.get("error") or fields.get("task_id") or ""
        billed = row.billed_seconds if to is State.DONE else None
        self.reporter.emit(JobChanged(job_id, to, str(detail), billed, previous=previous))
        self.log.info("job %s: %s%s", job_id, to.value, f" ({detail})" if detail else "")
        return row

    async def fail(self, job_id: str, kind: FailKind, error: str, **fields: Any) -> JobRow:
        """Move a job to ``failed``, saying why as data (``kind``) and for the user (``error``)."""
        return await self.move(job_id, State.FAILED, fail_kind=kind.value, error=error, **fields)

    async def set_fields(self, job_id: str, **fields: Any) -> JobRow:
        return await self.commits.set_fields(job_id, **fields)

    def notice(self, text: str, level: Level = "warning") -> None:
        """Something the user should read now and find in run.log later."""
        text = self.redact(text)
        self.reporter.emit(Notice(text, level))
        self.log.log(_LOG_LEVELS[level], "%s", text)


_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
