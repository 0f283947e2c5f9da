"""Kling 3.0 on the reseller protocols, and each create body's fields checked per model: an
unknown field is refused with the provider's own validation error, and nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sandbox_helpers import (
    ACE_KEY,
    KIE_KEY,
    KLING_AK,
    KLING_SK,
    ace_client,
    kie_client,
    kling_client,
)

from pipeline.sandbox import SandboxKeys, SandboxServer

KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, kling_access=KLING_AK, kling_secret=KLING_SK)
IMAGE, VIDEO = "http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4"


@pytest.fixture
def srv(tmp_path: Path) -> SandboxServer:
    with SandboxServer(keys=KEYS, data_dir=tmp_path / "sandbox") as server:
        yield server


def kie_body(model: str, **extra: object) -> dict:
    return {"model": model, "input": {"input_urls": [IMAGE], "video_urls": [VIDEO],
                                      "character_orientation": "video", "mode": "720p", **extra}}  # fmt: skip


def test_kie_3_0_takes_background_source_and_2_6_does_not(srv: SandboxServer) -> None:
    with kie_client(srv.base_url) as client:
        v3 = client.post("/api/v1/jobs/createTask",
                         json=kie_body("kling-3.0/motion-control", mode="1080p",
                                       background_source="input_image")).json()  # fmt: skip
        v26 = client.post("/api/v1/jobs/createTask",
                          json=kie_body("kling-2.6/motion-control",
                                        background_source="input_image")).json()  # fmt: skip
        std = client.post("/api/v1/jobs/createTask",
                          json=kie_body("kling-3.0/motion-control", mode="std")).json()  # fmt: skip
    assert v3["code"] == 200 and v3["data"]["taskId"].startswith("task_kling-3.0_")
    assert v26["code"] == 422 and "background_source" in v26["msg"]
    assert std["code"] == 500  # the recorded answer to mode "std" on kling-3.0
    assert [e.task_id for e in srv.ledger] == [v3["data"]["taskId"]]


@pytest.mark.parametrize(
    "body",
    [
        kie_body("kling-2.6/motion-control", keep_original_sound=True),
        {**kie_body("kling-3.0/motion-control"), "webhook": "http://127.0.0.1:9/"},
    ],
)
def test_kie_refuses_unknown_fields(srv: SandboxServer, body: dict) -> None:
    with kie_client(srv.base_url) as client:
        answer = client.post("/api/v1/jobs/createTask", json=body)
    assert (answer.status_code, answer.json()["code"]) == (200, 422)
    assert "is not a supported parameter" in answer.json()["msg"]
    assert len(srv.ledger) == 0


def test_acedata_model_name_and_unknown_fields(srv: SandboxServer) -> None:
    base = {"image_url": IMAGE, "video_url": VIDEO, "character_orientation": "video",
            "mode": "pro", "async": True}  # fmt: skip
    with ace_client(srv.base_url) as client:
        v3 = client.post("/kling/motion", json={**base, "model_name": "kling-v3"})
        bad = client.post("/kling/motion", json={**base, "model_name": "kling-v9"})
        old = client.post("/kling/motion", json={**base, "model": "kling-v3"})
        record = client.post(
            "/kling/tasks", json={"id": v3.json()["task_id"], "action": "retrieve"}
        )
    assert v3.status_code == 200 and record.json()["request"]["model_name"] == "kling-v3"
    for answer, needle in ((bad, "model_name is invalid"), (old, "model is not a parameter")):
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"
        assert needle in answer.json()["error"]["message"]
    assert len(srv.ledger) == 1


def test_kling_v3_and_unknown_fields(srv: SandboxServer) -> None:
    base = {"image_url": IMAGE, "video_url": VIDEO, "character_orientation": "image", "mode": "pro"}
    with kling_client(srv.base_url) as client:
        v3 = client.post("/v1/videos/motion-control", json={**base, "model_name": "kling-v3"})
        extra = client.post("/v1/videos/motion-control", json={**base, "duration": "5"})
    assert v3.json()["code"] == 0 and v3.json()["data"]["task_status"] == "submitted"
    assert (extra.status_code, extra.json()["code"]) == (400, 1201)
    assert "duration is not a parameter" in extra.json()["message"]
    assert [e.body.get("model_name") for e in srv.ledger] == ["kling-v3"]
