"""``status`` on a state file that another process is still creating answers cleanly.

``run`` creates ``state.sqlite``, switches it to WAL and applies its first migration in one
transaction; a ``status`` in that window finds a file without tables (or, from an interrupted
hand-made file, ``meta`` without ``schema_version``). That is "being created", exit 1 with a
StateError: not a traceback, not "not a motion-pipeline state file", not "old version".
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from batchkit import RUN_TIMEOUT, cli

from pipeline.errors import StateError
from pipeline.state.database import state_path
from pipeline.state.store import StateStore

REPO = Path(__file__).resolve().parents[1]
BEING_CREATED = "the state is being created; try again in a moment"

# The real StateStore.open, paused inside its first migration: the tables exist in the writer's
# open transaction, and nowhere else yet. It goes on when a line arrives on stdin.
PAUSED_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.state import schema as state_schema
    from pipeline.state.store import StateStore
    first = state_schema.MIGRATIONS[0]
    def paused(conn):
        first(conn)
        print("ready", flush=True)
        sys.stdin.readline()
    state_schema.MIGRATIONS[0] = paused
    StateStore.open(Path(sys.argv[1])).close()
    print("created", flush=True)
""")

# A writer of a file not (yet) in WAL mode holding an exclusive lock: readers are refused.
LOCKING_WRITER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    print("ready", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
""")


@contextlib.contextmanager
def child(code: str, arg: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(arg)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # blocks until the child is there
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=RUN_TIMEOUT)


def release(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate("go\n", timeout=RUN_TIMEOUT)
    assert proc.returncode == 0
    return out


def assert_being_created(output: Path) -> None:
    shown = cli("status", output)
    assert shown.returncode == 1, shown.stderr
    assert BEING_CREATED in shown.stderr and str(state_path(output)) in shown.stderr
    assert "Traceback" not in shown.stderr and "not a motion-pipeline" not in shown.stderr
    as_json = cli("status", output, "--json")
    assert as_json.returncode == 1 and BEING_CREATED in as_json.stderr
    assert "Traceback" not in as_json.stderr


def test_status_while_run_is_creating_the_state(tmp_path: Path) -> None:
    with child(PAUSED_WRITER, tmp_path) as writer:
        assert state_path(tmp_path).exists()  # the file is there, its tables are not (for us)
        with pytest.raises(StateError, match="being created"):
            StateStore.open(tmp_path, readonly=True)
        assert_being_created(tmp_path)
        assert release(writer).strip() == "created"
    shown = cli("status", tmp_path, "--json")  # created now: an ordinary, empty state
    assert shown.returncode == 0, shown.stderr


@pytest.mark.parametrize("how", ["empty-file", "wal-no-tables", "meta-without-version"])
def test_status_on_a_half_made_state_file(how: str, tmp_path: Path) -> None:
    path = state_path(tmp_path)
    if how == "empty-file":
        path.write_bytes(b"")
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            if how == "meta-without-version":
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("INSERT INTO meta VALUES ('created_at', 'now')")
                conn.commit()
    assert_being_created(tmp_path)
    with StateStore.open(tmp_path) as store:  # `run` finishes what was begun
        assert store.schema_version >= 1
    assert cli("status", tmp_path).returncode == 0


def test_status_while_a_writer_locks_the_new_file_says_try_again(tmp_path: Path) -> None:
    with child(LOCKING_WRITER, state_path(tmp_path)) as writer:
        shown = cli("status", tmp_path)
        assert shown.returncode == 1, shown.stderr
        assert "busy" in shown.stderr and "try again in a moment" in shown.stderr
        assert "Traceback" not in shown.stderr
        release(writer)


def test_a_foreign_sqlite_file_is_still_named_as_such(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(state_path(tmp_path))) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
        conn.commit()
    shown = cli("status", tmp_path)
    assert shown.returncode == 1 and "not a motion-pipeline state file" in shown.stderr
