"""What ``status`` reads of the state: jobs per state, the columns it shows of each job and what
the money needs, from one snapshot of the file (:func:`snapshot`; the store reads the done jobs'
results in the same one).

A run may be writing meanwhile (WAL: it never waits for us); one read transaction keeps the
counts, the job lines, the money and the results in agreement. 100,000 jobs are read as plain
tuples of the columns shown (no row objects), and a spec is opened (``json_extract``) only for a
job past ``pending``, and only when a budget prices the modes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.jobs import State
from pipeline.state.rows import STATE_BY_VALUE

JobLine = tuple[str, str, str | None, str | None, str | None]
"""``(id, state value, task_id, error, output)``."""

MoneyColumns = tuple[State, str | None, float | None, str | None]
"""``(state, task_id, billed_seconds, mode)``: what :func:`pipeline.plan.money.paid_columns`
takes."""


_PAST_PENDING = tuple(s.value for s in State if s is not State.PENDING)


@dataclass(frozen=True)
class Overview:
    counts: dict[State, int]
    """Every state, zero when no job is in it."""
    lines: list[JobLine]
    """Every job, in id order."""
    money: list[MoneyColumns]
    """Every job past ``pending`` (only those may have been paid), in id order: the seconds
    are summed in the same order as before, to the same last bit. ``mode`` is None unless
    asked for."""


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around the reads inside (``conn`` in autocommit mode; a transaction
    already open is used as it is)."""
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")  # deferred: the snapshot is taken by the first SELECT inside
    try:
        yield
    finally:
        if began and conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written: only the snapshot is let go


def read(conn: sqlite3.Connection, *, modes: bool) -> Overview:
    """Counts, job lines and money columns (inside :func:`snapshot`, to agree with each other)."""
    counts = dict.fromkeys(State, 0)
    for value, n in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
        counts[STATE_BY_VALUE[value]] = n
    lines = conn.execute(
        "SELECT id, state, task_id, error, output FROM jobs ORDER BY id"
    ).fetchall()
    mode = "json_extract(spec, '$.settings.mode')" if modes else "NULL"
    money = [
        (STATE_BY_VALUE[r[0]], r[1], r[2], r[3])
        for r in conn.execute(
            # IN, not <>: the state index finds the few paid jobs of a 100,000-job batch that
            # has barely started, instead of a scan of every row.
            f"SELECT state, task_id, billed_seconds, {mode} FROM jobs "  # noqa: S608 - fixed text
            f"WHERE state IN ({', '.join('?' * len(_PAST_PENDING))}) ORDER BY id",
            _PAST_PENDING,
        )
    ]
    return Overview(counts, lines, money)
