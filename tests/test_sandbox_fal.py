"""fal.ai's protocol in the sandbox over real loopback sockets: fal-client's storage upload, the
queue (202 while running, COMPLETED then the result), deferred validation, cancel and auth."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import httpx
import pytest
from test_sandbox_helpers import (
    FAL_KEY,
    FAL_V26,
    Media,
    fal_client,
    fal_wait,
    make_media,
    probe_bytes,
    until,
)

from pipeline.sandbox import FaultProfile, Latency, SandboxKeys, SandboxServer

KEYS = SandboxKeys(fal=FAL_KEY)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def srv(tmp_path: Path) -> SandboxServer:
    with SandboxServer(keys=KEYS, data_dir=tmp_path / "sandbox") as server:
        yield server


def cdn_client(client: httpx.Client) -> httpx.Client:
    """The storage client fal-client builds: a token from the REST host, then the CDN."""
    token = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert token.status_code == 200, token.text
    doc = token.json()
    assert set(doc) == {"token", "token_type", "base_url", "expires_at"}
    auth = {"Authorization": f"{doc['token_type']} {doc['token']}"}
    return httpx.Client(base_url=doc["base_url"], headers=auth, timeout=30)


def upload(cdn: httpx.Client, path: Path, content_type: str) -> str:
    answer = cdn.post("/files/upload", content=path.read_bytes(),
                      headers={"Content-Type": content_type, "X-Fal-File-Name": path.name})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_url"])


def test_upload_submit_status_result_download(tmp_path: Path, media: Media) -> None:
    profile = FaultProfile(latency=Latency(polls=2))
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        fal_client(srv.base_url) as client,
        cdn_client(client) as cdn,
    ):
        image = upload(cdn, media.image, "image/png")
        video = upload(cdn, media.video, "video/mp4")
        assert httpx.get(image).content == media.image.read_bytes()  # public, like fal.media
        body = {"image_url": image, "video_url": video, "character_orientation": "video",
                "prompt": "job 1"}  # fmt: skip
        sub = client.post("/fal-ai/kling-video/v2.6/pro/motion-control", json=body).json()
        assert sub["status"] == "IN_QUEUE" and sub["queue_position"] == 0
        base = f"{srv.base_url}/fal-ai/kling-video/requests/{sub['request_id']}"  # owner/alias
        assert (sub["response_url"], sub["status_url"], sub["cancel_url"]) == (
            base, f"{base}/status", f"{base}/cancel")  # fmt: skip
        statuses = []

        def status() -> httpx.Response:
            answer = client.get(sub["status_url"], params={"logs": 1})
            statuses.append((answer.status_code, answer.json()["status"]))
            return answer

        done = until(status, lambda r: r.status_code != 202).json()
        assert statuses[:2] == [(202, "IN_QUEUE"), (202, "IN_PROGRESS")]  # latency: two polls
        assert set(statuses[2:-1]) <= {(202, "IN_PROGRESS")} and statuses[-1] == (200, "COMPLETED")
        assert "error" not in done and done["logs"] and "inference_time" in done["metrics"]
        result = client.get(sub["response_url"])
        assert result.status_code == 200
        out = result.json()["video"]
        assert out["content_type"] == "video/mp4" and out["file_size"] > 0
        video_bytes = httpx.get(out["url"]).content
    info = probe_bytes(video_bytes, tmp_path)
    assert info.height == 480 and info.has_audio  # pro tier by endpoint id; sound kept by default
    assert [e.protocol for e in srv.ledger] == ["fal"] and srv.ledger[0].body == body
    assert srv.ledger.bills() == {sub["request_id"]: pytest.approx(3.5, abs=0.1)}


def test_multipart_upload_joins_parts_checked_by_etag(srv: SandboxServer) -> None:
    with fal_client(srv.base_url) as client, cdn_client(client) as cdn:
        started = cdn.post("/files/upload/multipart",
                           headers={"Content-Type": "video/mp4", "X-Fal-File-Name": "big.mp4"})  # fmt: skip
        access, upload_id = started.json()["access_url"], started.json()["uploadId"]
        chunks = [b"a" * 1000, b"b" * 10]
        etags = []
        for number, chunk in enumerate(chunks, 1):
            part = cdn.put(f"{access}/multipart/{upload_id}/{number}", content=chunk)
            assert part.status_code == 200
            etags.append(part.headers["etag"])
        wrong = {
            "parts": [{"partNumber": 1, "etag": etags[1]}, {"partNumber": 2, "etag": etags[1]}]
        }
        assert cdn.post(f"{access}/multipart/{upload_id}/complete", json=wrong).status_code == 400
        parts = [{"partNumber": n, "etag": e} for n, e in ((2, etags[1]), (1, etags[0]))]
        done = cdn.post(f"{access}/multipart/{upload_id}/complete", json={"parts": parts})
        assert done.status_code == 200 and done.json()["access_url"] == access
        assert httpx.get(access).content == b"".join(chunks)


def test_storage_tokens_are_checked(srv: SandboxServer) -> None:
    expired = int(time.time()) - 5
    signature = hmac.new(FAL_KEY.encode(), str(expired).encode(), hashlib.sha256).hexdigest()[:32]
    with httpx.Client(base_url=srv.base_url) as client:
        for auth in ("", "Bearer nope", f"Bearer {expired}.{signature}", f"Key {FAL_KEY}"):
            answer = client.post("/files/upload", content=b"x", headers={"Authorization": auth})
            assert answer.status_code == 401 and answer.json()["detail"], auth


def test_bad_inputs_are_accepted_then_complete_with_a_422(srv: SandboxServer) -> None:
    body = {"image_url": 3, "character_orientation": "sideways", "keep_original_sound": "yes",
            "prompt": "p" * 2501, "mode": "pro"}  # fmt: skip
    with fal_client(srv.base_url) as client:
        sub = client.post("/fal-ai/kling-video/v3/standard/motion-control", json=body)
        assert sub.status_code == 200  # fal checks inputs when it runs the request, not before
        status = fal_wait(client, sub.json())
        result = client.get(sub.json()["response_url"])
    assert status.status_code == 200 and status.json()["status"] == "COMPLETED"
    assert status.json()["error_type"] == "string_type" and status.json()["error"]
    assert result.status_code == 422 and result.headers["x-fal-error-type"] == "string_type"
    found = {tuple(d["loc"]): d["type"] for d in result.json()["detail"]}
    assert found == {
        ("body", "image_url"): "string_type",
        ("body", "video_url"): "missing",
        ("body", "character_orientation"): "literal_error",
        ("body", "keep_original_sound"): "bool_type",
        ("body", "prompt"): "string_too_long",
        ("body", "mode"): "extra_forbidden",  # the tier is in the endpoint id, not an input
    }
    assert len(srv.ledger) == 1 and srv.ledger.bills() == {}  # accepted, never generated


def test_media_rules_are_model_errors(srv: SandboxServer, media: Media) -> None:
    body = {"image_url": srv.file_url(media.image), "video_url": srv.file_url(media.short),
            "character_orientation": "image", "keep_original_sound": False}  # fmt: skip
    with fal_client(srv.base_url) as client:
        sub = client.post(FAL_V26, json=body).json()
        assert fal_wait(client, sub).json()["error_type"] == "video_duration_too_short"
        result = client.get(sub["response_url"])
    assert result.status_code == 422
    (item,) = result.json()["detail"]
    assert item["loc"] == ["body", "video_url"] and "shorter than 3 s" in item["msg"]


def test_auth_and_a_locked_account(tmp_path: Path, srv: SandboxServer) -> None:
    with httpx.Client(base_url=srv.base_url) as anon:
        for headers in ({}, {"Authorization": "Key wrong"}, {"Authorization": f"Bearer {FAL_KEY}"}):
            for method, path in (("POST", FAL_V26), ("GET", "/fal-ai/kling-video/requests/x"),
                                 ("POST", "/storage/auth/token")):  # fmt: skip
                answer = anon.request(method, path, headers=headers, json={})
                assert answer.status_code == 401 and answer.json()["detail"], (headers, path)
    broke = FaultProfile(credits=0)
    with (
        SandboxServer(keys=KEYS, faults=broke, data_dir=tmp_path / "broke") as poor,
        fal_client(poor.base_url) as client,
    ):
        submit = client.post(FAL_V26, json={})
        token = client.post("/storage/auth/token", json={})
        status = client.get("/fal-ai/kling-video/requests/nope/status")
    for answer in (submit, token):
        assert answer.status_code == 403
        assert answer.json()["detail"].startswith("User is locked. Reason: Exhausted balance.")
    assert status.status_code == 404  # status queries still work on a locked account


def test_unknown_ids_early_results_and_cancel(tmp_path: Path) -> None:
    profile = FaultProfile.from_dict({"faults": [{"kind": "never_finish", "times": 1}]})
    body = {"image_url": "http://127.0.0.1:9/i.png", "video_url": "http://127.0.0.1:9/v.mp4",
            "character_orientation": "video"}  # fmt: skip
    with (
        SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sb") as srv,
        fal_client(srv.base_url) as client,
    ):
        assert client.post("/fal-ai/kling-video/v9/motion-control", json=body).status_code == 404
        missing = client.put("/fal-ai/kling-video/requests/nope/cancel")
        assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})
        sub = client.post(FAL_V26, json=body).json()
        seen = [client.get(sub["status_url"]).json()["status"] for _ in range(4)]
        assert seen == ["IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS"]
        early = client.get(sub["response_url"])
        assert early.status_code == 400 and "in progress" in early.json()["detail"]
        cancel = client.put(sub["cancel_url"])
        assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        status = client.get(sub["status_url"])
        assert status.status_code == 200 and status.json()["error_type"] == "client_cancelled"
        result = client.get(sub["response_url"])
        assert (
            result.status_code == 499 and result.headers["x-fal-error-type"] == "client_cancelled"
        )
        again = client.put(sub["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
