"""The runner end to end, per protocol, against the sandbox over loopback: ``run`` as a subprocess.

Checks the output contract (design.md §2): videos, metadata.jsonl, ``status --json``; one create
per job in the sandbox ledger; re-runs that send nothing; edited jobs; same-key twins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from batchkit import (
    STATES,
    Media,
    cli,
    creates,
    integrity,
    job_entries,
    ledger_tasks,
    make_media,
    metadata,
    out_dir,
    probe_video,
    provider_block,
    sandbox,
    state_rows,
    status_json,
    write_manifest,
)
from mediagen import make_image, make_video

CONTRACT_FIELDS = {
    "file_name",
    "job_id",
    "job_key",
    "source_image",
    "driving_video",
    "source_image_sha256",
    "driving_video_sha256",
    "trim",
    "settings",
    "provider",
    "model",
    "task_id",
    "output_sha256",
    "duration",
    "width",
    "height",
}
LATENCY = {"latency": {"polls": 1}}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def edit_manifest(path: Path, **prompts: str) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for job in doc["jobs"]:
        if job["id"] in prompts:
            job["prompt"] = prompts[job["id"]]
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling", "sandbox"])
def test_run_end_to_end(kind: str, media: Media, tmp_path: Path) -> None:
    ids = ["alpha", "beta", "gamma"]
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, _log):
        # The embedded sandbox starts its own server inside the run; ours then sees nothing.
        used = None if kind == "sandbox" else srv
        manifest = write_manifest(
            tmp_path / "m", provider_block(kind, used), job_entries(kind, used, media, ids)
        )
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stderr
        if kind != "sandbox":
            assert creates(srv) == dict.fromkeys(ids, 1)
        ledger = ledger_tasks(srv)

    output = out_dir(manifest)
    for job_id in ids:
        stream = probe_video(output / "videos" / f"{job_id}.mp4")
        assert stream["codec_name"] == "h264"
        assert stream["format_duration"] == pytest.approx(3.5, abs=0.3)

    records = metadata(output)
    assert sorted(r["job_id"] for r in records) == ids
    rows = state_rows(output)
    for record in records:
        job_id = record["job_id"]
        assert set(record) >= CONTRACT_FIELDS, CONTRACT_FIELDS - set(record)
        assert "video" not in record and "image" not in record
        assert record["file_name"] == f"videos/{job_id}.mp4"
        assert record["provider"] == kind
        assert record["settings"]["prompt"] == f"job {job_id}"
        assert record["task_id"] == rows[job_id]["task_id"]
        assert record["job_key"] == rows[job_id]["key"]
        assert (record["width"], record["height"]) == (
            probe_video(output / record["file_name"])["width"],
            probe_video(output / record["file_name"])["height"],
        )
        if kind != "sandbox":
            assert ledger[job_id] == [record["task_id"]]
    assert len({r["task_id"] for r in records}) == len(ids)

    for target in (manifest, output):
        doc = status_json(target)
        assert set(doc) >= {"counts", "jobs"}
        assert set(doc["counts"]) <= set(STATES)
        assert doc["counts"]["done"] == len(ids)
        assert sorted(j["id"] for j in doc["jobs"]) == ids
        for job in doc["jobs"]:
            assert {"id", "state", "task_id", "error", "output"} <= set(job)
            assert job["state"] == "done" and job["error"] is None
            assert job["output"] == f"videos/{job['id']}.mp4"
            assert job["task_id"] == rows[job["id"]]["task_id"]
    assert integrity(output) == "ok"


def test_rerun_of_a_finished_batch_sends_nothing(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a", "b"])
        )
        assert cli("run", manifest).returncode == 0
        before = log.snapshot()
        again = cli("run", manifest)
        assert again.returncode == 0, again.stderr
        assert log.snapshot() == before  # not one request: no create, poll, upload or probe
    assert "done 2" in again.stdout


def test_rerun_with_url_inputs_makes_no_request_at_all(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kling", srv), job_entries("kling", srv, media, ["a"])
        )
        assert cli("run", manifest).returncode == 0
        seen = len(log)
        assert cli("run", manifest).returncode == 0
        assert log.snapshot()[seen:] == []


def test_changed_paid_job_is_refused_until_replaced(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv),
            job_entries("kie", srv, media, ["a", "b", "c"]),
        )
        assert cli("run", manifest).returncode == 0
        output = out_dir(manifest)
        old_task = state_rows(output)["c"]["task_id"]
        old_video = (output / "videos" / "c.mp4").read_bytes()
        edit_manifest(manifest, c="job c, slower")
        seen = len(log)

        refused = cli("run", manifest)
        assert refused.returncode == 2, refused.stderr
        assert "job c" in refused.stderr and "--replace c" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert len(log) == seen  # refused before any request
        assert state_rows(output)["c"]["task_id"] == old_task

        replaced = cli("run", manifest, "--replace", "c")
        assert replaced.returncode == 0, replaced.stderr
        assert creates(srv) == {"a": 1, "b": 1, "c": 1, "c, slower": 1}  # only c ran again
    rows = state_rows(output)
    assert rows["c"]["state"] == "done" and rows["c"]["task_id"] != old_task
    record = {r["job_id"]: r for r in metadata(output)}["c"]
    assert record["settings"]["prompt"] == "job c, slower"
    assert record["task_id"] == rows["c"]["task_id"]
    # The old paid result is kept aside, not silently lost, unless it is byte-identical.
    kept = [p.read_bytes() for p in (output / "videos").rglob("*.mp4") if p.name != "c.mp4"]
    assert old_video in kept or (output / "videos" / "c.mp4").read_bytes() == old_video


def test_unpaid_job_edit_runs_only_that_job(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv),
            job_entries("kie", srv, media, ["a", "b", "c"]),
        )
        first = cli("run", manifest, "--max-jobs", "2")
        assert first.returncode == 0, first.stderr
        pending = [i for i, r in state_rows(out_dir(manifest)).items() if r["state"] == "pending"]
        assert len(pending) == 1
        edit_manifest(manifest, **{pending[0]: f"job {pending[0]} edited"})
        second = cli("run", manifest)
        assert second.returncode == 0, second.stderr
        expected = {i: 1 for i in ("a", "b", "c") if i != pending[0]}
        expected[f"{pending[0]} edited"] = 1
        assert creates(srv) == expected


def test_same_key_under_another_id_is_adopted_not_paid_again(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, _log):
        jobs = job_entries("kie", srv, media, ["first"])
        manifest = write_manifest(tmp_path / "m", provider_block("kie", srv), jobs)
        assert cli("run", manifest).returncode == 0
        twin = {**jobs[0], "id": "second"}
        write_manifest(tmp_path / "m", provider_block("kie", srv), [*jobs, twin])
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stderr
        assert len(srv.ledger) == 1
    output = out_dir(manifest)
    rows = state_rows(output)
    assert rows["second"]["state"] == "done"
    assert rows["second"]["task_id"] == rows["first"]["task_id"]
    assert (output / "videos" / "second.mp4").read_bytes() == (
        output / "videos" / "first.mp4"
    ).read_bytes()
    assert sorted(r["job_id"] for r in metadata(output)) == ["first", "second"]


def test_same_key_twice_in_one_run_is_paid_once(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, _log):
        jobs = job_entries("kie", srv, media, ["one"])
        jobs.append({**jobs[0], "id": "two"})
        manifest = write_manifest(tmp_path / "m", provider_block("kie", srv), jobs)
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stderr
        assert len(srv.ledger) == 1  # same generation: never paid for twice in one output dir
    rows = state_rows(out_dir(manifest))
    assert {r["state"] for r in rows.values()} == {"done"}
    assert rows["one"]["task_id"] == rows["two"]["task_id"]


def test_url_input_that_needs_a_trim_is_fetched_prepared_and_uploaded(tmp_path: Path) -> None:
    # A 12 s clip with orientation image (10 s at most): the URL cannot be sent as it is.
    long_clip = make_video(tmp_path / "long.mp4", seconds=12, width=360, height=480, fps=10)
    image = make_image(tmp_path / "char.png", 400, 600)
    with sandbox(tmp_path / "sandbox", LATENCY) as (srv, _log):
        url = srv.file_url(long_clip)
        jobs = [{"id": "a", "image": str(image), "video": url, "prompt": "job a"}]
        manifest = write_manifest(tmp_path / "m", provider_block("kie", srv), jobs)
        plan = cli("plan", manifest)
        assert plan.returncode == 0, plan.stderr
        assert "trim" in plan.stdout
        done = cli("run", manifest)
        assert done.returncode == 0, done.stderr
        (entry,) = srv.ledger
        sent = entry.body["input"]["video_urls"][0]
        assert sent != url and "/tempfile/" in sent  # the prepared copy, uploaded
    output = out_dir(manifest)
    assert float(probe_video(output / "videos" / "a.mp4")["duration"]) <= 10.0
    fetched = list((output / "cache" / "inputs").iterdir())
    assert len(fetched) == 1 and fetched[0].suffix == ".mp4"


def test_url_input_that_needs_a_trim_is_rejected_without_an_upload_api(tmp_path: Path) -> None:
    long_clip = make_video(tmp_path / "long.mp4", seconds=12, width=360, height=480, fps=10)
    with sandbox(tmp_path / "sandbox") as (srv, log):
        jobs = [{"id": "a", "image": srv.file_url(make_image(tmp_path / "c.png", 400, 600)),
                 "video": srv.file_url(long_clip), "prompt": "job a"}]  # fmt: skip
        manifest = write_manifest(tmp_path / "m", provider_block("kling", srv), jobs)
        done = cli("run", manifest)
        assert done.returncode == 2
        assert "needs preparation (trim) and kling has no upload API" in done.stderr
        assert len(srv.ledger) == 0
        assert [p for _m, p in log.snapshot() if not p.startswith("/files/")] == []
