"""A full disk loses nothing and says so: a real tmpfs, filled before and during a run.

Checked against the sandbox's ledger, not the state: at most one accepted create per job, every
accepted task id recorded, and the next run with space collects every paid task without paying
again.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    creates,
    finish,
    integrity,
    job_entries,
    ledger_tasks,
    make_media,
    provider_block,
    sandbox,
    start,
    state_rows,
    write_manifest,
)
from diskkit import fill, small_disk
from mediagen import make_video

# Small floors so a 24 MB file system behaves like a nearly full big one.
DISK_ENV = {"MOTION_PIPELINE_MIN_FREE_MB": "2", "MOTION_PIPELINE_RESERVE_MB": "1"}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def manifest_on(
    disk: Path, folder: Path, jobs: list[dict[str, object]], srv: object, **provider: object
) -> Path:
    path = write_manifest(folder, provider_block("kie", srv, **provider), jobs)
    text = path.read_text().replace("output_dir: out", f"output_dir: {disk / 'out'}")
    path.write_text(text)
    return path


def test_nearly_full_disk_refuses_new_creates_and_names_the_disk(
    media: Media, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", 16) as disk, sandbox(tmp_path / "sb") as (srv, _log):
        manifest = manifest_on(
            disk, tmp_path / "m", job_entries("kie", srv, media, ["a", "b"]), srv
        )
        fill(disk, leave=1024 * 1024)  # 1 MB left, under the 2 MB floor
        proc = cli("run", manifest, env=cli_env(**DISK_ENV))
        said = proc.stdout + proc.stderr
        assert proc.returncode == 3, said
        assert "disk nearly full" in said and str(disk) in said
        assert "Traceback" not in said
        assert len(srv.ledger) == 0  # nothing was paid
        assert {r["state"] for r in state_rows(disk / "out").values()} == {"pending"}


def test_disk_filling_mid_run_keeps_every_task_id_and_the_next_run_collects(
    media: Media, tmp_path: Path
) -> None:
    ids = [f"j{i}" for i in range(6)]
    profile = {"latency": {"polls": 10}}  # tasks outlive the moment the disk fills
    with small_disk(tmp_path / "disk", 24) as disk, sandbox(tmp_path / "sb", profile) as (srv, _):
        manifest = manifest_on(
            disk, tmp_path / "m", job_entries("kie", srv, media, ids), srv, concurrency=3
        )
        filled: list[Path] = []

        def fill_after_two_creates() -> None:
            while len(srv.ledger) < 2 and proc.poll() is None:
                srv_event.wait(0.01)
            filled.append(fill(disk))

        srv_event = threading.Event()
        proc = start("run", manifest, env=cli_env(**DISK_ENV))
        filler = threading.Thread(target=fill_after_two_creates)
        filler.start()
        code, out, err = finish(proc)
        filler.join()
        said = out + err
        assert code == 3, said
        assert "disk" in said and str(disk) in said and "Traceback" not in said
        paid = ledger_tasks(srv)
        assert paid and all(len(t) == 1 for t in paid.values())  # never twice
        rows = state_rows(disk / "out")
        for job_id, tasks in paid.items():  # every accepted task id is in the state
            assert rows[job_id]["task_id"] == tasks[0], rows[job_id]
        assert any(rows[j]["state"] != "done" for j in paid)  # the full disk really hit them
        assert integrity(disk / "out") == "ok"

        filled[0].unlink()  # space again: the next run collects, then finishes the batch
        again = cli("run", manifest, env=cli_env(**DISK_ENV))
        assert again.returncode == 0, again.stdout + again.stderr
        assert creates(srv) == dict.fromkeys(ids, 1)
        rows = state_rows(disk / "out")
        assert {r["state"] for r in rows.values()} == {"done"}
        for job_id, tasks in ledger_tasks(srv).items():
            assert rows[job_id]["task_id"] == tasks[0]


def test_disk_full_while_preparing_leaves_jobs_pending_not_failed(tmp_path: Path) -> None:
    image = make_media(tmp_path / "media").image
    long_clip = make_video(  # ~3.5 MB: its trimmed copy cannot fit in what is left
        tmp_path / "media" / "long.mp4", seconds=14, width=360, height=480, fps=10,
        extra=["-b:v", "2M"],
    )  # fmt: skip
    with small_disk(tmp_path / "disk", 16) as disk, sandbox(tmp_path / "sb") as (srv, _log):
        jobs = [{"id": "cut", "image": str(image), "video": str(long_clip), "prompt": "job cut"}]
        manifest = manifest_on(disk, tmp_path / "m", jobs, srv)
        fill(disk, leave=512 * 1024)  # room for the state, not for the prepared clip
        env = cli_env(MOTION_PIPELINE_MIN_FREE_MB="0", MOTION_PIPELINE_RESERVE_MB="0")
        proc = cli("run", manifest, env=env)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 3, said
        assert "disk full while preparing" in said and "Traceback" not in said
        # Preparation happens while planning, before the state is touched: nothing was sent,
        # and the job is not failed (there is no state yet, or it is pending there).
        rows = state_rows(disk / "out") if (disk / "out" / "state.sqlite").exists() else {}
        assert rows.get("cut", {"state": "pending"})["state"] == "pending"
        assert len(srv.ledger) == 0
