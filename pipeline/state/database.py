"""The SQLite connection of a state file: opened in WAL mode with ``synchronous=FULL`` (a
committed transaction is on disk when the commit returns), migrated, guarded by one lock so
worker threads may share it, and every SQLite failure turned into the pipeline's errors (a full
disk is :class:`~pipeline.errors.BatchStopped`).

Every write is one transaction, except inside :meth:`Database.batch`, where many writes share
one commit (one fsync); :meth:`Database.flush` makes everything so far durable at once (how a
task id commits before it returns, even inside a batch).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from pipeline.errors import BatchStopped, PipelineError, StateError
from pipeline.state.schema import busy_error, check_and_migrate, read_version

STATE_FILE = "state.sqlite"


def state_path(output_dir: Path) -> Path:
    return Path(output_dir) / STATE_FILE


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Database:
    """One SQLite connection to ``state.sqlite``. Open with :meth:`open`; usable as a context."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self._mutex = threading.RLock()
        self._in_batch = False

    @classmethod
    def open(
        cls,
        output_dir: Path,
        *,
        readonly: bool = False,
        busy_timeout: float = 10.0,
    ) -> Database:
        """Open (and for writers create and migrate) ``<output_dir>/state.sqlite``.

        ``readonly`` opens with ``mode=ro`` and a short busy timeout: for ``status`` while a
        batch runs. It never creates or migrates anything.
        """
        path = state_path(output_dir)
        try:
            if readonly:
                if not path.exists():
                    raise StateError(f"no state at {path}: nothing has run in {output_dir} yet")
                uri = f"file:{quote(str(path.resolve()))}?mode=ro"
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=min(busy_timeout, 2.0),
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state {path}: {exc}") from exc
        try:
            if not readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateError(f"state {path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            check_and_migrate(conn, path, readonly=readonly)
        except sqlite3.DatabaseError as exc:
            conn.close()
            busy = busy_error(exc, path) if readonly else None
            if busy is not None:
                raise busy from None
            error = _translate(exc, path)
            if isinstance(error, BatchStopped):
                raise error from exc
            raise StateError(f"state {path} is unreadable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, readonly=readonly)

    def close(self) -> None:
        with self.locked():
            self.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def pragma(self, name: str) -> object:
        """The value of a read-only PRAGMA of this connection (``synchronous``...), for checks."""
        if not name.isidentifier():
            raise StateError(f"not a pragma name: {name!r}")
        with self.locked():
            row = self.conn.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    def integrity_check(self) -> str:
        """``"ok"`` or SQLite's list of problems."""
        with self.locked():
            rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    @property
    def schema_version(self) -> int:
        with self.locked():
            return read_version(self.conn)

    # ----------------------------------------------------------------------- transactions

    @property
    def in_batch(self) -> bool:
        return self._in_batch

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes, one commit (one fsync). Rolled back (to the last task-id flush) on error.

        Holds the write lock for its duration: keep it short and do no network I/O inside.
        """
        self.require_writable()
        with self.locked():
            if self._in_batch:  # nested: the outer batch commits
                yield
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_batch = True
            try:
                yield
                self._in_batch = False
                self.conn.execute("COMMIT")
            except BaseException:
                self._in_batch = False
                self._rollback("ROLLBACK")
                raise

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        self.require_writable()
        with self.locked():
            if self._in_batch:
                # A savepoint keeps each write all-or-nothing inside the shared transaction.
                self.conn.execute("SAVEPOINT write")
                try:
                    yield self.conn
                except BaseException:
                    self._rollback("ROLLBACK TO write")
                    raise
                self.conn.execute("RELEASE write")
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback("ROLLBACK")
                raise

    def _rollback(self, statement: str) -> None:
        # SQLite rolls back by itself after some failures (disk full): then there is nothing
        # left to undo, and trying would raise over the error that matters.
        if self.conn.in_transaction:
            self.conn.execute(statement)
            if statement.startswith("ROLLBACK TO"):
                self.conn.execute("RELEASE write")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The connection's mutex, with SQLite failures turned into the pipeline's errors."""
        with self._mutex:
            try:
                yield
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    def flush(self) -> None:
        """Inside a batch, make everything so far durable now (and keep batching)."""
        with self.locked():
            if self._in_batch:
                self.conn.execute("COMMIT")
                self.conn.execute("BEGIN IMMEDIATE")

    def require_writable(self) -> None:
        if self.readonly:
            raise StateError(f"state {self.path} is open read-only")

    # ----------------------------------------------------------------------- meta

    def meta(self, key: str) -> str | None:
        with self.locked():
            r = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value),
            )


def _no_room(folder: Path) -> bool:
    try:
        return free_bytes(folder) < 1024**2
    except OSError:
        return False


def _translate(exc: sqlite3.Error, path: Path) -> PipelineError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    # A full disk is SQLITE_FULL, or an I/O error of the WAL or its index on a disk with no room.
    if primary == sqlite3.SQLITE_FULL or (
        primary == sqlite3.SQLITE_IOERR and _no_room(path.parent)
    ):
        return BatchStopped(f"disk full: cannot write the state {path} ({exc})")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StateError(f"state {path} is busy: another process holds it ({exc})")
    return StateError(f"state {path}: {exc}")
