"""The statements behind :class:`~pipeline.state.store.StateStore`: each takes the open
connection inside the caller's transaction, so the store reads as what happens and these as how.

Column names in an ``UPDATE`` come from :data:`FIELDS`, never from user text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import StateError
from pipeline.jobs import State
from pipeline.state.rows import SELECT_JOBS, DuplicateTaskError, Event, JobRow, job_row

#: Columns a caller may set through ``StateStore.transition`` / ``StateStore.set_fields``.
FIELDS = frozenset(
    {
        "client_id",
        "attempt",
        "task_id",
        "result_url",
        "output",
        "output_sha256",
        "billed_seconds",
        "duration",
        "error",
        "submitted_at",
        "finished_at",
        "result",
        "fail_kind",
        "inputs",
    }
)


#: The columns ``StateStore.retire_job`` copies to the retired row (everything but the id).
COPIED = (
    "key", "state", "spec", "client_id", "attempt", "task_id", "result_url", "output",
    "output_sha256", "billed_seconds", "duration", "error", "created_at", "updated_at",
    "submitted_at", "finished_at", "result", "fail_kind", "inputs",
)  # fmt: skip

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
dumps = _ENCODER.encode


def get(conn: sqlite3.Connection, job_id: str, where: Path) -> JobRow:
    r = conn.execute(SELECT_JOBS + " WHERE id=?", (job_id,)).fetchone()
    if r is None:
        raise StateError(f"job {job_id}: not in state {where}")
    return job_row(r)


def update(
    conn: sqlite3.Connection,
    job_id: str,
    now: str,
    to: State | None,
    fields: Mapping[str, Any],
) -> None:
    values = dict(fields)
    task_id = values.get("task_id")
    if task_id is not None:
        check_task_unique(conn, job_id, str(task_id))
    if to is not None:
        values["state"] = to.value
    values["updated_at"] = now
    # Column names come from the FIELDS whitelist (checked above), never from user text.
    assignments = ", ".join(f"{name}=?" for name in values)
    conn.execute(
        f"UPDATE jobs SET {assignments} WHERE id=?",  # noqa: S608 - whitelisted column names
        (*values.values(), job_id),
    )


def check_task_unique(conn: sqlite3.Connection, job_id: str, task_id: str) -> None:
    """Refuse a task id another generation holds (same-key twins share theirs on purpose)."""
    r = conn.execute(
        "SELECT other.id FROM jobs AS other, jobs AS me WHERE me.id=? AND other.task_id=? "
        "AND other.id<>me.id AND other.key<>me.key LIMIT 1",
        (job_id, task_id),
    ).fetchone()
    if r is not None:
        raise DuplicateTaskError(
            f"job {job_id}: task id {task_id} already belongs to job {r[0]}, another generation",
            holder=str(r[0]),
        )


def event(
    conn: sqlite3.Connection,
    job_id: str,
    at: str,
    from_state: State | None,
    to_state: State,
    detail: Mapping[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)",
        (
            job_id,
            at,
            None if from_state is None else from_state.value,
            to_state.value,
            dumps(detail),
        ),
    )


def check_fields(fields: Mapping[str, Any]) -> None:
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise StateError(f"unknown job field(s): {', '.join(unknown)}")


def changes(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"set": dict(fields)} if fields else {}


def events(conn: sqlite3.Connection, job_id: str) -> list[Event]:
    found = conn.execute(
        "SELECT id, job_id, at, from_state, to_state, detail FROM events WHERE job_id=? "
        "ORDER BY id",
        (job_id,),
    ).fetchall()
    return [
        Event(
            r[0], r[1], r[2], None if r[3] is None else State(r[3]), State(r[4]), json.loads(r[5])
        )
        for r in found
    ]
