"""The runner against the sandbox's fault profiles: rate limits, 5xx, resets, garbage, failing and
never-finishing tasks, expired result URLs, bad keys, no credits, budgets.

Runs are in-process (``operations.run_batch``) with real sleeps kept short by small Retry-After
values and ``poll_interval: 0.1``; the recording clock would turn every poll into a busy loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    creates,
    fired,
    integrity,
    job_entries,
    ledger_tasks,
    make_media,
    metadata,
    out_dir,
    provider_block,
    run_here,
    sandbox,
    state_rows,
    status_json,
    write_manifest,
)

from pipeline.jobs import State

FAIL_REASON = "Content moderation: the image may contain sensitive content."


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def batch(
    tmp_path: Path, kind: str, srv: Any, media: Media, ids: list[str], **provider: Any
) -> Path:
    return write_manifest(
        tmp_path / "m", provider_block(kind, srv, **provider), job_entries(kind, srv, media, ids)
    )


def assert_all_done(manifest: Path, srv: Any, ids: list[str]) -> None:
    output = out_dir(manifest)
    rows = state_rows(output)
    assert {i: r["state"] for i, r in rows.items()} == dict.fromkeys(ids, "done")
    assert creates(srv) == dict.fromkeys(ids, 1)
    for job_id, tasks in ledger_tasks(srv).items():
        assert tasks == [rows[job_id]["task_id"]]
    assert sorted(r["job_id"] for r in metadata(output)) == sorted(ids)
    assert integrity(output) == "ok"


@pytest.mark.parametrize("kind", ["kie", "kling", "fal", "replicate"])
def test_rate_limited_creates_are_retried_once_each(
    kind: str, media: Media, tmp_path: Path
) -> None:
    profile = {
        "faults": [
            {"kind": "rate_limit", "endpoint": "create", "times": 2, "retry_after": 0.3},
            {"kind": "rate_limit", "endpoint": "create", "after": 3, "times": 1},  # no header
        ]
    }
    ids = ["a", "b", "c"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, log):
        manifest = batch(tmp_path, kind, srv, media, ids)
        summary = run_here(manifest)
        assert summary.exit_code == 0
        assert_all_done(manifest, srv, ids)
        create_calls = [p for m, p in log.snapshot() if m == "POST" and "upload" not in p]
        assert len(create_calls) >= len(ids) + 3  # the three 429s were really answered
        assert fired(srv) == [2, 1]


@pytest.mark.parametrize("kind", ["kie", "kling", "fal", "replicate"])
def test_server_error_on_create(kind: str, media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": "server_error", "endpoint": "create", "times": 1}]}
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ids, concurrency=1)
        summary = run_here(manifest)
        assert fired(srv) == [1]
        rows = state_rows(out_dir(manifest))
        if kind == "kling":  # found not created by external_task_id, so sent again safely
            assert summary.exit_code == 0
            assert_all_done(manifest, srv, ids)
            return
        # Kie cannot tell whether a 5xx create made a task: needs attention, never re-sent.
        assert summary.exit_code == 1
        waiting = [i for i, r in rows.items() if r["state"] == "needs_attention"]
        assert len(waiting) == 1
        assert "resolve" in rows[waiting[0]]["error"]
        assert creates(srv)[waiting[0]] == 0
        assert run_here(manifest).exit_code == 1  # a second run does not re-send it either
        assert creates(srv)[waiting[0]] == 0
        assert len(srv.ledger) == 1


@pytest.mark.parametrize("kind", ["kie", "kling", "fal", "replicate"])
@pytest.mark.parametrize("fault", ["reset_before_commit", "reset_after_commit"])
def test_connection_reset_on_create(fault: str, kind: str, media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": fault, "endpoint": "create", "times": 1}]}
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ids, concurrency=1)
        summary = run_here(manifest)
        assert fired(srv) == [1]
        if kind == "kling":
            assert summary.exit_code == 0
            assert_all_done(manifest, srv, ids)
            return
        rows = state_rows(out_dir(manifest))
        waiting = [i for i, r in rows.items() if r["state"] == "needs_attention"]
        assert summary.exit_code == 1 and len(waiting) == 1
        job_id = waiting[0]
        ledger = ledger_tasks(srv)
        expected = 1 if fault == "reset_after_commit" else 0
        assert len(ledger.get(job_id, [])) == expected
        how = ["--adopt", ledger[job_id][0]] if expected else ["--resubmit"]
        assert cli("resolve", manifest, job_id, *how).returncode == 0
        assert run_here(manifest).exit_code == 0
        assert_all_done(manifest, srv, ids)


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling", "fal", "replicate"])
def test_poll_faults_are_ridden_out(kind: str, media: Media, tmp_path: Path) -> None:
    profile = {
        "latency": {"polls": 2},
        "faults": [
            {"kind": "malformed_json", "endpoint": "poll", "times": 1},
            {"kind": "server_error", "endpoint": "poll", "after": 1, "times": 2},
            {"kind": "server_error", "endpoint": "poll", "after": 4, "times": 1, "status": 503},
        ],
    }
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ids)
        assert run_here(manifest).exit_code == 0
        assert fired(srv) == [1, 2, 1]
        assert_all_done(manifest, srv, ids)


@pytest.mark.parametrize("kind", ["kie", "kling", "fal", "replicate"])
def test_failed_task_keeps_the_providers_reason(kind: str, media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": "task_fail", "times": 1, "message": FAIL_REASON}]}
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ids, concurrency=1)
        assert run_here(manifest).exit_code == 1
        assert len(srv.ledger) == 2
    doc = status_json(manifest)
    jobs = {j["id"]: j for j in doc["jobs"]}
    failed = [j for j in jobs.values() if j["state"] == "failed"]
    assert len(failed) == 1 and doc["counts"]["failed"] == 1
    assert "Content moderation" in failed[0]["error"]
    assert failed[0]["task_id"]
    text = cli("status", manifest)
    assert text.returncode == 1 and "Content moderation" in text.stdout


def test_never_finishing_task_times_out_and_is_rechecked(media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": "never_finish", "times": 1}]}
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        # The other job must finish inside task_timeout too, render included, on a busy machine:
        # both run side by side so the wait for the stuck one is paid once, not on top.
        manifest = batch(tmp_path, "kie", srv, media, ids, concurrency=2, task_timeout=3)
        assert run_here(manifest).exit_code == 1
        output = out_dir(manifest)
        rows = state_rows(output)
        stuck = [i for i, r in rows.items() if r["state"] == "failed"]
        assert len(stuck) == 1
        row = rows[stuck[0]]
        assert "task_timeout" in row["error"] and row["task_id"] in row["error"]
        assert ledger_tasks(srv)[stuck[0]] == [row["task_id"]]

        plain = run_here(manifest)  # without --retry-failed a timed-out job is left alone
        assert plain.exit_code == 1 and len(srv.ledger) == 2

        again = run_here(manifest, retry_failed=True)  # re-checked, never submitted again
        assert again.exit_code == 1
        assert len(srv.ledger) == 2
        after = state_rows(output)[stuck[0]]
        assert after["state"] == "failed" and after["task_id"] == row["task_id"]
        assert "task_timeout" in after["error"]


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling", "fal", "replicate"])
def test_expired_result_urls_are_refreshed(kind: str, media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": "expired_result", "times": 2}]}
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ids)
        assert run_here(manifest).exit_code == 0
        assert fired(srv) == [2]
        assert_all_done(manifest, srv, ids)


def test_result_expired_between_runs_is_refreshed(media: Media, tmp_path: Path) -> None:
    """A run stopped after the task id; the URLs it would have used expire before the resume."""
    ids = ["a"]
    with sandbox(tmp_path / "sandbox", {"latency": {"polls": 1}}) as (srv, _log):
        manifest = batch(tmp_path, "kling", srv, media, ids)
        crashed = cli("run", manifest, env=cli_env(MOTION_PIPELINE_CRASH_AT="mid-download"))
        assert crashed.returncode < 0
        assert srv.expire_results() >= 1
        assert run_here(manifest).exit_code == 0
        assert_all_done(manifest, srv, ids)


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling", "fal", "replicate"])
def test_rejected_key_stops_the_batch(kind: str, media: Media, tmp_path: Path) -> None:
    wrong = {
        "KIE_API_KEY": "kie-WRONG-000000000",
        "ACEDATA_API_KEY": "ace-WRONG-000000000",
        "KLING_ACCESS_KEY": "kling-AK-WRONG-0000",
        "KLING_SECRET_KEY": "kling-SK-WRONG-0000",
        "FAL_KEY": "fal-WRONG-0000000000",
        "REPLICATE_API_TOKEN": "r8-WRONG-0000000000",
    }
    with sandbox(tmp_path / "sandbox") as (srv, _log):
        manifest = batch(tmp_path, kind, srv, media, ["a", "b"])
        proc = cli("run", manifest, env=cli_env(keys=wrong))
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(srv.ledger) == 0
    output = out_dir(manifest)
    assert list((output / "videos").glob("*.mp4")) == []
    assert {r["state"] for r in state_rows(output).values()} == {"pending"}


def test_out_of_credits_stops_new_creates_and_collects_paid_ones(
    media: Media, tmp_path: Path
) -> None:
    profile = {"faults": [{"kind": "out_of_credits", "endpoint": "create", "after": 1}]}
    ids = ["a", "b", "c"]
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, "kie", srv, media, ids, concurrency=1)
        proc = cli("run", manifest)
        assert proc.returncode == 3, proc.stderr
        assert "credit" in (proc.stdout + proc.stderr).lower()
        assert len(srv.ledger) == 1
    rows = state_rows(out_dir(manifest))
    done = [i for i, r in rows.items() if r["state"] == "done"]
    assert done == [prompt for prompt in creates(srv)]  # the paid task was still collected
    assert all(r["state"] == "pending" for i, r in rows.items() if i not in done)


def test_budget_stops_submitting_and_collects_what_was_submitted(
    media: Media, tmp_path: Path
) -> None:
    ids = ["a", "b", "c", "d"]
    with sandbox(tmp_path / "sandbox", {"latency": {"polls": 1}}) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv),
            job_entries("kie", srv, media, ids),
            budget={"max_seconds": 8},  # 3.5 s per job: two fit
        )
        proc = cli("run", manifest)
        assert proc.returncode == 3, proc.stderr
        assert "budget" in proc.stdout + proc.stderr
        paid = creates(srv)
        assert len(paid) == 2 and set(paid.values()) == {1}
    rows = state_rows(out_dir(manifest))
    assert {i for i, r in rows.items() if r["state"] == "done"} == set(paid)
    assert {r["state"] for i, r in rows.items() if i not in paid} == {State.PENDING.value}


def test_download_left_for_the_next_run_is_not_success(media: Media, tmp_path: Path) -> None:
    # Every download of the first run fails (1 try + 5 retries); the recording clock makes the
    # retries instant.
    profile = {"faults": [{"kind": "server_error", "endpoint": "download", "times": 6}]}
    env = cli_env(MOTION_PIPELINE_NO_SLEEP="1")
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = batch(tmp_path, "kie", srv, media, ["a"])
        first = run_here(manifest, env=env)
        assert fired(srv) == [6]
        row = state_rows(out_dir(manifest))["a"]
        assert row["state"] != "done"
        assert first.exit_code == 1  # not "every job succeeded"
        second = run_here(manifest, env=env)
        assert second.exit_code == 0
        assert_all_done(manifest, srv, ["a"])


def test_twin_of_an_ambiguous_create_waits_for_its_resolution(media: Media, tmp_path: Path) -> None:
    # "one" and "two" are the same generation; one's create is reset after the task was made.
    profile = {"faults": [{"kind": "reset_after_commit", "endpoint": "create", "times": 1}]}
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        jobs = job_entries("kie", srv, media, ["one"])
        jobs.append({**jobs[0], "id": "two"})
        manifest = write_manifest(tmp_path / "m", provider_block("kie", srv), jobs)
        assert run_here(manifest).exit_code == 1
        assert len(srv.ledger) == 1  # the twin did not pay for the same generation again
        rows = state_rows(out_dir(manifest))
        assert rows["one"]["state"] == "needs_attention"
        assert rows["two"]["state"] == "pending"
        assert cli("resolve", manifest, "one", "--adopt", srv.ledger[0].task_id).returncode == 0
        assert run_here(manifest).exit_code == 0
        assert len(srv.ledger) == 1
    rows = state_rows(out_dir(manifest))
    assert rows["one"]["task_id"] == rows["two"]["task_id"] == srv.ledger[0].task_id
    assert {r["state"] for r in rows.values()} == {"done"}
