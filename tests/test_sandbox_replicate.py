"""Replicate's protocol in the sandbox over real loopback sockets: the files API, predictions
(starting -> processing -> succeeded, one URL of output), validation, cancel and retention."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import pytest
from test_sandbox_helpers import (
    REPLICATE_TOKEN,
    REPLICATE_V26,
    Media,
    make_media,
    probe_bytes,
    replicate_client,
    replicate_wait,
    until,
)

from pipeline.sandbox import FaultProfile, Latency, SandboxKeys, SandboxServer

KEYS = SandboxKeys(replicate=REPLICATE_TOKEN)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def srv(tmp_path: Path) -> SandboxServer:
    with SandboxServer(keys=KEYS, data_dir=tmp_path / "sandbox") as server:
        yield server


def upload(client: httpx.Client, path: Path, content_type: str) -> dict:
    """What replicate-python's files.create sends: multipart, the file in field ``content``."""
    answer = client.post("/v1/files", files={"content": (path.name, path.read_bytes(), content_type)},
                         data={"metadata": '{"job": "1"}'})  # fmt: skip
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_files_then_a_prediction_to_its_output(tmp_path: Path, media: Media) -> None:
    profile = FaultProfile(latency=Latency(polls=2))
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        replicate_client(srv.base_url) as client,
    ):
        image = upload(client, media.image, "image/png")
        assert set(image) == {"id", "name", "content_type", "size", "etag", "checksums",
                              "metadata", "created_at", "expires_at", "urls"}  # fmt: skip
        assert image["size"] == media.image.stat().st_size and image["metadata"] == {"job": "1"}
        assert client.get(image["urls"]["get"]).json()["id"] == image["id"]
        assert client.get(f"/v1/files/{image['id']}/download").content == media.image.read_bytes()
        video = upload(client, media.video, "video/mp4")
        body = {"input": {"image": image["urls"]["get"], "video": video["urls"]["get"],
                          "mode": "pro", "prompt": "job 1"}}  # fmt: skip
        created = client.post(REPLICATE_V26, json=body)
        assert created.status_code == 201
        first = created.json()
        assert first["status"] == "starting" and first["output"] is None
        assert first["model"] == "kwaivgi/kling-v2.6-motion-control" and first["version"]
        assert first["urls"]["get"] == f"{srv.base_url}/v1/predictions/{first['id']}"
        assert ISO.match(first["created_at"]) and first["completed_at"] is None
        seen: list[str] = []

        def get() -> dict:
            doc = client.get(first["urls"]["get"]).json()
            seen.append(doc["status"])
            return dict(doc)

        done = until(get, lambda d: d["status"] in ("succeeded", "failed", "canceled"))
        assert seen[:2] == ["starting", "processing"] and done["status"] == "succeeded", done
        assert isinstance(done["output"], str) and done["error"] is None
        assert ISO.match(done["completed_at"]) and done["metrics"]["predict_time"] >= 0
        assert done["input"] == body["input"] and done["data_removed"] is False
        output = httpx.get(done["output"]).content
    info = probe_bytes(output, tmp_path)
    assert info.height == 480 and info.has_audio  # mode pro; keep_original_sound defaults true
    assert [(e.protocol, e.task_id, e.body) for e in srv.ledger] == [
        ("replicate", first["id"], body)
    ]
    assert srv.ledger.bills() == {first["id"]: pytest.approx(3.5, abs=0.1)}


def test_prefer_wait_answers_the_finished_prediction(srv: SandboxServer, media: Media) -> None:
    image = "data:image/png;base64," + base64.b64encode(media.image.read_bytes()).decode()
    body = {"input": {"image": image, "video": srv.file_url(media.video),
                      "keep_original_sound": False}}  # fmt: skip
    with replicate_client(srv.base_url) as client:
        created = client.post(REPLICATE_V26, json=body, headers={"Prefer": "wait=30"})
    assert created.status_code == 201 and created.json()["status"] == "succeeded", created.json()
    assert created.json()["output"].startswith(srv.base_url)


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"image": None}, "input.image", "required"),
        ({"keep_original_sound": "yes"}, "input.keep_original_sound", "type"),
        ({"mode": "720p"}, "input.mode", "enum"),
        ({"character_orientation": "both"}, "input.character_orientation", "enum"),
        ({"prompt": "p" * 2501}, "input.prompt", "too_long"),
        ({"background_source": "input_image"}, "input.background_source", "extra"),
        ({"video": "file:///etc/passwd"}, "input.video", "type"),
    ],
)
def test_validation(srv: SandboxServer, change: dict, field: str, kind: str) -> None:
    inputs = {"image": "http://127.0.0.1:9/i.png", "video": "http://127.0.0.1:9/v.mp4", **change}
    with replicate_client(srv.base_url) as client:
        answer = client.post(REPLICATE_V26, json={"input": {k: v for k, v in inputs.items()
                                                             if v is not None}})  # fmt: skip
    assert answer.status_code == 422
    doc = answer.json()
    assert doc["title"] == "Input validation failed" and doc["status"] == 422
    assert [(f["field"], f["type"]) for f in doc["invalid_fields"]] == [(field, kind)]
    assert field in doc["detail"]
    assert len(srv.ledger) == 0


