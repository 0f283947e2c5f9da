"""The state file's schema: its tables, the migrations that build them, and the version check.

The schema evolves by appending a function to :data:`MIGRATIONS` (never editing one): a file
records how many have run (``meta.schema_version``), :func:`check_and_migrate` applies the rest
under a write lock, and a file written by a newer version is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import StateError
from pipeline.jobs import State

_APPLICATION_ID = 0x4D504C31  # "MPL1": marks the file as ours for `file` and for open()


def _v1(conn: sqlite3.Connection) -> None:
    states = ", ".join(f"'{s.value}'" for s in State)
    conn.execute(f"""
        CREATE TABLE jobs (
            id             TEXT PRIMARY KEY,
            key            TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ({states})),
            spec           TEXT NOT NULL,
            client_id      TEXT,
            attempt        INTEGER NOT NULL DEFAULT 0,
            task_id        TEXT,
            result_url     TEXT,
            output         TEXT,
            output_sha256  TEXT,
            billed_seconds REAL,
            duration       REAL,
            error          TEXT,
            created_at     TEXT NOT NULL,
            updated_at     TEXT NOT NULL,
            submitted_at   TEXT,
            finished_at    TEXT,
            result         TEXT
        )""")
    conn.execute("CREATE INDEX jobs_key ON jobs(key)")
    conn.execute("CREATE INDEX jobs_state ON jobs(state)")
    conn.execute("""
        CREATE TABLE events (
            id         INTEGER PRIMARY KEY,
            job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            at         TEXT NOT NULL,
            from_state TEXT,
            to_state   TEXT NOT NULL,
            detail     TEXT NOT NULL DEFAULT '{}'
        )""")
    conn.execute("CREATE INDEX events_job ON events(job_id, id)")
    conn.execute("""
        CREATE TABLE uploads (
            provider    TEXT NOT NULL,
            endpoint    TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            url         TEXT NOT NULL,
            uploaded_at REAL NOT NULL,
            PRIMARY KEY (provider, endpoint, sha256)
        ) WITHOUT ROWID""")


def _v2(conn: sqlite3.Connection) -> None:
    # fail_kind: why a job failed, as data (the runner used to match error text to decide
    # whether a failed task may be asked about again). inputs: what was really sent (JSON).
    conn.execute("ALTER TABLE jobs ADD COLUMN fail_kind TEXT")
    conn.execute("ALTER TABLE jobs ADD COLUMN inputs TEXT")
    conn.execute(
        "UPDATE jobs SET fail_kind='timeout' "
        "WHERE state='failed' AND error LIKE '%task ran past task_timeout%'"
    )
    # Who else holds a task id: one id answered for two jobs must not give both the same video.
    conn.execute("CREATE INDEX jobs_task ON jobs(task_id) WHERE task_id IS NOT NULL")


def _v3(conn: sqlite3.Connection) -> None:
    # expires_at: when an uploaded input's URL stops working (Unix time), recorded at upload:
    # Kie deletes its uploads after upload_ttl; NULL for an object in the user's own bucket
    # (it stays; only the presigned URLs made from it expire) and for rows written before v3.
    conn.execute("ALTER TABLE uploads ADD COLUMN expires_at REAL")


#: Applied in order on open; ``schema_version`` is how many have run. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3]
SCHEMA_VERSION = len(MIGRATIONS)


def read_version(conn: sqlite3.Connection) -> int:
    r = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(r[0]) if r else 0


BEING_CREATED = "the state is being created; try again in a moment"


def busy_error(exc: sqlite3.Error, path: Path) -> StateError | None:
    """The StateError for a reader refused by a lock, or None for any other error.

    A reader of a WAL file meets a lock only while a writer sets the file up (creating it,
    switching it to WAL): not damage, a moment of contention.
    """
    if getattr(exc, "sqlite_errorcode", None) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return None
    return StateError(
        f"state {path} is busy: another process is creating or changing it; try again in a moment"
    )


def check_and_migrate(conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = read_version(conn) if "meta" in tables else 0
    if tables and "meta" not in tables:
        raise StateError(f"{path} is not a motion-pipeline state file (tables: {sorted(tables)})")
    if readonly and version == 0:
        # An empty file, or meta without schema_version: a writer is between creating the file
        # and committing its first migration (one transaction). `status` must not call that
        # damage, nor an old version.
        raise StateError(f"state {path}: {BEING_CREATED}")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state {path} has schema version {version}, newer than this motion-pipeline "
            f"understands ({SCHEMA_VERSION}); upgrade motion-pipeline to use it"
        )
    if version == SCHEMA_VERSION:
        return
    if readonly:
        raise StateError(
            f"state {path} has schema version {version}, older than {SCHEMA_VERSION}; "
            "`run` upgrades it"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = read_version(conn)
        for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
            migrate(conn)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (str(number),),
            )
        if version == 0:
            created_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('created_at', ?) ON CONFLICT DO NOTHING",
                (created_at,),
            )
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
