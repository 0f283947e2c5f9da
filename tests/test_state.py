"""The SQLite state store: transitions, events, group commit, migrations, readers, crashes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

import pipeline.state.schema as schema_module
from pipeline.errors import BatchStopped, StateError
from pipeline.jobs import TRANSITIONS, State
from pipeline.state.database import state_path
from pipeline.state.rows import JobRecord, StaleStateError
from pipeline.state.schema import MIGRATIONS, SCHEMA_VERSION
from pipeline.state.store import SELECT_DONE_BY_KEY, StateStore

REPO = Path(__file__).resolve().parents[1]
SPEC = {"image": "/in/alice.png", "video": "/in/salsa.mp4", "settings": {"mode": "std"}}


def records(n: int, *, key: str = "k") -> list[JobRecord]:
    return [JobRecord(f"job-{i:03d}", f"{key}{i}", SPEC) for i in range(n)]


def open_store(out: Path, n: int = 3) -> StateStore:
    store = StateStore.open(out)
    store.sync_jobs(records(n))
    return store


def spawn(code: str, out: Path) -> subprocess.Popen[str]:
    """A child process running ``code`` with the output dir as argv[1]; waits for its "ready"."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == "ready", f"child said {line!r}"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------- basics


def test_new_store_has_schema_wal_and_pending_jobs(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        assert store.counts()[State.PENDING] == 3
        assert store.counts()[State.DONE] == 0
        row = store.get("job-001")
        assert (row.key, row.state, row.attempt, row.task_id) == ("k1", State.PENDING, 0, None)
        assert row.spec == SPEC
        [created] = store.events("job-001")
        assert (created.from_state, created.to_state) == (None, State.PENDING)
        pragmas = [store.pragma(p) for p in ("synchronous", "foreign_keys")]
        assert pragmas == [2, 1]  # FULL: a commit is on disk when it returns
    conn = sqlite3.connect(state_path(tmp_path))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sync_leaves_existing_rows_alone_and_reports_changed_keys(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.transition("job-000", State.SUBMITTING, client_id="c0", attempt=1)
        store.transition("job-000", State.RUNNING, task_id="t0")
        result = store.sync_jobs(
            [
                JobRecord("job-000", "changed", {"other": 1}),
                JobRecord("job-001", "k1", {"other": 1}),
                JobRecord("job-009", "k9", SPEC),
            ]
        )
        assert result.inserted == 1
        [change] = result.changed
        assert (change.job_id, change.old_key, change.new_key) == ("job-000", "k0", "changed")
        assert (change.state, change.task_id) == (State.RUNNING, "t0")
        assert store.get("job-000").key == "k0"  # untouched until the user says replace
        assert store.get("job-001").spec == SPEC
        assert store.get("job-009").state is State.PENDING


def test_sync_refuses_duplicate_ids_and_keeps_nothing(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        with pytest.raises(StateError, match="job-x: listed twice"):
            store.sync_jobs([JobRecord("job-x", "a", {}), JobRecord("job-x", "b", {})])
        assert sum(store.counts().values()) == 0


def test_replace_job_resets_and_remembers_the_paid_task(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.transition("job-000", State.SUBMITTING, client_id="c0", attempt=1)
        store.transition("job-000", State.RUNNING, task_id="t0")
        row = store.replace_job(JobRecord("job-000", "new", {"v": 2}), reason="--replace")
        assert (row.state, row.key, row.task_id, row.attempt) == (State.PENDING, "new", None, 0)
        assert row.spec == {"v": 2}
        last = store.events("job-000")[-1]
        assert last.detail["old"]["task_id"] == "t0"
        assert last.detail["reason"] == "--replace"


def test_transition_records_fields_and_event_in_one_step(tmp_path: Path) -> None:
    ticks = iter(datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(60))
    with StateStore.open(tmp_path, clock=lambda: next(ticks)) as store:
        store.sync_jobs(records(1))
        row = store.transition("job-000", State.SUBMITTING, client_id="c-1", attempt=1)
        assert (row.state, row.client_id, row.attempt) == (State.SUBMITTING, "c-1", 1)
        assert row.submitted_at == "2026-01-01T00:00:01.000+00:00"
        row = store.transition("job-000", State.RUNNING, expect=State.SUBMITTING, task_id="T1")
        row = store.transition("job-000", State.DOWNLOADING, result_url="http://127.0.0.1/r.mp4")
        row = store.transition(
            "job-000", State.DONE, output="videos/job-000.mp4", output_sha256="ab", duration=5.0
        )
        assert row.finished_at == "2026-01-01T00:00:04.000+00:00"
        assert row.updated_at == row.finished_at
        assert (row.task_id, row.output, row.duration) == ("T1", "videos/job-000.mp4", 5.0)
        events = store.events("job-000")
        assert [(e.from_state, e.to_state) for e in events] == [
            (None, State.PENDING),
            (State.PENDING, State.SUBMITTING),
            (State.SUBMITTING, State.RUNNING),
            (State.RUNNING, State.DOWNLOADING),
            (State.DOWNLOADING, State.DONE),
        ]
        assert events[2].detail["set"] == {"task_id": "T1"}
        assert store.find_done_by_key("k0") == row
        assert store.find_done_by_key("nope") is None


def test_the_twin_lookup_walks_the_key_index_not_every_done_job(tmp_path: Path) -> None:
    # Every submit asks it; through the state index it read each done row, so a batch went
    # quadratic (12% of a 2,000-job run's loop, bench/RESULTS.md). The plan is SQLite's own.
    with open_store(tmp_path / "out", 50) as store:
        conn = store.db.conn
        plan = conn.execute("EXPLAIN QUERY PLAN " + SELECT_DONE_BY_KEY, ("k1", "done")).fetchall()
        details = " ".join(str(row[-1]) for row in plan)
        assert "INDEX jobs_key" in details and "jobs_state" not in details, details


@pytest.mark.parametrize("old", list(State))
def test_every_forbidden_transition_is_refused(tmp_path: Path, old: State) -> None:
    with open_store(tmp_path, 1) as store:
        # Walk the job into `old` through legal steps.
        path = {
            State.PENDING: [],
            State.SUBMITTING: [State.SUBMITTING],
            State.RUNNING: [State.SUBMITTING, State.RUNNING],
            State.DOWNLOADING: [State.SUBMITTING, State.RUNNING, State.DOWNLOADING],
            State.DONE: [State.DONE],
            State.FAILED: [State.FAILED],
            State.NEEDS_ATTENTION: [State.SUBMITTING, State.NEEDS_ATTENTION],
        }[old]
        for step in path:
            store.transition("job-000", step)
        for to in set(State) - TRANSITIONS[old]:
            with pytest.raises(StateError, match=f"illegal transition {old} -> {to}"):
                store.transition("job-000", to)
        assert store.get("job-000").state is old
        assert len(store.events("job-000")) == 1 + len(path)


def test_expect_guards_against_a_stale_view(tmp_path: Path) -> None:
    with open_store(tmp_path, 1) as store:
        store.transition("job-000", State.SUBMITTING)
        with pytest.raises(StaleStateError) as info:
            store.transition("job-000", State.FAILED, expect={State.PENDING, State.RUNNING})
        assert info.value.actual is State.SUBMITTING
        assert "expected pending/running" in str(info.value)
        assert store.get("job-000").state is State.SUBMITTING


def test_unknown_job_and_unknown_field_are_state_errors(tmp_path: Path) -> None:
    with open_store(tmp_path, 1) as store:
        with pytest.raises(StateError, match="job ghost: not in state"):
            store.transition("ghost", State.SUBMITTING)
        with pytest.raises(StateError, match="unknown job field"):
            store.transition("job-000", State.SUBMITTING, state="done")
        assert store.get("job-000").state is State.PENDING


def test_set_fields_updates_without_a_state_change(tmp_path: Path) -> None:
    with open_store(tmp_path, 1) as store:
        store.transition("job-000", State.SUBMITTING)
        store.transition("job-000", State.RUNNING, task_id="T")
        row = store.set_fields("job-000", result_url="http://127.0.0.1/new", detail={"why": "x"})
        assert (row.state, row.result_url) == (State.RUNNING, "http://127.0.0.1/new")
        last = store.events("job-000")[-1]
        assert (last.from_state, last.to_state) == (State.RUNNING, State.RUNNING)
        assert last.detail == {
            "op": "set",
            "set": {"result_url": "http://127.0.0.1/new"},
            "why": "x",
        }


def test_rows_and_summaries_filter_by_state(tmp_path: Path) -> None:
    with open_store(tmp_path, 5) as store:
        store.transition("job-003", State.FAILED, error="moderation: nope")
        store.transition("job-001", State.SUBMITTING)
        store.transition("job-001", State.NEEDS_ATTENTION, error="create timed out")
        bad = [State.FAILED, State.NEEDS_ATTENTION]
        assert [r.id for r in store.rows(bad)] == ["job-001", "job-003"]
        assert [r.id for r in store.rows()] == [f"job-{i:03d}" for i in range(5)]
        assert list(store.rows([])) == []
        [s1, s3] = store.summaries(bad)
        assert (s3.id, s3.state, s3.error) == ("job-003", State.FAILED, "moderation: nope")
        assert s1.state is State.NEEDS_ATTENTION
        assert len(store.summaries()) == 5


# --------------------------------------------------------------------------- group commit


def test_batch_shares_one_transaction_and_rolls_back_on_error(tmp_path: Path) -> None:
    with open_store(tmp_path, 3) as store:
        with pytest.raises(RuntimeError), store.batch():
            store.transition("job-000", State.SUBMITTING, client_id="a")
            store.transition("job-001", State.SUBMITTING, client_id="b")
            raise RuntimeError("boom")
        assert store.counts()[State.PENDING] == 3
        with store.batch():
            store.transition("job-000", State.SUBMITTING, client_id="a")
            # A refused write inside the batch leaves the others intact.
            with pytest.raises(StateError):
                store.transition("job-001", State.DONE, expect=State.RUNNING)
            store.transition("job-002", State.SUBMITTING, client_id="c")
            # Not visible to another connection until the batch commits.
            assert _other_reader_counts(tmp_path)[State.SUBMITTING] == 0
        assert _other_reader_counts(tmp_path)[State.SUBMITTING] == 2


def test_task_id_inside_a_batch_is_committed_before_returning(tmp_path: Path) -> None:
    with open_store(tmp_path, 2) as store:
        store.transition("job-000", State.SUBMITTING)
        with pytest.raises(RuntimeError), store.batch():
            store.transition("job-001", State.SUBMITTING)
            store.transition("job-000", State.RUNNING, task_id="PAID")
            assert _other_reader_counts(tmp_path)[State.RUNNING] == 1
            raise RuntimeError("crash after the create")
        assert store.get("job-000").task_id == "PAID"


def _other_reader_counts(out: Path) -> dict[State, int]:
    with StateStore.open(out, readonly=True) as reader:
        return reader.counts()


# --------------------------------------------------------------------------- uploads


def test_upload_cache_round_trip_and_overwrite(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        cache = store.uploads
        assert cache.get("kie", "https://up", "abc") is None
        cache.put("kie", "https://up", "abc", "https://up/f1", 1000.5)
        cache.put("kie", "https://up", "abc", "https://up/f2", 2000.0, 88400.0)
        cache.put("kie", "https://other", "abc", "https://other/f", 10.0)
        assert cache.get("kie", "https://up", "abc") == ("https://up/f2", 2000.0, 88400.0)
        assert cache.get("acedata", "https://up", "abc") is None
    with StateStore.open(tmp_path, readonly=True) as reader:
        assert reader.uploads.get("kie", "https://other", "abc") == ("https://other/f", 10.0, None)


def test_v2_upload_rows_survive_the_v3_migration_without_an_expiry(tmp_path: Path) -> None:
    from pipeline.state.schema import MIGRATIONS

    conn = sqlite3.connect(state_path(tmp_path))
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for migrate in MIGRATIONS[:2]:
        migrate(conn)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO uploads VALUES ('kie', 'https://up', 'abc', 'https://up/f', 5.0)")
    conn.commit()
    conn.close()
    with StateStore.open(tmp_path) as store:
        assert store.uploads.get("kie", "https://up", "abc") == ("https://up/f", 5.0, None)


# --------------------------------------------------------------------------- versions


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    StateStore.open(tmp_path).close()
    conn = sqlite3.connect(state_path(tmp_path))
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StateError, match="schema version 99, newer than") as info:
            StateStore.open(tmp_path, readonly=readonly)
        assert info.value.exit_code == 1


def test_migrations_run_in_order_and_only_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(tmp_path, 2).close()
    applied: list[str] = []

    def v2(conn: sqlite3.Connection) -> None:
        applied.append("v2")
        conn.execute("ALTER TABLE jobs ADD COLUMN note TEXT")

    def v3(conn: sqlite3.Connection) -> None:
        applied.append("v3")
        conn.execute("UPDATE jobs SET note = 'from v3'")  # needs v2's column: order matters

    base = len(MIGRATIONS)
    monkeypatch.setattr(schema_module, "MIGRATIONS", [*MIGRATIONS, v2, v3])
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", base + 2)
    with pytest.raises(StateError, match=f"schema version {base}, older than {base + 2}"):
        StateStore.open(tmp_path, readonly=True)  # a reader never migrates
    assert applied == []
    with StateStore.open(tmp_path) as store:
        assert store.schema_version == base + 2
        assert store.counts()[State.PENDING] == 2
    with StateStore.open(tmp_path) as store:  # a second open finds nothing to do
        assert store.schema_version == base + 2
    assert applied == ["v2", "v3"]
    conn = sqlite3.connect(state_path(tmp_path))
    assert conn.execute("SELECT DISTINCT note FROM jobs").fetchall() == [("from v3",)]
    conn.close()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    state_path(tmp_path).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="unreadable"):
        StateStore.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(state_path(other))
    conn.execute("CREATE TABLE x (y)")
    conn.close()
    with pytest.raises(StateError, match="not a motion-pipeline state file"):
        StateStore.open(other)


def test_readonly_store_refuses_writes_and_missing_state(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="nothing has run"):
        StateStore.open(tmp_path / "never", readonly=True)
    open_store(tmp_path, 1).close()
    with StateStore.open(tmp_path, readonly=True) as reader:
        with pytest.raises(StateError, match="read-only"):
            reader.transition("job-000", State.SUBMITTING)
        assert reader.get("job-000").state is State.PENDING


# --------------------------------------------------------------------------- processes


def test_reader_answers_while_another_process_holds_a_write_transaction(tmp_path: Path) -> None:
    open_store(tmp_path, 3).close()
    child = spawn(
        """
        import sys, time
        from pathlib import Path
        from pipeline.jobs import State
        from pipeline.state.store import StateStore
        store = StateStore.open(Path(sys.argv[1]))
        with store.batch():
            store.transition("job-000", State.SUBMITTING)
            print("ready", flush=True)
            time.sleep(120)
        """,
        tmp_path,
    )
    try:
        with StateStore.open(tmp_path, readonly=True) as reader:
            assert reader.counts()[State.PENDING] == 3  # the uncommitted intent is invisible
            assert [s.id for s in reader.summaries()] == ["job-000", "job-001", "job-002"]
    finally:
        kill(child)


def test_sigkill_mid_transaction_keeps_committed_and_drops_uncommitted(tmp_path: Path) -> None:
    open_store(tmp_path, 3).close()
    child = spawn(
        """
        import sys, time
        from pathlib import Path
        from pipeline.jobs import State
        from pipeline.state.store import StateStore
        store = StateStore.open(Path(sys.argv[1]))
        store.transition("job-000", State.SUBMITTING, client_id="c0", attempt=1)
        store.transition("job-000", State.RUNNING, task_id="T0")
        with store.batch():
            store.transition("job-001", State.SUBMITTING, client_id="c1", attempt=1)
            store.transition("job-002", State.SUBMITTING, client_id="c2", attempt=1)
            print("ready", flush=True)
            time.sleep(120)
        """,
        tmp_path,
    )
    kill(child)
    with StateStore.open(tmp_path) as store:
        assert store.integrity_check() == "ok"
        assert store.get("job-000").task_id == "T0"
        assert store.get("job-001").state is State.PENDING
        assert store.get("job-002").state is State.PENDING
        assert len(store.events("job-001")) == 1


def test_sigkill_at_an_arbitrary_moment_leaves_rows_and_events_consistent(tmp_path: Path) -> None:
    open_store(tmp_path, 20).close()
    # The child cycles jobs through their states as fast as it can, in batches and singly;
    # it is killed after it reported some progress, at whatever point it reached.
    child = spawn(
        """
        import sys
        from pathlib import Path
        from pipeline.jobs import State
        from pipeline.state.store import StateStore
        store = StateStore.open(Path(sys.argv[1]))
        cycle = [State.SUBMITTING, State.RUNNING, State.DOWNLOADING, State.DONE, State.PENDING]
        print("ready", flush=True)
        n = 0
        while True:
            with store.batch():
                for i in range(10):
                    job = f"job-{(n + i) % 20:03d}"
                    to = cycle[(cycle.index(store.get(job).state) + 1) % len(cycle)]
                    store.transition(job, to, attempt=n, task_id=f"T{n}-{i}")
            store.set_fields(f"job-{n % 20:03d}", error="x" * (n % 300))
            n += 1
            if n % 50 == 0:
                print(n, flush=True)
        """,
        tmp_path,
    )
    assert child.stdout is not None
    for _ in range(3):
        assert child.stdout.readline().strip().isdigit()
    kill(child)
    with StateStore.open(tmp_path) as store:
        assert store.integrity_check() == "ok"
        for row in store.rows():
            events = store.events(row.id)
            assert events[-1].to_state is row.state
            if len(events) > 1:
                assert events[-1].detail["set"].get("task_id", row.task_id) == row.task_id


def test_disk_full_is_a_batch_stop_and_leaves_the_store_usable(tmp_path: Path) -> None:
    from diskkit import fill, small_disk

    with small_disk(tmp_path / "disk", 8) as disk, open_store(disk, 1) as store:
        fill(disk, leave=96 * 1024)  # a real full disk: room for small writes only
        big = [JobRecord(f"big-{i}", "k", {"pad": "x" * 20000}) for i in range(50)]
        with pytest.raises(BatchStopped, match="disk full") as info:
            store.sync_jobs(big)
        assert info.value.exit_code == 3
        with pytest.raises(BatchStopped), store.batch():
            store.sync_jobs(big)
        assert sum(store.counts().values()) == 1
        store.transition("job-000", State.SUBMITTING)  # small writes still fit
        assert store.integrity_check() == "ok"


def test_v2_turns_timeout_text_into_fail_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema_module, "MIGRATIONS", MIGRATIONS[:1])
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", 1)
    StateStore.open(tmp_path).close()  # a version-1 file, as the first release wrote it
    monkeypatch.undo()
    conn = sqlite3.connect(state_path(tmp_path))
    insert = (
        "INSERT INTO jobs (id, key, state, spec, task_id, error, created_at, updated_at) "
        "VALUES (?, ?, 'failed', '{}', ?, ?, 'now', 'now')"
    )
    conn.execute(insert, ("late", "k0", "t0", "task ran past task_timeout (60 s); kept"))
    conn.execute(insert, ("bad", "k1", None, "bad input"))
    conn.commit()
    conn.close()
    with StateStore.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get("late").fail_kind == "timeout"
        assert store.get("bad").fail_kind is None
        store.transition("late", State.RUNNING)
        assert store.get("late").fail_kind is None  # leaving failed clears why it failed


def test_a_task_id_belongs_to_one_generation(tmp_path: Path) -> None:
    from pipeline.state.rows import DuplicateTaskError

    with StateStore.open(tmp_path) as store:
        store.sync_jobs(
            [JobRecord("a", "k1", SPEC), JobRecord("b", "k2", SPEC), JobRecord("twin", "k1", SPEC)]
        )
        for job in ("a", "b"):
            store.transition(job, State.SUBMITTING)
        store.transition("a", State.RUNNING, task_id="T1")
        with pytest.raises(DuplicateTaskError, match="already belongs to job a") as info:
            store.transition("b", State.RUNNING, task_id="T1")
        assert info.value.holder == "a"
        assert store.get("b").state is State.SUBMITTING and store.get("b").task_id is None
        store.transition("twin", State.DONE, task_id="T1")  # the same generation may share it
