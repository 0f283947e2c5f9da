"""``status --json`` writes its document without a dict per job (100,000 jobs in < 1 s): its
bytes must stay those of ``json.dumps(pipeline.status(...).as_dict())`` for any text a job may
hold (quotes, backslashes, controls, non-ASCII, astral characters), across the pieces it is
written in, with damaged videos and with a budget's prices. Real states, real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from batchkit import cli

import pipeline
from pipeline.dataset.status import CHUNK, batch_status
from pipeline.jobs import State
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore

ODD = 'blocked\x1b[2J "quoted" back\\slash \u202emoderation\rnext é 日本 \U0001f600 \x7f\x00'


def _done(store: StateStore, out: Path, job_id: str, seconds: float) -> None:
    rel = f"videos/{job_id}.mp4"
    data = f"video {job_id}".encode()
    (out / "videos").mkdir(exist_ok=True)
    (out / rel).write_bytes(data)
    st = (out / rel).stat()
    store.transition(job_id, State.SUBMITTING)
    store.transition(job_id, State.RUNNING, task_id=f"task-{job_id}")
    store.transition(job_id, State.DOWNLOADING)
    store.transition(job_id, State.DONE, output=rel, output_sha256=hashlib.sha256(data).hexdigest(),
                     billed_seconds=seconds, result=json.dumps({"size": st.st_size,
                                                                "mtime_ns": st.st_mtime_ns}))  # fmt: skip


def mixed_state(out: Path) -> Path:
    """Every kind of line status prints, and text JSON must escape."""
    ids = {"a": "std", "b": "pro", "c": None, "d-é日\U0001f600": "std", 'e"q\\': "pro",
           "f\t": "std", "g": "std", "h": "std"}  # fmt: skip
    with StateStore.open(out) as store:
        store.sync_jobs(JobRecord(i, f"k-{i}", {"settings": {"mode": m}} if m else {})
                        for i, m in ids.items())  # fmt: skip
        for n, job_id in enumerate(["a", "b", "c"]):
            _done(store, out, job_id, 5.1 + n / 3)
        store.transition("d-é日\U0001f600", State.SUBMITTING)
        store.transition("d-é日\U0001f600", State.RUNNING, task_id="t-é-\x01")
        store.transition("d-é日\U0001f600", State.FAILED, error=ODD, fail_kind="moderation")
        store.transition('e"q\\', State.FAILED, error="never submitted")
        store.transition("f\t", State.SUBMITTING)
        store.transition("f\t", State.NEEDS_ATTENTION, error="lost \t tab")
        store.transition("g", State.SUBMITTING)
        store.transition("g", State.RUNNING, task_id="tg", billed_seconds=0.0)
        store.retire_job("a", reason="replaced")
    (out / "videos" / "b.mp4").unlink()  # missing
    (out / "videos" / "c.mp4").write_bytes(b"changed, and longer")  # changed
    return out


def expected(target: Path) -> str:
    return json.dumps(pipeline.status(target).as_dict()) + "\n"


def test_the_json_of_every_kind_of_line_is_json_dumps_own(tmp_path: Path) -> None:
    out = mixed_state(tmp_path / "out")
    proc = cli("status", out, "--json")
    assert proc.returncode == 1, proc.stderr  # failed jobs and damaged videos
    assert proc.stdout == expected(out)
    doc = json.loads(proc.stdout)
    assert {j["id"]: j["output_problem"] for j in doc["jobs"] if j["output_problem"]} == {
        "b": "missing",
        "c": "changed",
    }
    assert [j["error"] for j in doc["jobs"] if j["id"].startswith("d-")] == [ODD]


@pytest.mark.parametrize("prices", ["{std: 0.07, pro: 0.11}", "{std: 0.07}"])
def test_a_manifest_with_prices_gives_the_same_document(tmp_path: Path, prices: str) -> None:
    out = mixed_state(tmp_path / "out")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"version: 1\nname: m\noutput_dir: {out}\nprovider:\n  name: sandbox\n"
        f"budget:\n  price_per_second: {prices}\n  currency: EUR\n"
        "jobs:\n  - id: a\n    image: x.png\n    video: y.mp4\n",
        encoding="utf-8",
    )
    proc = cli("status", manifest, "--json")
    assert proc.stdout == expected(manifest), proc.stderr
    paid = json.loads(proc.stdout)["paid"]
    # a, a~1 (its retired copy), b, c, d (failed with a task) and f (reached submission); not
    # e (failed before any task), g (adopted for 0 s) nor h (pending). An unpriced pro job
    # leaves the cost unknown.
    assert paid["jobs"] == 6
    assert (paid["cost"] is None) == (prices == "{std: 0.07}")


def test_pieces_join_into_one_document(tmp_path: Path) -> None:
    out = tmp_path / "out"
    n = 2 * CHUNK + 3  # three pieces, the last a short one
    with StateStore.open(out) as store:
        store.sync_jobs(JobRecord(f"j{i:05d}", f"k{i}", {}) for i in range(n))
        store.transition(f"j{CHUNK:05d}", State.FAILED, error="first of the second piece")
        store.transition(f"j{n - 1:05d}", State.FAILED, error="the very last")
    report = batch_status(out)
    pieces = list(report.json_chunks("USD"))
    assert len([p for p in pieces if p.startswith('{"id"')]) == 3
    assert "".join(pieces) + "\n" == expected(out)
    assert len(json.loads("".join(pieces))["jobs"]) == n


def test_an_empty_state_is_an_empty_list(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StateStore.open(out) as store:
        store.sync_jobs([])
    proc = cli("status", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected(out)
    assert json.loads(proc.stdout)["jobs"] == []


def test_the_read_leaves_no_transaction_open(tmp_path: Path) -> None:
    """One snapshot for counts, lines, money and results, then the file is let go: a writer
    that comes after commits at once, and a second read sees its change."""
    out = mixed_state(tmp_path / "out")
    with StateStore.open(out, readonly=True) as reader, StateStore.open(out) as writer:
        seen, outputs = reader.status_rows()
        assert not reader.db.conn.in_transaction
        assert sum(seen.counts.values()) == len(seen.lines) == 9
        assert {o.id for o in outputs} == {"a", "a~1", "b", "c"}
        writer.transition("h", State.SUBMITTING)
        again, _ = reader.status_rows()
        assert again.counts[State.SUBMITTING] == seen.counts[State.SUBMITTING] + 1