def test_webhook_fields_are_checked(srv: SandboxServer) -> None:
    inputs = {"image": "http://127.0.0.1:9/i.png", "video": "http://127.0.0.1:9/v.mp4"}
    with replicate_client(srv.base_url) as client:
        hook = client.post(REPLICATE_V26, json={"input": inputs, "webhook": "ftp://x"})
        events = client.post(REPLICATE_V26, json={"input": inputs, "webhook": "http://127.0.0.1:9/",
                                                  "webhook_events_filter": ["done"]})  # fmt: skip
        no_input = client.post(REPLICATE_V26, json={"image": "x"})
    assert [a.status_code for a in (hook, events, no_input)] == [422, 422, 422]
    assert len(srv.ledger) == 0


def test_auth_credit_and_unknown_things(tmp_path: Path, srv: SandboxServer) -> None:
    with httpx.Client(base_url=srv.base_url) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Key x"}):
            for method, path in (("POST", REPLICATE_V26), ("GET", "/v1/predictions/abc"),
                                 ("POST", "/v1/files")):  # fmt: skip
                answer = anon.request(method, path, headers=headers)
                assert answer.status_code == 401, (headers, path)
                assert answer.json()["title"] == "Unauthenticated"
        token_scheme = {"Authorization": f"Token {REPLICATE_TOKEN}"}  # replicate-python's scheme
        assert anon.get("/v1/predictions/abc", headers=token_scheme).status_code == 404
        other = anon.post("/v1/models/kwaivgi/kling-v9/predictions", headers=token_scheme, json={})
        assert other.status_code == 404
    with (
        SandboxServer(keys=KEYS, faults=FaultProfile(credits=0), data_dir=tmp_path / "b") as poor,
        replicate_client(poor.base_url) as client,
    ):
        broke = client.post(REPLICATE_V26, json={"input": {}})
    assert broke.status_code == 402 and broke.json()["title"] == "Insufficient credit"


def test_cancel(tmp_path: Path) -> None:
    profile = FaultProfile.from_dict({"faults": [{"kind": "never_finish", "times": 1}]})
    inputs = {"image": "http://127.0.0.1:9/i.png", "video": "http://127.0.0.1:9/v.mp4"}
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        replicate_client(srv.base_url) as client,
    ):
        first = client.post(REPLICATE_V26, json={"input": inputs}).json()
        assert client.get(first["urls"]["get"]).json()["status"] == "starting"
        canceled = client.post(first["urls"]["cancel"])
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert client.get(first["urls"]["get"]).json()["status"] == "canceled"
        second = client.post(REPLICATE_V26, json={"input": inputs}).json()
        failed = replicate_wait(client, second)  # unreachable inputs: it fails
        assert failed["status"] == "failed" and "could not be fetched" in failed["error"]
        assert client.post(second["urls"]["cancel"]).json()["status"] == "failed"


def test_retention_deletes_data_and_output_even_across_a_restart(
    tmp_path: Path, media: Media
) -> None:
    profile = FaultProfile(expire_after=1.0)
    data = tmp_path / "sb"
    body = {"input": {"image": "", "video": ""}}
    with SandboxServer(keys=KEYS, faults=profile, data_dir=data) as srv:
        body["input"] = {"image": srv.file_url(media.image), "video": srv.file_url(media.video)}
        with replicate_client(srv.base_url) as client:
            done = replicate_wait(client, client.post(REPLICATE_V26, json=body).json())
            assert done["status"] == "succeeded" and httpx.get(done["output"]).status_code == 200
            gone = until(lambda: client.get(done["urls"]["get"]).json(),
                         lambda d: d["data_removed"])  # fmt: skip
            assert gone["status"] == "succeeded" and gone["output"] is None
            assert gone["input"] == {} and gone["completed_at"] == done["completed_at"]
            assert httpx.get(done["output"]).status_code == 404
    # A resume after the window: a new sandbox on the same data directory keeps the end time.
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=data) as again,
        replicate_client(again.base_url) as client,
    ):
        later = until(
            lambda: client.get(f"/v1/predictions/{done['id']}").json(),
            lambda d: d["status"] != "starting",
        )
    assert later["data_removed"] is True and later["output"] is None
    assert later["completed_at"] == done["completed_at"]
