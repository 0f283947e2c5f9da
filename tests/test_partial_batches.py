"""Partial batches: --skip-invalid runs the good jobs; the same problem in many matrix cells is
reported once with the count of jobs it affects; --replace takes patterns."""

from __future__ import annotations

from pathlib import Path

import yaml
from batchkit import cli, creates, make_media, out_dir, provider_block, sandbox, state_rows
from mediagen import make_image, make_video


def matrix_manifest(tmp_path: Path, srv: object) -> Path:
    media = tmp_path / "media"
    colors = ["teal", "red", "blue", "green", "orange", "purple"]
    for i, color in enumerate(colors):  # distinct content: distinct generations
        make_image(media / "images" / f"c{i}.png", 400, 600, color=color)
    for i in range(4):
        seconds = 3.5 + i / 10
        make_video(media / "videos" / f"v{i}.mp4", seconds=seconds, width=360, height=480, fps=10)
    make_video(media / "videos" / "zz_short.mp4", seconds=1.5, width=360, height=480, fps=10)
    doc = {
        "version": 1,
        "name": "grid",
        "output_dir": "out",
        "provider": provider_block("kie", srv),  # type: ignore[arg-type]
        "defaults": {"character_orientation": "image"},
        "matrix": {"image": ["media/images/*.png"], "video": ["media/videos/*.mp4"]},
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_one_bad_clip_in_a_matrix_is_one_problem_for_six_jobs(tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = matrix_manifest(tmp_path, srv)
        validate = cli("validate", manifest)
        assert validate.returncode == 2
        lines = [ln for ln in validate.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, validate.stderr
        assert "(6 jobs:" in lines[0] and "and 3 more" in lines[0]
        refused = cli("run", manifest)
        assert refused.returncode == 2 and "--skip-invalid" in refused.stderr
        assert refused.stderr.count("zz_short") == 1 or "6 jobs" in refused.stderr
        assert len(srv.ledger) == 0


def test_skip_invalid_runs_the_good_jobs_and_lists_the_rest(tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = matrix_manifest(tmp_path, srv)
        plan = cli("plan", manifest, "--skip-invalid")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "this run would pay: 24 creates" in plan.stdout
        proc = cli("run", manifest, "--skip-invalid")
        assert proc.returncode == 1, proc.stdout + proc.stderr  # not every job ran
        assert "skipped, inputs rejected" in proc.stderr and "6 jobs" in proc.stderr
        assert len(srv.ledger) == 24
    rows = state_rows(out_dir(manifest))
    failed = {i for i, r in rows.items() if r["state"] == "failed"}
    assert len(failed) == 6 and all("zz_short" in i for i in failed)
    assert all(rows[i]["fail_kind"] == "input" for i in failed)
    assert sum(r["state"] == "done" for r in rows.values()) == 24


def test_replace_star_reruns_every_changed_job(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    with sandbox(tmp_path / "sb") as (srv, _log):
        doc = {
            "version": 1, "name": "b", "output_dir": "out", "provider": provider_block("kie", srv),
            "defaults": {"character_orientation": "image", "prompt": "first"},
            "jobs": [{"id": i, "image": str(media.image), "video": str(media.video),
                      "prompt": f"job {i}"} for i in ("a", "b")] + [
                {"id": "c", "image": str(media.image), "video": str(media.video)}],
        }  # fmt: skip
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(doc))
        assert cli("run", manifest).returncode == 0
        doc["defaults"]["prompt"] = "second"  # changes c only (a and b set their own)
        manifest.write_text(yaml.safe_dump(doc))
        assert cli("run", manifest).returncode == 2
        proc = cli("run", manifest, "--replace", "*")
        assert proc.returncode == 0, proc.stderr
        assert "this run paid: 1 create" in proc.stdout
        assert creates(srv) == {"a": 1, "b": 1, "first": 1, "second": 1}
