"""Edits after paying never abandon a paid task: a renamed or replaced job's task is still
collected, into videos/replaced/ with its metadata beside it. Checked against the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    creates,
    job_entries,
    make_media,
    metadata,
    out_dir,
    provider_block,
    sandbox,
    state_rows,
    write_manifest,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def paid_then_killed(tmp_path: Path, srv: Any, media: Media) -> Path:
    """Job ``a`` has a task id and is running when the run dies (SIGKILL after the commit)."""
    manifest = write_manifest(
        tmp_path / "m",
        provider_block("kie", srv, concurrency=1),
        job_entries("kie", srv, media, ["a"]),
    )
    proc = cli("run", manifest, env=cli_env(MOTION_PIPELINE_CRASH_AT="after-task-id"))
    assert proc.returncode == -9, proc.stderr
    row = state_rows(out_dir(manifest))["a"]
    assert row["state"] == "running" and row["task_id"]
    return manifest


def edit(manifest: Path, **changes: Any) -> None:
    import yaml

    doc = yaml.safe_load(manifest.read_text())
    doc["jobs"][0].update(changes)
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def sidecar(video: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(video.with_suffix(".json").read_text())
    return doc


def test_renamed_job_leaves_its_paid_task_collected(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = paid_then_killed(tmp_path, srv, media)
        old_task = state_rows(out_dir(manifest))["a"]["task_id"]
        edit(manifest, id="a2", prompt="job a2")  # what the refusal message advises
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert creates(srv) == {"a": 1, "a2": 1}
    out = out_dir(manifest)
    rows = state_rows(out)
    assert rows["a"]["state"] == "done" and rows["a"]["task_id"] == old_task
    kept = out / rows["a"]["output"]
    assert kept.parent == out / "videos" / "replaced" and kept.is_file()
    assert sidecar(kept)["task_id"] == old_task and sidecar(kept)["file_name"] == kept.name
    assert [r["job_id"] for r in metadata(out)] == ["a2"]  # the dataset is what the manifest says


def test_replace_of_a_running_job_collects_the_old_task_and_pays_once_more(
    media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = paid_then_killed(tmp_path, srv, media)
        old_task = state_rows(out_dir(manifest))["a"]["task_id"]
        edit(manifest, prompt="job a, again")
        refused = cli("run", manifest)
        assert refused.returncode == 2 and "--replace a" in refused.stderr
        proc = cli("run", manifest, "--replace", "a")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert creates(srv) == {"a": 1, "a, again": 1}  # one create per generation
    out = out_dir(manifest)
    rows = state_rows(out)
    assert rows["a~1"]["task_id"] == old_task and rows["a~1"]["state"] == "done"
    assert rows["a"]["task_id"] != old_task and rows["a"]["state"] == "done"
    assert sidecar(out / rows["a~1"]["output"])["task_id"] == old_task


def test_replace_of_a_done_job_keeps_the_old_video_with_its_metadata(
    media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a"])
        )
        assert cli("run", manifest).returncode == 0
        out = out_dir(manifest)
        first = state_rows(out)["a"]
        old_bytes = (out / "videos" / "a.mp4").read_bytes()
        edit(manifest, prompt="job a, again")
        proc = cli("run", manifest, "--replace", "a")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = state_rows(out)
    kept = out / rows["a~1"]["output"]
    assert kept.read_bytes() == old_bytes
    assert sidecar(kept)["task_id"] == first["task_id"]
    assert [r["task_id"] for r in metadata(out)] == [rows["a"]["task_id"]]
