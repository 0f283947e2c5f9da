"""`resolve` is a safe way out: an empty or unknown task id is refused before anything changes,
and a job stuck collecting can be given up so the batch can finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    job_entries,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    state_rows,
    write_manifest,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def ambiguous_job(tmp_path: Path, srv: Any, media: Media) -> Path:
    """Job ``a`` needs attention: its create was reset after the task was made."""
    manifest = write_manifest(
        tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a"])
    )
    assert cli("run", manifest).returncode == 1
    assert state_rows(out_dir(manifest))["a"]["state"] == "needs_attention"
    return manifest


PROFILE = {"faults": [{"kind": "reset_after_commit", "endpoint": "create", "times": 1}]}


@pytest.mark.parametrize("optimize", [False, True], ids=["python", "python -O"])
def test_adopt_of_an_empty_task_id_is_refused(optimize: bool, media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb", PROFILE) as (srv, _log):
        manifest = ambiguous_job(tmp_path, srv, media)
        argv = [sys.executable, *(["-O"] if optimize else []), "-m", "pipeline"]
        proc = subprocess.run(
            [*argv, "resolve", str(manifest), "a", "--adopt", "  "],
            env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "task id" in proc.stderr and "Traceback" not in proc.stderr
    assert state_rows(out_dir(manifest))["a"]["state"] == "needs_attention"


def test_adopt_asks_the_provider_first(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb", PROFILE) as (srv, _log):
        manifest = ambiguous_job(tmp_path, srv, media)
        typo = cli("resolve", manifest, "a", "--adopt", "task_no_such_thing")
        assert typo.returncode == 2, typo.stderr
        assert "does not know task" in typo.stderr
        assert state_rows(out_dir(manifest))["a"]["state"] == "needs_attention"
        no_key = cli(
            "resolve", manifest, "a", "--adopt", srv.ledger[0].task_id, env=cli_env(keys={})
        )
        assert no_key.returncode == 2 and "KIE_API_KEY" in no_key.stderr
        ok = cli("resolve", manifest, "a", "--adopt", srv.ledger[0].task_id)
        assert ok.returncode == 0, ok.stderr
        assert cli("run", manifest).returncode == 0
        assert len(srv.ledger) == 1


def test_a_job_stuck_downloading_can_be_abandoned(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a", "b"])
        )
        crash = cli("run", manifest, env=cli_env(MOTION_PIPELINE_CRASH_AT="mid-download"))
        assert crash.returncode == -9
        stuck = [i for i, r in state_rows(out_dir(manifest)).items() if r["state"] == "downloading"]
        assert stuck
        proc = cli("resolve", manifest, stuck[0], "--abandon")
        assert proc.returncode == 0, proc.stderr
        assert "given up" in proc.stdout
        again = cli("run", manifest)
        assert again.returncode == 1  # a job failed (abandoned), the rest finished
    rows = state_rows(out_dir(manifest))
    assert rows[stuck[0]]["state"] == "failed" and rows[stuck[0]]["fail_kind"] == "abandoned"
    assert {r["state"] for i, r in rows.items() if i != stuck[0]} == {"done"}
    assert len(srv.ledger) == 2


def test_resubmit_refuses_a_job_that_is_still_collecting(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a"])
        )
        assert (
            cli("run", manifest, env=cli_env(MOTION_PIPELINE_CRASH_AT="after-task-id")).returncode
            == -9
        )
        proc = cli("resolve", manifest, "a", "--resubmit")
        assert proc.returncode == 2 and "running" in proc.stderr
