"""A misbehaving provider hurts one job, never the batch: the sandbox misbehaves on purpose for
the first job of three, the other two finish, nothing crashes, and a second run does not crash
again or pay again. Each case is checked against the sandbox's ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli,
    creates,
    job_entries,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    state_rows,
    write_manifest,
)

IDS = ["a", "b", "c"]
MB = 1024 * 1024

# case: (fault rule for the first job, state of job a, words its reason must have)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "redirect-loop": ({"kind": "redirect_loop", "times": 2}, "failed", "redirect"),
    "invalid-port": (
        {"kind": "bad_result_url", "times": 1, "url": "http://127.0.0.1:99999/x"},
        "failed",
        "result unusable",
    ),
    "malformed-url": (
        {"kind": "bad_result_url", "times": 1, "url": "http://[::1"},
        "failed",
        "result unusable",
    ),
    "empty-task-id": ({"kind": "weird_task_id", "times": 1, "task_id": ""}, "needs_attention", ""),
    "long-task-id": (
        {"kind": "weird_task_id", "times": 1, "task_id": "x", "repeat": 10000},
        "needs_attention",
        "10000",
    ),
    "surrogate-task-id": (
        {"kind": "weird_task_id", "times": 1, "task_id": "\\ud800"},
        "needs_attention",
        "",
    ),
    "escape-task-id": (
        {"kind": "weird_task_id", "times": 1, "task_id": "\\u001b[2J"},
        "needs_attention",
        "",
    ),
    "huge-create-answer": (
        {"kind": "huge_body", "endpoint": "create", "times": 1, "size": 16 * MB},
        "needs_attention",
        "",
    ),
    "huge-poll-answer": (
        {"kind": "huge_body", "endpoint": "poll", "times": 1, "size": 16 * MB},
        "done",
        "",
    ),
    "huge-result-announced": (
        {"kind": "huge_result", "times": 1, "size": 3 * 1024 * MB, "content_length": True},
        "done",
        "",
    ),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.mark.parametrize("case", list(CASES))
def test_one_bad_answer_hurts_one_job(case: str, media: Media, tmp_path: Path) -> None:
    rule, state, words = CASES[case]
    with sandbox(tmp_path / "sb", {"faults": [rule]}) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=1),  # one at a time: job a meets the fault
            job_entries("kie", srv, media, IDS),
        )
        first = cli("run", manifest)
        said = first.stdout + first.stderr
        assert "Traceback" not in said and "\x1b" not in said, said
        assert first.returncode == (0 if state == "done" else 1), said
        rows = state_rows(out_dir(manifest))
        assert rows["a"]["state"] == state, rows["a"]
        assert words in (rows["a"]["error"] or "")
        assert rows["b"]["state"] == rows["c"]["state"] == "done"
        assert creates(srv) == dict.fromkeys(IDS, 1)
        if state == "needs_attention":
            assert rows["a"]["task_id"] is None  # an unusable id is never stored as if it were one
            assert "resolve" in rows["a"]["error"]
        again = cli("run", manifest)  # the resume does not crash again, nor pay again
        assert "Traceback" not in again.stdout + again.stderr
        assert again.returncode == first.returncode
        assert creates(srv) == dict.fromkeys(IDS, 1)


def test_one_task_id_answered_for_two_jobs_gives_neither_the_others_video(
    media: Media, tmp_path: Path
) -> None:
    profile = {"faults": [{"kind": "duplicate_task_id", "times": 1}]}
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=1),
            job_entries("kie", srv, media, IDS),
        )
        proc = cli("run", manifest)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        rows = state_rows(out_dir(manifest))
        assert rows["a"]["state"] == "done" and rows["c"]["state"] == "done"
        assert rows["b"]["state"] == "needs_attention"
        assert rows["a"]["task_id"] in rows["b"]["error"]
        assert rows["b"]["task_id"] is None
        assert creates(srv) == dict.fromkeys(IDS, 1)  # b's create was billed: a human decides


def test_kling_finds_the_real_task_behind_an_unusable_id(media: Media, tmp_path: Path) -> None:
    # Kling keeps our external_task_id: the task the answer could not name is looked up by it.
    profile = {"faults": [{"kind": "weird_task_id", "times": 1, "task_id": "\\ud800"}]}
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kling", srv, concurrency=1),
            job_entries("kling", srv, media, IDS),
        )
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = state_rows(out_dir(manifest))
        assert {r["state"] for r in rows.values()} == {"done"}
        assert creates(srv) == dict.fromkeys(IDS, 1)
        assert rows["a"]["task_id"] == srv.ledger[0].task_id
