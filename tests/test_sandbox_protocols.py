"""The sandbox over real loopback sockets: each protocol's happy path with real media, auth,
validation and the media rules. Talks raw HTTP with httpx, not through the provider clients."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from test_sandbox_helpers import (
    ACE_KEY,
    KIE_KEY,
    KLING_AK,
    KLING_SK,
    Media,
    ace_client,
    kie_client,
    kie_create,
    kie_result_url,
    kie_wait,
    kling_client,
    make_media,
    probe_bytes,
    until,
)

from pipeline.sandbox import FaultProfile, Latency, SandboxKeys, SandboxServer
from pipeline.sandbox.kling import b64url, mint_jwt

KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, kling_access=KLING_AK, kling_secret=KLING_SK)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def srv(tmp_path: Path) -> SandboxServer:
    with SandboxServer(keys=KEYS, data_dir=tmp_path / "sandbox") as server:
        yield server


# ---------------------------------------------------------------------- Kie


def test_kie_upload_create_poll_download(tmp_path: Path, media: Media) -> None:
    profile = FaultProfile(latency=Latency(polls=2))
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        kie_client(srv.base_url) as client,
    ):
        up = client.post(
            "/api/file-stream-upload",
            files={"file": ("char.png", media.image.read_bytes(), "image/png")},
            data={"uploadPath": "images/user-uploads", "fileName": "job-1-char.png"},
        ).json()
        assert up["success"] is True and up["code"] == 200
        assert up["data"]["downloadUrl"].startswith(srv.base_url + "/")
        assert up["data"]["fileSize"] == media.image.stat().st_size
        b64 = base64.b64encode(media.video.read_bytes()).decode()
        up_video = client.post(
            "/api/file-base64-upload",
            json={"base64Data": f"data:video/mp4;base64,{b64}", "uploadPath": "videos",
                  "fileName": "job-1-drive.mp4"},
        ).json()  # fmt: skip
        assert up_video["data"]["mimeType"] == "video/mp4"
        # What the service fetches is byte for byte what was uploaded.
        assert client.get(up["data"]["downloadUrl"]).content == media.image.read_bytes()

        task_id = kie_create(client, up["data"]["downloadUrl"], up_video["data"]["downloadUrl"])
        states = []

        def record() -> dict:
            doc = client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
            states.append(doc["data"]["state"])
            return doc

        doc = until(record, lambda d: d["data"]["state"] in ("success", "fail"))
        data = doc["data"]
        assert doc["code"] == 200 and data["state"] == "success", data
        assert states[:2] == ["waiting", "queuing"]  # two polls answered "running" first
        assert json.loads(data["param"])["input"]["mode"] == "720p"
        assert data["failCode"] is None and isinstance(data["costTime"], int)
        video = client.get(kie_result_url(data))
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    info = probe_bytes(video.content, tmp_path)
    assert info.format == "mp4" and info.video_codec == "h264" and info.has_audio
    assert info.duration == pytest.approx(3.5, abs=0.15)
    # The character (320x400 scaled to 256x320) stands beside the clip (340x340 -> 320x320).
    assert (info.width, info.height) == (256 + 320, 320)


def test_a_task_s_reported_end_is_when_it_ended_for_its_service(
    tmp_path: Path, media: Media
) -> None:
    # The render takes well under a second; the task is still "generating" until its latency
    # is over. A costTime of the render alone told the poller (which learns from it) that
    # tasks end long before they do, and it polled early twice per task.
    profile = FaultProfile(latency=Latency(seconds=1.5))
    with SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv:
        with kie_client(srv.base_url) as client:
            task_id = kie_create(client, srv.file_url(media.image), srv.file_url(media.video))
            data = kie_wait(client, task_id)
        assert data["costTime"] >= 1500, data
        assert data["completeTime"] - data["createTime"] == data["costTime"]
        body = {"image_url": srv.file_url(media.image), "video_url": srv.file_url(media.video),
                "character_orientation": "video", "mode": "std", "async": True}  # fmt: skip
        with ace_client(srv.base_url) as client:
            ace_id = client.post("/kling/motion", json=body).json()["task_id"]
            record = until(
                lambda: client.post("/kling/tasks", json={"id": ace_id, "action": "retrieve"}),
                lambda r: "response" in r.json(),
            ).json()
        assert record["elapsed"] >= 1.5, record
        assert record["finished_at"] - record["created_at"] == pytest.approx(record["elapsed"])


def test_kie_credit_and_download_url(srv: SandboxServer, media: Media) -> None:
    with kie_client(srv.base_url) as client:
        credit = client.get("/api/v1/chat/credit").json()
        assert credit == {"code": 200, "msg": "success", "data": 1000.0}
        task_id = kie_create(client, srv.file_url(media.image), srv.file_url(media.video))
        url = kie_result_url(kie_wait(client, task_id))
        fresh = client.post("/api/v1/common/download-url", json={"url": url}).json()
        assert fresh["code"] == 200 and fresh["data"] != url
        assert client.get(fresh["data"]).status_code == 200
        foreign = client.post("/api/v1/common/download-url", json={"url": "https://x.test/a.mp4"})
        assert foreign.json()["code"] == 422


def test_kie_url_upload_fetches_loopback(srv: SandboxServer, media: Media) -> None:
    with kie_client(srv.base_url) as client:
        up = client.post(
            "/api/file-url-upload",
            json={"fileUrl": srv.file_url(media.image), "uploadPath": "images"},
        ).json()
        assert up["success"] is True
        assert client.get(up["data"]["downloadUrl"]).content == media.image.read_bytes()


def test_kie_auth_failures_are_in_http_200_bodies(srv: SandboxServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"apikey": KIE_KEY}):
        with httpx.Client(base_url=srv.base_url, headers=headers) as client:
            create = client.post("/api/v1/jobs/createTask", json={"model": "x"})
            assert create.status_code == 200
            assert create.json()["code"] == 401
            query = client.get("/api/v1/jobs/recordInfo", params={"taskId": "t"})
            assert (query.status_code, query.json()["code"]) == (200, 401)
            upload = client.post("/api/file-stream-upload", files={"file": ("a.png", b"x")})
            assert upload.json()["code"] == 401 and upload.json()["success"] is False
    assert len(srv.ledger) == 0


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"mode": "std"}, 500, "mode is not within the range of allowed options"),
        ({"mode": "pro"}, 500, "mode is not within the range of allowed options"),
        ({"mode": None}, 422, "mode is required"),
        ({"character_orientation": "both"}, 500, "character_orientation is not within"),
        ({"video_urls": None}, 422, "video_urls is required"),
        ({"input_urls": ["http://a/1.png", "http://a/2.png"]}, 422, "exactly one URL"),
        ({"input_urls": "http://a/1.png"}, 422, "exactly one URL"),
        ({"prompt": "x" * 2501}, 422, "prompt length 2501"),
    ],
)
def test_kie_validation(srv: SandboxServer, change: dict, code: int, message: str) -> None:
    body = {"model": "kling-2.6/motion-control",
            "input": {"input_urls": ["http://127.0.0.1/i.png"], "video_urls": ["http://127.0.0.1/v.mp4"],
                      "character_orientation": "video", "mode": "720p"}}  # fmt: skip
    for key, value in change.items():
        if value is None:
            del body["input"][key]
        else:
            body["input"][key] = value
    with kie_client(srv.base_url) as client:
        answer = client.post("/api/v1/jobs/createTask", json=body)
    assert answer.status_code == 200
    assert answer.json()["code"] == code
    assert message in answer.json()["msg"]
    assert len(srv.ledger) == 0


def test_kie_unknown_route_and_task(srv: SandboxServer) -> None:
    with kie_client(srv.base_url) as client:
        assert client.get("/api/v1/no/such/route").status_code == 404
        missing = client.get("/api/v1/jobs/recordInfo", params={"taskId": "task_nope"})
        assert (missing.status_code, missing.json()["code"]) == (200, 404)
        garbage = client.post("/api/v1/jobs/createTask", content=b"{not json")
        assert garbage.json()["code"] == 422


def test_kie_3_0_defaults_and_background_source(srv: SandboxServer) -> None:
    body = {"model": "kling-3.0/motion-control",
            "input": {"input_urls": ["http://127.0.0.1:1/i.png"],
                      "video_urls": ["http://127.0.0.1:1/v.mp4"], "background_source": "sky"}}  # fmt: skip
    with kie_client(srv.base_url) as client:
        assert client.post("/api/v1/jobs/createTask", json=body).json()["code"] == 500
        body["input"]["background_source"] = "input_image"
        assert client.post("/api/v1/jobs/createTask", json=body).json()["code"] == 200


# ---------------------------------------------------------------------- AceData


def test_acedata_async_retrieve_and_batch(srv: SandboxServer, media: Media, tmp_path: Path) -> None:
    body = {"image_url": srv.file_url(media.image), "video_url": srv.file_url(media.video),
            "character_orientation": "video", "mode": "pro", "keep_original_sound": "no",
            "async": True}  # fmt: skip
    with ace_client(srv.base_url) as client:
        first = client.post("/kling/motion", json=body)
        second = client.post("/kling/motion", json=body)
        assert first.status_code == 200 and set(first.json()) == {"task_id"}
        ids = [first.json()["task_id"], second.json()["task_id"], "not-a-task"]
        batch = until(
            lambda: client.post("/kling/tasks", json={"ids": ids, "action": "retrieve_batch"}),
            lambda r: all("response" in item for item in r.json()["items"]),
        ).json()
        assert batch["count"] == 2 and [i["id"] for i in batch["items"]] == ids[:2]
        single = client.post("/kling/tasks", json={"id": ids[0], "action": "retrieve"}).json()
        assert single["request"] == body and single["type"] == "motion"
        assert isinstance(single["created_at"], float) and "finished_at" in single
        response = single["response"]
        assert response["success"] is True and response["state"] == "succeed"
        assert float(response["duration"]) == pytest.approx(3.5, abs=0.15)
        video = client.get(response["video_url"])
    info = probe_bytes(video.content, tmp_path)
    assert not info.has_audio  # keep_original_sound "no"
    assert info.height == 480  # pro renders taller than std
    assert srv.render_count == 1  # the two identical tasks shared one render


def test_acedata_sync_waits_for_the_result(srv: SandboxServer, media: Media) -> None:
    body = {"image_url": srv.file_url(media.image), "video_url": srv.file_url(media.video),
            "character_orientation": "image", "mode": "std"}  # fmt: skip
    with ace_client(srv.base_url) as client:
        doc = client.post("/kling/motion", json=body).json()
        assert doc["success"] is True and doc["state"] == "succeed"
        assert isinstance(doc["duration"], str) and doc["video_id"].isdigit()
        assert client.get(doc["video_url"]).status_code == 200


def test_acedata_auth_errors(srv: SandboxServer) -> None:
    with httpx.Client(base_url=srv.base_url) as client:
        missing = client.post("/kling/motion", json={})
        wrong = client.post("/kling/motion", json={}, headers={"authorization": "Bearer nope"})
        tasks = client.post("/kling/tasks", json={"id": "x", "action": "retrieve"},
                            headers={"authorization": "Bearer nope"})  # fmt: skip
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_token"
    for answer in (wrong, tasks):
        doc = answer.json()
        assert answer.status_code == 401 and doc["success"] is False
        assert doc["error"]["code"] == "invalid_token" and doc["trace_id"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"keep_original_sound": True}, "keep_original_sound"),
        ({"mode": "720p"}, "mode"),
        ({"mode": None}, "mode"),
        ({"character_orientation": None}, "character_orientation"),
        ({"video_url": None}, "video_url"),
        ({"prompt": "p" * 2501}, "prompt"),
        ({"async": "yes"}, "async"),
    ],
)
def test_acedata_validation(srv: SandboxServer, change: dict, needle: str) -> None:
    body = {"image_url": "http://127.0.0.1/i.png", "video_url": "http://127.0.0.1/v.mp4",
            "character_orientation": "video", "mode": "std", "async": True}  # fmt: skip
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with ace_client(srv.base_url) as client:
        answer = client.post("/kling/motion", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_request"
    assert needle in answer.json()["error"]["message"]
    assert len(srv.ledger) == 0


def test_acedata_unknown_task_and_route(srv: SandboxServer) -> None:
    with ace_client(srv.base_url) as client:
        assert (
            client.post("/kling/tasks", json={"id": "nope", "action": "retrieve"}).status_code
            == 404
        )
        assert client.post("/kling/tasks", json={"action": "generate"}).status_code == 400
        no_api = client.post("/kling/nothing-here", json={})
    assert no_api.status_code == 404 and no_api.json()["error"]["code"] == "no_api"


# ---------------------------------------------------------------------- Kling


def test_kling_create_query_by_both_ids_download(
    srv: SandboxServer, media: Media, tmp_path: Path
) -> None:
    body = {"model_name": "kling-v2-6", "image_url": srv.file_url(media.image),
            "video_url": srv.file_url(media.video), "keep_original_sound": "yes",
            "character_orientation": "image", "mode": "std", "external_task_id": "job-7-a1",
            "watermark_info": {"enabled": False}}  # fmt: skip
    with kling_client(srv.base_url) as client:
        created = client.post("/v1/videos/motion-control", json=body).json()
        assert created["code"] == 0 and created["message"] == "SUCCEED" and created["request_id"]
        data = created["data"]
        assert data["task_status"] == "submitted" and data["task_id"].isdigit()
        assert data["task_info"]["external_task_id"] == "job-7-a1"
        by_external = until(
            lambda: client.get("/v1/videos/motion-control/job-7-a1").json(),
            lambda d: d["data"]["task_status"] in ("succeed", "failed"),
        )
        by_id = client.get(f"/v1/videos/motion-control/{data['task_id']}").json()
        assert by_id["data"] == by_external["data"]
        videos = by_id["data"]["task_result"]["videos"]
        assert by_id["data"]["task_status"] == "succeed"
        assert float(videos[0]["duration"]) == pytest.approx(3.5, abs=0.15)
        result = client.get(videos[0]["url"])
        again = client.post("/v1/videos/motion-control", json=body)
    assert (again.status_code, again.json()["code"]) == (400, 1201)  # external id is unique
    info = probe_bytes(result.content, tmp_path)
    assert info.has_audio and info.duration == pytest.approx(3.5, abs=0.15)


def test_kling_accepts_raw_base64_image(srv: SandboxServer, media: Media) -> None:
    body = {"image_url": base64.b64encode(media.image.read_bytes()).decode(),
            "video_url": srv.file_url(media.video), "character_orientation": "video",
            "mode": "std"}  # fmt: skip
    with kling_client(srv.base_url) as client:
        task_id = client.post("/v1/videos/motion-control", json=body).json()["data"]["task_id"]
        done = until(
            lambda: client.get(f"/v1/videos/motion-control/{task_id}").json(),
            lambda d: d["data"]["task_status"] in ("succeed", "failed"),
        )
        assert done["data"]["task_status"] == "succeed", done
        body["image_url"] = "data:image/png;base64,AAAA"
        refused = client.post("/v1/videos/motion-control", json=body)
    assert (refused.status_code, refused.json()["code"]) == (400, 1201)


def _forged(payload: dict, secret: str = KLING_SK) -> str:
    import hashlib
    import hmac

    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def test_kling_jwt_codes_on_the_wire(srv: SandboxServer) -> None:
    now = int(time.time())
    cases = {
        None: 1001,
        mint_jwt(KLING_AK, "wrong-secret"): 1002,
        mint_jwt("other-access", KLING_SK): 1002,
        "not-a-jwt": 1002,
        _forged({"iss": KLING_AK, "exp": now + 1800, "nbf": now + 600}): 1003,
        _forged({"iss": KLING_AK, "exp": now - 10, "nbf": now - 1800}): 1004,
    }
    with httpx.Client(base_url=srv.base_url) as client:
        for token, code in cases.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            create = client.post("/v1/videos/motion-control", json={}, headers=headers)
            query = client.get("/v1/videos/motion-control/123", headers=headers)
            for answer in (create, query):
                assert answer.status_code == 401, token
                assert answer.json()["code"] == code, token
                assert answer.json()["request_id"]


@pytest.mark.parametrize(
    "change",
    [{"mode": "720p"}, {"keep_original_sound": False}, {"character_orientation": None},
     {"model_name": "kling-v9"}, {"video_url": None}, {"prompt": "p" * 2501}],
)  # fmt: skip
def test_kling_validation(srv: SandboxServer, change: dict) -> None:
    body = {"image_url": "http://127.0.0.1/i.png", "video_url": "http://127.0.0.1/v.mp4",
            "character_orientation": "video", "mode": "std"}  # fmt: skip
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with kling_client(srv.base_url) as client:
        answer = client.post("/v1/videos/motion-control", json=body)
        unknown = client.get("/v1/videos/motion-control/999")
    assert (answer.status_code, answer.json()["code"]) == (400, 1201)
    assert (unknown.status_code, unknown.json()["code"]) == (404, 1203)
    assert len(srv.ledger) == 0


# ---------------------------------------------------------------------- media rules


def test_media_rules_fail_the_task_per_protocol(srv: SandboxServer, media: Media) -> None:
    with kie_client(srv.base_url) as kie, ace_client(srv.base_url) as ace:
        short = kie_wait(kie, kie_create(kie, srv.file_url(media.image), srv.file_url(media.short)))
        assert short["state"] == "fail" and "shorter than 3 s" in short["failMsg"]
        assert short["resultJson"] == ""
        small = ace.post("/kling/motion", json={
            "image_url": srv.file_url(media.small_image), "video_url": srv.file_url(media.video),
            "character_orientation": "video", "mode": "std"}).json()  # fmt: skip
        assert small["success"] is False and small["state"] == "failed"
        assert "200x200" in small["error"]["message"]
    with kling_client(srv.base_url) as kling:
        body = {"image_url": srv.file_url(media.wide_image), "video_url": srv.file_url(media.video),
                "character_orientation": "video", "mode": "std"}  # fmt: skip
        task_id = kling.post("/v1/videos/motion-control", json=body).json()["data"]["task_id"]
        wide = until(
            lambda: kling.get(f"/v1/videos/motion-control/{task_id}").json()["data"],
            lambda d: d["task_status"] in ("succeed", "failed"),
        )
    assert wide["task_status"] == "failed" and "aspect ratio 3.00" in wide["task_status_msg"]
    assert "task_result" not in wide
    assert srv.render_count == 0


def test_orientation_image_caps_the_clip_at_10_s(tmp_path: Path, srv: SandboxServer) -> None:
    from mediagen import make_image, make_video

    image = make_image(tmp_path / "c.jpg", 320, 400)
    long_clip = make_video(tmp_path / "long.mp4", 11.0, 340, 340, fps=5, audio=False)
    with kie_client(srv.base_url) as client:
        as_image = kie_create(client, srv.file_url(image), srv.file_url(long_clip),
                              character_orientation="image")  # fmt: skip
        failed = kie_wait(client, as_image)
    assert failed["state"] == "fail"
    assert "11.00 s exceeds 10 s allowed with character_orientation=image" in failed["failMsg"]


def test_unreachable_input_urls_fail_the_task(srv: SandboxServer, media: Media) -> None:
    # The sandbox never leaves loopback: a public URL is an input the "service" cannot fetch.
    with kie_client(srv.base_url) as client:
        public = kie_wait(client, kie_create(client, "https://example.com/c.png",
                                             srv.file_url(media.video)))  # fmt: skip
        gone = kie_wait(client, kie_create(client, srv.file_url(media.image),
                                           f"{srv.base_url}/tempfile/nope/v.mp4"))  # fmt: skip
    assert public["state"] == "fail" and "only fetches loopback" in public["failMsg"]
    assert gone["state"] == "fail" and "video_url could not be fetched" in gone["failMsg"]


def test_served_files_support_ranges(srv: SandboxServer, media: Media) -> None:
    url = srv.file_url(media.video)
    size = media.video.stat().st_size
    with httpx.Client() as client:
        part = client.get(url, headers={"Range": "bytes=10-19"})
        head = client.head(url)
        tail = client.get(url, headers={"Range": f"bytes={size}-"})
    assert part.status_code == 206 and part.content == media.video.read_bytes()[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{size}"
    assert head.status_code == 200 and head.headers["content-length"] == str(size)
    assert tail.status_code == 416


def test_ledger_records_each_accepted_create(srv: SandboxServer) -> None:
    kie_body = {"model": "kling-2.6/motion-control",
                "input": {"input_urls": ["http://127.0.0.1:9/i.png"],
                          "video_urls": ["http://127.0.0.1:9/v.mp4"],
                          "character_orientation": "video", "mode": "1080p"}}  # fmt: skip
    kling_body = {"image_url": "http://127.0.0.1:9/i.png", "video_url": "http://127.0.0.1:9/v.mp4",
                  "character_orientation": "video", "mode": "pro", "external_task_id": "c-1"}  # fmt: skip
    with kie_client(srv.base_url) as kie, kling_client(srv.base_url) as kling:
        kie_id = kie.post("/api/v1/jobs/createTask", json=kie_body).json()["data"]["taskId"]
        kie.post("/api/v1/jobs/createTask", json={"model": "nope"})  # refused: not in the ledger
        kling_id = kling.post("/v1/videos/motion-control", json=kling_body).json()["data"][
            "task_id"
        ]
    entries = srv.ledger.snapshot()
    assert [(e.protocol, e.task_id, e.client_id) for e in entries] == [
        ("kie", kie_id, None),
        ("kling", kling_id, "c-1"),
    ]
    assert entries[0].body == kie_body and entries[1].body == kling_body
    assert entries[0].at <= entries[1].at
    assert [e.task_id for e in srv.ledger.for_protocol("kling")] == [kling_id]


def test_protocols_can_be_limited(tmp_path: Path) -> None:
    with SandboxServer(keys=KEYS, protocols=("kling",), data_dir=tmp_path) as srv:
        with kie_client(srv.base_url) as client:
            assert client.post("/api/v1/jobs/createTask", json={}).status_code == 404
        with kling_client(srv.base_url) as client:
            assert client.get("/v1/videos/motion-control/1").status_code == 404
            assert client.get("/v1/videos/motion-control/1").json()["code"] == 1203
