"""Instant mode: no fetch, no probe, no render, no latency; every task succeeds on its first
poll with one canned clip that ffprobe accepts, served from memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_sandbox_helpers import (
    ACE_KEY,
    FAL_KEY,
    FAL_V26,
    KIE_KEY,
    REPLICATE_TOKEN,
    REPLICATE_V26,
    ace_client,
    fal_client,
    kie_client,
    kie_create,
    kie_result_url,
    probe_bytes,
    replicate_client,
)

from pipeline.sandbox import FaultProfile, Latency, SandboxKeys, SandboxServer

KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, fal=FAL_KEY, replicate=REPLICATE_TOKEN)
NOWHERE = ("http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4")  # never fetched


@pytest.fixture
def srv(tmp_path: Path) -> SandboxServer:
    slow = FaultProfile(latency=Latency(polls=5, seconds=60))  # ignored in instant mode
    with SandboxServer(keys=KEYS, faults=slow, data_dir=tmp_path / "sb", instant=True) as server:
        yield server


def test_every_protocol_succeeds_on_its_first_poll(srv: SandboxServer, tmp_path: Path) -> None:
    with kie_client(srv.base_url) as kie:
        record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": kie_create(kie, *NOWHERE)})
        kie_video = kie.get(kie_result_url(record.json()["data"])).content
    with ace_client(srv.base_url) as ace:  # the synchronous mode answers at once
        body = {"image_url": NOWHERE[0], "video_url": NOWHERE[1],
                "character_orientation": "video", "mode": "std"}  # fmt: skip
        ace_video = ace.get(ace.post("/kling/motion", json=body).json()["video_url"]).content
    with fal_client(srv.base_url) as fal:
        body = {"image_url": NOWHERE[0], "video_url": NOWHERE[1], "character_orientation": "image"}
        sub = fal.post(FAL_V26, json=body).json()
        status = fal.get(sub["status_url"])
        fal_video = fal.get(fal.get(sub["response_url"]).json()["video"]["url"]).content
    with replicate_client(srv.base_url) as rep:
        created = rep.post(
            REPLICATE_V26, json={"input": {"image": NOWHERE[0], "video": NOWHERE[1]}}
        )
        prediction = rep.get(created.json()["urls"]["get"]).json()
        rep_video = rep.get(prediction["output"]).content
    assert record.json()["data"]["state"] == "success"
    assert (status.status_code, status.json()["status"]) == (200, "COMPLETED")
    assert prediction["status"] == "succeeded"
    assert kie_video == ace_video == fal_video == rep_video  # one canned clip
    info = probe_bytes(kie_video, tmp_path)
    assert info.video_codec == "h264" and info.duration == pytest.approx(1.0, abs=0.1)
    assert srv.render_count == 0
    assert len(srv.ledger) == 4
    bills = srv.ledger.bills()  # nothing measured: each task is billed the clip's length
    assert len(bills) == 4 and all(b == pytest.approx(1.0, abs=0.1) for b in bills.values())


def test_results_are_served_from_memory(srv: SandboxServer) -> None:
    with kie_client(srv.base_url) as kie:
        task_id = kie_create(kie, *NOWHERE)
        canned = srv.data_dir / "instant" / "instant.mp4"
        expected = canned.read_bytes()
        canned.unlink()  # a download that read the disk would fail now
        record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
        assert kie.get(kie_result_url(record["data"])).content == expected


def test_the_switch_in_a_profile_and_its_override(tmp_path: Path) -> None:
    profile = FaultProfile.from_dict({"instant": True})
    assert profile.instant and profile.latency_for("kie") == Latency()
    with pytest.raises(ValueError, match="instant: must be true or false"):
        FaultProfile.from_dict({"instant": "yes"})
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb", instant=False) as srv,
        kie_client(srv.base_url) as kie,
    ):
        task_id = kie_create(kie, *NOWHERE)
        record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()["data"]
    assert record["state"] in ("waiting", "fail")  # the real path: it fetches, and fails
    assert not (tmp_path / "sb" / "instant").exists()


def test_faults_still_apply(tmp_path: Path) -> None:
    profile = FaultProfile.from_dict({"instant": True, "faults": [
        {"kind": "task_fail", "times": 1, "message": "moderated"}]})  # fmt: skip
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        kie_client(srv.base_url) as kie,
    ):
        states = [
            kie.get("/api/v1/jobs/recordInfo", params={"taskId": kie_create(kie, *NOWHERE)}).json()[
                "data"
            ]["state"]
            for _ in range(2)
        ]
    assert states == ["fail", "success"]


def test_the_load_script_runs(tmp_path: Path) -> None:
    script = Path(__file__).with_name("sandbox_load.py")
    done = subprocess.run([sys.executable, str(script), "--jobs", "40", "--concurrency", "4"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "40 jobs at concurrency 4: 120 requests in" in done.stdout
