"""One output directory, one manifest; a lost state is rebuilt, never re-paid; changed results
are noticed and collected again. Everything checked against the sandbox's ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli,
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

IDS = ["a", "b"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def finished_batch(tmp_path: Path, srv: Any, media: Media, **kw: Any) -> Path:
    manifest = write_manifest(
        tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, IDS), **kw
    )
    proc = cli("run", manifest)
    assert proc.returncode == 0, proc.stderr
    assert creates(srv) == dict.fromkeys(IDS, 1)
    return manifest


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_lost_state_beside_results_is_rebuilt_and_nothing_is_paid_again(
    damage: str, media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = finished_batch(tmp_path, srv, media)
        out = out_dir(manifest)
        tasks = {i: r["task_id"] for i, r in state_rows(out).items()}
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out / 'state.sqlite'}{suffix}").unlink(missing_ok=True)
        if damage == "emptied":
            (out / "state.sqlite").write_bytes(b"")
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "rebuilt 2 job(s) from metadata.jsonl" in proc.stderr
        assert creates(srv) == dict.fromkeys(IDS, 1)  # not one create more
    rows = state_rows(out)
    assert {i: (r["state"], r["task_id"]) for i, r in rows.items()} == {
        i: ("done", t) for i, t in tasks.items()
    }
    assert sorted(r["job_id"] for r in metadata(out)) == IDS


def test_videos_without_state_or_metadata_are_refused(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = finished_batch(tmp_path, srv, media)
        out = out_dir(manifest)
        for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "metadata.jsonl"):
            (out / name).unlink(missing_ok=True)
        proc = cli("run", manifest)
        assert proc.returncode == 2, proc.stderr
        assert "would pay for them again" in proc.stderr and "Traceback" not in proc.stderr
        assert len(srv.ledger) == 2


def test_foreign_state_file_is_refused(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, IDS)
        )
        out = out_dir(manifest)
        out.mkdir(parents=True)
        (out / "state.sqlite").write_bytes(b"not a database at all" * 50)
        proc = cli("run", manifest)
        assert proc.returncode != 0 and "state" in proc.stderr and "Traceback" not in proc.stderr
        assert len(srv.ledger) == 0


def test_second_manifest_in_the_same_output_dir_is_refused(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = finished_batch(tmp_path, srv, media)
        before = (out_dir(manifest) / "metadata.jsonl").read_bytes()
        other = write_manifest(
            tmp_path / "m2",
            provider_block("kie", srv),
            job_entries("kie", srv, media, ["x"]),
            name="other",
        )
        text = other.read_text().replace("output_dir: out", f"output_dir: {out_dir(manifest)}")
        other.write_text(text)
        proc = cli("run", other)
        assert proc.returncode == 2, proc.stderr
        assert "belongs to manifest 'batch'" in proc.stderr
        assert len(srv.ledger) == 2
        assert (out_dir(manifest) / "metadata.jsonl").read_bytes() == before


@pytest.mark.parametrize("planted", ["metadata.jsonl", "notes.txt", "data/"])
def test_reused_folder_with_files_we_did_not_write_is_refused(
    planted: str, media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, IDS)
        )
        out = out_dir(manifest)
        out.mkdir(parents=True)
        if planted.endswith("/"):
            (out / planted).mkdir()
        else:
            (out / planted).write_text('{"file_name": "mine.mp4", "label": "hand written"}\n')
        proc = cli("run", manifest)
        assert proc.returncode == 2, proc.stderr
        assert "nothing was sent" in proc.stderr
        assert len(srv.ledger) == 0
        if planted == "metadata.jsonl":
            assert "hand written" in (out / planted).read_text()


@pytest.mark.parametrize("damage", ["deleted", "changed"])
def test_deleted_or_changed_result_is_collected_again_without_paying(
    damage: str, media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = finished_batch(tmp_path, srv, media)
        out = out_dir(manifest)
        video = out / "videos" / "a.mp4"
        good = video.read_bytes()
        if damage == "deleted":
            video.unlink()
        else:
            video.write_bytes(good[:-100] + b"\0" * 100)  # same size, other bytes
        status = cli("status", manifest, "--json")
        assert status.returncode == 1  # status sees it before any run does
        problems = {j["id"]: j["output_problem"] for j in json.loads(status.stdout)["jobs"]}
        assert problems == {"a": "missing" if damage == "deleted" else "changed", "b": None}
        assert "collects it again" in cli("status", manifest).stdout
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"its result video is {damage if damage == 'changed' else 'missing'}" in proc.stderr
        assert creates(srv) == dict.fromkeys(IDS, 1)
        assert video.read_bytes() == good
        kept = list((out / "videos" / "replaced").glob("a.changed-*.mp4"))
        assert len(kept) == (1 if damage == "changed" else 0)  # never deleted
        assert state_rows(out)["a"]["state"] == "done"


def test_deleted_result_the_provider_no_longer_serves_needs_attention(
    media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = finished_batch(tmp_path, srv, media)
    out = out_dir(manifest)
    (out / "videos" / "a.mp4").unlink()
    with sandbox(tmp_path / "sb2") as (fresh, _log):  # a provider that forgot the task
        text = manifest.read_text().replace(srv.base_url, fresh.base_url)
        manifest.write_text(text)
        proc = cli("run", manifest)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert len(fresh.ledger) == 0
    rows = state_rows(out)
    assert rows["a"]["state"] == "needs_attention"
    assert rows["b"]["state"] == "done"
    assert json.loads(cli("status", manifest, "--json").stdout)["counts"]["needs_attention"] == 1
