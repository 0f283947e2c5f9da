"""The state store: one SQLite file per output directory that survives any crash.

``<output_dir>/state.sqlite`` holds one row per job (``jobs``), the append-only history of every
change (``events``, written in the same transaction as the change) and the upload cache
(``uploads``). It runs in WAL mode with ``synchronous=FULL``: a committed transaction is on disk
when the commit returns, a killed writer leaves the file consistent, and readers (``status``)
never wait for a running batch.

Transitions are checked against :data:`pipeline.jobs.TRANSITIONS`. Every write is one
transaction, except inside :meth:`StateStore.batch`, where many writes share one commit (one
fsync) — how the runner commits the intents of many jobs at once. A write that records a
``task_id`` commits before it returns, even inside a batch: a task id is paid for.

The schema and its migrations live in :mod:`pipeline.state.schema`; a file written by a newer
version is refused rather than misread. The values the store takes and returns (JobRecord,
JobRow, Event, ...) live in :mod:`pipeline.state.rows`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.errors import StateError
from pipeline.jobs import TRANSITIONS, State
from pipeline.state import overview, sql
from pipeline.state.database import Database
from pipeline.state.overview import Overview
from pipeline.state.rowcache import RowCache
from pipeline.state.rows import (
    SELECT_JOBS,
    STATE_BY_VALUE,
    BriefRow,
    Event,
    JobRecord,
    JobRow,
    JobSummary,
    KeyChange,
    OutputRow,
    RestoredJob,
    StaleStateError,
    SyncResult,
    job_row,
)
from pipeline.state.uploads import UploadTable


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- store

#: ``+state``: SQLite's planner, without statistics, picked the state index for this query and
#: walked every done job on each submit (quadratic over a batch); the unary plus keeps the
#: state term out of index choice, so the key index finds the one or two rows of a key.
SELECT_DONE_BY_KEY = SELECT_JOBS + " WHERE key=? AND +state=? ORDER BY id LIMIT 1"


class StateStore:
    """The SQLite state of one output directory. Open with :meth:`open`; usable as a context.

    One connection, guarded by a lock so worker threads (``asyncio.to_thread``) may share it.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _now) -> None:
        self.db = db
        self.path = db.path
        self.readonly = db.readonly
        self._clock = clock
        self.uploads = UploadTable(db)
        self._cache = RowCache()

    @classmethod
    def open(
        cls,
        output_dir: Path,
        *,
        readonly: bool = False,
        busy_timeout: float = 10.0,
        clock: Callable[[], datetime] = _now,
    ) -> StateStore:
        """Open (and for writers create and migrate) ``<output_dir>/state.sqlite``.

        ``readonly`` opens with ``mode=ro`` and a short busy timeout: for ``status`` while a
        batch runs. It never creates or migrates anything.
        """
        return cls(Database.open(output_dir, readonly=readonly, busy_timeout=busy_timeout),
                   clock=clock)  # fmt: skip

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # The connection's own facts and transactions, for callers that hold only the store.

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes, one commit (see :meth:`Database.batch`)."""
        with self._cache.transaction(self.db), self.db.batch():
            yield

    def cache_rows(self, on: bool) -> None:
        """Serve committed rows from memory (:mod:`.rowcache`): only while this store is the
        file's one writer (a run holds the output directory's lock)."""
        with self.db.locked():
            self._cache.clear()
            self._cache.enabled = on

    def pragma(self, name: str) -> object:
        return self.db.pragma(name)

    def integrity_check(self) -> str:
        return self.db.integrity_check()

    @property
    def schema_version(self) -> int:
        return self.db.schema_version

    def meta(self, key: str) -> str | None:
        return self.db.meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self.db.set_meta(key, value)

    # ----------------------------------------------------------------------- jobs

    def sync_jobs(self, records: Iterable[JobRecord]) -> SyncResult:
        """Register the manifest's jobs: new ids become ``pending``; existing rows are untouched.

        Returns the ids whose key changed, so the runner can refuse to overwrite a paid result.
        """
        now = _stamp(self._clock())
        new: list[tuple[Any, ...]] = []
        changed: list[KeyChange] = []
        seen: set[str] = set()
        with self.db.write() as conn:
            known = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute("SELECT id, key, state, task_id FROM jobs")
            }
            for rec in records:
                if rec.id in seen:
                    raise StateError(f"job {rec.id}: listed twice")
                seen.add(rec.id)
                old = known.get(rec.id)
                if old is None:
                    new.append(
                        (rec.id, rec.key, State.PENDING.value, sql.dumps(rec.spec), now, now)
                    )
                elif old[0] != rec.key:
                    changed.append(KeyChange(rec.id, old[0], rec.key, State(old[1]), old[2]))
            conn.executemany(
                "INSERT INTO jobs (id, key, state, spec, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                new,
            )
            conn.executemany(
                "INSERT INTO events (job_id, at, from_state, to_state, detail) "
                "VALUES (?, ?, NULL, ?, ?)",
                ((r[0], now, State.PENDING.value, '{"op":"create"}') for r in new),
            )
        return SyncResult(inserted=len(new), changed=tuple(changed))

    def retire_job(self, job_id: str, *, reason: str) -> str:
        """Copy a job's row aside as ``<id>~<n>`` with its task, so the task is still collected
        after the job itself is replaced; returns the new id. The original row is left as is."""
        with self.db.write() as conn:
            n = 1
            while conn.execute("SELECT 1 FROM jobs WHERE id=?", (f"{job_id}~{n}",)).fetchone():
                n += 1
            new_id = f"{job_id}~{n}"
            columns = ", ".join(sql.COPIED)
            conn.execute(
                f"INSERT INTO jobs (id, {columns}) SELECT ?, {columns} FROM jobs WHERE id=?",  # noqa: S608 - fixed column list
                (new_id, job_id),
            )
            old = sql.get(conn, new_id, self.path)
            now = _stamp(self._clock())
            sql.event(conn, new_id, now, None, old.state, {"op": "retire", "from": job_id,
                                                             "reason": reason})  # fmt: skip
        return new_id

    def restore_jobs(self, jobs: Iterable[RestoredJob]) -> int:
        """Insert jobs rebuilt from the outputs of a lost state (into an empty store)."""
        now = _stamp(self._clock())
        count = 0
        with self.db.write() as conn:
            for job in jobs:
                conn.execute(
                    "INSERT INTO jobs (id, key, state, spec, task_id, output, output_sha256, "
                    "duration, billed_seconds, result, submitted_at, finished_at, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.key, job.state.value, sql.dumps(job.spec), job.task_id, job.output,
                     job.output_sha256, job.duration, job.billed_seconds, job.result,
                     job.submitted_at, job.finished_at, now, now),
                )  # fmt: skip
                sql.event(conn, job.id, now, None, job.state, {"op": "restore"})
                count += 1
        return count

    def replace_job(self, record: JobRecord, *, reason: str = "replaced") -> JobRow:
        """Reset a job to ``pending`` under a new key and spec (the user's explicit replace).

        The old key, task id and output are kept in the event, so nothing paid for is forgotten.
        """
        with self._cache.transaction(self.db), self.db.write() as conn:
            old = sql.get(conn, record.id, self.path)
            now = _stamp(self._clock())
            conn.execute(
                "UPDATE jobs SET key=?, spec=?, state=?, client_id=NULL, attempt=0, task_id=NULL, "
                "result_url=NULL, output=NULL, output_sha256=NULL, billed_seconds=NULL, "
                "result=NULL, fail_kind=NULL, inputs=NULL, "
                "duration=NULL, error=NULL, submitted_at=NULL, finished_at=NULL, updated_at=? "
                "WHERE id=?",
                (record.key, sql.dumps(record.spec), State.PENDING.value, now, record.id),
            )
            detail = {
                "op": "replace",
                "reason": reason,
                "old": {"key": old.key, "task_id": old.task_id, "output": old.output},
                "key": record.key,
            }
            sql.event(conn, record.id, now, old.state, State.PENDING, detail)
            row = sql.get(conn, record.id, self.path)
            self._cache.stage(row)
        return row

    def get(self, job_id: str) -> JobRow:
        row = self._cache.get(job_id)
        if row is not None:
            return row
        with self.db.locked():
            row = sql.get(self.db.conn, job_id, self.path)
            if not self.db.in_batch:  # inside one, the row may not be committed yet
                self._cache.offer(row)
        return row

    def rows(self, states: Iterable[State] | None = None) -> Iterator[JobRow]:
        """Jobs in id order, optionally only those in ``states`` (served by the state index)."""
        sql = SELECT_JOBS
        args = [] if states is None else [State(s).value for s in states]
        if states is not None:
            sql += f" WHERE state IN ({', '.join('?' * len(args))})"
        with self.db.locked():
            found = self.db.conn.execute(sql + " ORDER BY id", args).fetchall()
        return map(job_row, found)

    def summaries(self, states: Iterable[State] | None = None) -> list[JobSummary]:
        """What ``status`` lists per job, without decoding specs: cheap for 100,000 rows."""
        sql = "SELECT id, state, task_id, error, output, fail_kind FROM jobs"
        args = [] if states is None else [State(s).value for s in states]
        if states is not None:
            sql += f" WHERE state IN ({', '.join('?' * len(args))})"
        with self.db.locked():
            found = self.db.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [JobSummary(r[0], STATE_BY_VALUE[r[1]], r[2], r[3], r[4], r[5]) for r in found]

    def status_rows(self, *, modes: bool = False) -> tuple[Overview, list[OutputRow]]:
        """What ``status`` shows (:mod:`.overview`; ``modes``: each paid job's mode, for a
        budget's prices) and the done jobs' results, from one snapshot of the file."""
        with self.db.locked(), overview.snapshot(self.db.conn):
            return overview.read(self.db.conn, modes=modes), self.outputs()

    def brief(self) -> list[BriefRow]:
        """Every job's key, state, task, why it failed, seconds and mode, in id order."""
        with self.db.locked():
            found = self.db.conn.execute(
                "SELECT id, key, state, task_id, fail_kind, billed_seconds, "
                "json_extract(spec, '$.settings.mode') FROM jobs ORDER BY id"
            ).fetchall()
        return [BriefRow(r[0], r[1], STATE_BY_VALUE[r[2]], *r[3:]) for r in found]

    def outputs(self) -> list[OutputRow]:
        """Every done job's result columns (no specs decoded: cheap for 100,000 rows)."""
        with self.db.locked():
            found = self.db.conn.execute(
                "SELECT id, task_id, output, output_sha256, result FROM jobs WHERE state=? "
                "ORDER BY id",
                (State.DONE.value,),
            ).fetchall()
        return [OutputRow(*r) for r in found]

    def counts(self) -> dict[State, int]:
        """Jobs per state; every state is present (zero when none)."""
        out = dict.fromkeys(State, 0)
        with self.db.locked():
            for state, n in self.db.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                out[State(state)] = n
        return out

    def find_done_by_key(self, key: str) -> JobRow | None:
        """A finished job with this key (an earlier id of the same generation), if any."""
        with self.db.locked():
            r = self.db.conn.execute(SELECT_DONE_BY_KEY, (key, State.DONE.value)).fetchone()
        return None if r is None else job_row(r)

    def transition(
        self,
        job_id: str,
        to: State,
        *,
        expect: State | Iterable[State] | None = None,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> JobRow:
        """Move a job to ``to`` and set ``fields``, with its event, in one transaction.

        Refuses a move :data:`~pipeline.jobs.TRANSITIONS` forbids (:class:`StateError`) and, when
        ``expect`` is given, a job not in (one of) ``expect`` (:class:`StaleStateError`).
        """
        to = State(to)
        sql.check_fields(fields)
        with self._cache.transaction(self.db), self.db.write() as conn:
            old = sql.get(conn, job_id, self.path)
            if expect is not None:
                allowed = {State(expect)} if isinstance(expect, str) else set(map(State, expect))
                if old.state not in allowed:
                    names = "/".join(sorted(allowed))
                    raise StaleStateError(
                        f"job {job_id}: expected {names}, found {old.state}", actual=old.state
                    )
            if to not in TRANSITIONS[old.state]:
                raise StateError(f"job {job_id}: illegal transition {old.state} -> {to}")
            now = _stamp(self._clock())
            if to is State.SUBMITTING:
                fields.setdefault("submitted_at", now)
            if to in (State.DONE, State.FAILED):
                fields.setdefault("finished_at", now)
            if old.state is State.FAILED and to is not State.FAILED:
                fields.setdefault("fail_kind", None)  # the failure is over
            sql.update(conn, job_id, now, to, fields)
            sql.event(
                conn,
                job_id,
                now,
                old.state,
                to,
                {"op": "transition", **sql.changes(fields), **(detail or {})},
            )
            row = sql.get(conn, job_id, self.path)
            self._cache.stage(row)
        if "task_id" in fields:
            self.db.flush()
        return row

    def set_fields(
        self, job_id: str, *, detail: Mapping[str, Any] | None = None, **fields: Any
    ) -> JobRow:
        """Update columns without a state change (e.g. a refreshed result URL), with an event."""
        sql.check_fields(fields)
        if not fields:
            return self.get(job_id)
        with self._cache.transaction(self.db), self.db.write() as conn:
            old = sql.get(conn, job_id, self.path)
            now = _stamp(self._clock())
            sql.update(conn, job_id, now, None, fields)
            sql.event(
                conn,
                job_id,
                now,
                old.state,
                old.state,
                {"op": "set", **sql.changes(fields), **(detail or {})},
            )
            row = sql.get(conn, job_id, self.path)
            self._cache.stage(row)
        if "task_id" in fields:
            self.db.flush()
        return row

    def events(self, job_id: str) -> list[Event]:
        """The job's history, oldest first."""
        with self.db.locked():
            return sql.events(self.db.conn, job_id)
