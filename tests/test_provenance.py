"""Provenance that is true: metadata.jsonl, the lock file and report.html say what was sent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from batchkit import cli, metadata, out_dir, provider_block, sandbox, write_manifest
from mediagen import make_image, make_video


def test_metadata_lock_and_report_record_what_the_provider_received(tmp_path: Path) -> None:
    media = tmp_path / "media"
    image = make_image(media / "char.png", 400, 600)
    long_clip = make_video(media / "long.mp4", seconds=14, width=360, height=480, fps=10)
    plain = make_video(media / "plain.mp4", seconds=3.5, width=360, height=480, fps=10)
    jobs = [
        {"id": "cut", "image": str(image), "video": str(long_clip), "prompt": "job cut"},
        {"id": "whole", "image": str(image), "video": str(plain), "prompt": "job whole"},
    ]
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(tmp_path / "m", provider_block("kie", srv), jobs)
        proc = cli("run", manifest, "--report")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    output = out_dir(manifest)
    rows = {r["job_id"]: r for r in metadata(output)}
    cut, whole = rows["cut"], rows["whole"]
    assert cut["trim"] == {"start": 0.0, "end": 9.75}  # the window really cut
    assert cut["settings"]["trim"] == {"start": 0, "end": None}  # what the manifest asked
    prepared = list((output / "cache" / "prepared").glob("*.mp4"))
    assert len(prepared) == 1
    data = prepared[0].read_bytes()
    assert cut["prepared_video_sha256"] == hashlib.sha256(data).hexdigest()
    assert cut["prepared_video_size"] == len(data)
    assert 9.0 < cut["prepared_video_duration"] <= 10.0  # measured: what is billed
    assert cut["billed_seconds"] == round(cut["prepared_video_duration"], 3)
    assert cut["preparation"]["video"]["trim"] == {"start": 0.0, "end": 9.75}
    assert cut["driving_video_sha256"] == hashlib.sha256(long_clip.read_bytes()).hexdigest()
    assert whole["trim"] is None
    assert whole["prepared_video_sha256"] == whole["driving_video_sha256"]  # sent as it is
    assert whole["prepared_image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()

    lock = json.loads((output / "motion-pipeline.lock.json").read_text())
    assert lock["manifest"]["name"] == "batch" and lock["tool"]["name"] == "motion-pipeline"
    assert lock["provider"]["base_url"] == srv.base_url
    assert {j["id"]: j["key"] for j in lock["jobs"]} == {
        r["job_id"]: r["job_key"] for r in rows.values()
    }
    assert lock["jobs"][0]["preparation"]["video"]["trim"] == {"start": 0.0, "end": 9.75}

    report = (output / "report.html").read_text()
    assert "0–9.75 s" in report  # the card says what was cut, not "trim none"
