"""Every fault kind of a profile, observed on the wire over real loopback sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    until,
)

from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer

KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, kling_access=KLING_AK, kling_secret=KLING_SK)
KIE_BODY = {"model": "kling-2.6/motion-control",
            "input": {"input_urls": ["http://127.0.0.1:9/i.png"],
                      "video_urls": ["http://127.0.0.1:9/v.mp4"],
                      "character_orientation": "video", "mode": "720p"}}  # fmt: skip
KLING_BODY = {"image_url": "http://127.0.0.1:9/i.png", "video_url": "http://127.0.0.1:9/v.mp4",
              "character_orientation": "video", "mode": "std"}  # fmt: skip
ACE_BODY = {**KLING_BODY, "async": True}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def sandbox(tmp_path: Path, *faults: dict[str, Any], **top: Any) -> SandboxServer:
    profile = FaultProfile.from_dict({"faults": list(faults), **top})
    return SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sandbox")


def test_rate_limit_with_and_without_retry_after(tmp_path: Path) -> None:
    with sandbox(tmp_path,
                 {"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 7},
                 {"kind": "rate_limit", "endpoint": "create", "times": 1}) as srv:  # fmt: skip
        with kie_client(srv.base_url) as kie:
            first = kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
            second = kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
            third = kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
        assert (first.status_code, first.json()["code"]) == (200, 429)  # Kie: in the body
        assert first.headers["retry-after"] == "7"
        assert second.json()["code"] == 429 and "retry-after" not in second.headers
        assert third.json()["code"] == 200
        assert len(srv.ledger) == 1


def test_rate_limit_per_protocol_shapes(tmp_path: Path) -> None:
    rule = {"kind": "rate_limit", "endpoint": "create", "retry_after": 1}
    with (
        sandbox(tmp_path, rule) as srv,
        ace_client(srv.base_url) as ace,
        kling_client(srv.base_url) as kling,
    ):
        ace_answer = ace.post("/kling/motion", json=ACE_BODY)
        kling_answer = kling.post("/v1/videos/motion-control", json=KLING_BODY)
    assert ace_answer.status_code == 429
    assert ace_answer.json()["error"]["code"] == "too_many_requests"
    assert ace_answer.headers["retry-after"] == "1"
    assert (kling_answer.status_code, kling_answer.json()["code"]) == (429, 1302)


def test_kling_concurrency_code_can_be_chosen(tmp_path: Path) -> None:
    rule = {"kind": "rate_limit", "protocol": "kling", "code": "1303",
            "message": "parallel task over resource pack limit"}  # fmt: skip
    with sandbox(tmp_path, rule) as srv, kling_client(srv.base_url) as kling:
        answer = kling.post("/v1/videos/motion-control", json=KLING_BODY)
    assert (answer.status_code, answer.json()["code"]) == (429, 1303)
    assert answer.json()["message"] == "parallel task over resource pack limit"


def test_server_errors_every_nth_poll(tmp_path: Path) -> None:
    with (
        sandbox(tmp_path, {"kind": "server_error", "endpoint": "poll", "every": 2},
                {"kind": "server_error", "endpoint": "create", "status": 502, "times": 1}) as srv,
        ace_client(srv.base_url) as ace,
    ):  # fmt: skip
        gateway = ace.post("/kling/motion", json=ACE_BODY)
        task_id = ace.post("/kling/motion", json=ACE_BODY).json()["task_id"]
        statuses = [
            ace.post("/kling/tasks", json={"id": task_id, "action": "retrieve"}).status_code
            for _ in range(4)
        ]
    assert gateway.status_code == 502 and gateway.json()["error"]["code"] == "api_error"
    assert statuses == [200, 500, 200, 500]
    assert len(srv.ledger) == 1


def test_kie_server_error_in_body_or_as_http_status(tmp_path: Path) -> None:
    rules = ({"kind": "server_error", "endpoint": "poll", "times": 1},
             {"kind": "server_error", "endpoint": "upload", "status": 503})  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, kie_client(srv.base_url) as kie:
        poll = kie.get("/api/v1/jobs/recordInfo", params={"taskId": "x"})
        upload = kie.post("/api/file-stream-upload", files={"file": ("a.png", b"x")})
    assert (poll.status_code, poll.json()["code"]) == (200, 500)
    assert (upload.status_code, upload.json()["success"]) == (503, False)


def test_reset_before_commit_creates_nothing(tmp_path: Path) -> None:
    with sandbox(
        tmp_path, {"kind": "reset_before_commit", "endpoint": "create", "times": 1}
    ) as srv:
        with kie_client(srv.base_url) as kie:
            with pytest.raises(httpx.TransportError, match="reset by peer"):
                kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
            assert len(srv.ledger) == 0
            # The server keeps serving: a new connection works.
            assert kie.post("/api/v1/jobs/createTask", json=KIE_BODY).json()["code"] == 200
        assert len(srv.ledger) == 1


def test_reset_after_commit_is_in_the_ledger_and_found_by_external_id(tmp_path: Path) -> None:
    with sandbox(tmp_path, {"kind": "reset_after_commit", "endpoint": "create", "times": 1}) as srv:
        with kling_client(srv.base_url) as kling:
            body = {**KLING_BODY, "external_task_id": "job-1-try-1"}
            with pytest.raises(httpx.TransportError) as caught:
                kling.post("/v1/videos/motion-control", json=body)
            found = kling.get("/v1/videos/motion-control/job-1-try-1").json()
        assert "reset by peer" in str(caught.value)  # a TCP RST, not a polite close
        entries = srv.ledger.snapshot()
        assert [e.client_id for e in entries] == ["job-1-try-1"]
        assert found["code"] == 0 and found["data"]["task_id"] == entries[0].task_id


def test_malformed_json_with_and_without_commit(tmp_path: Path) -> None:
    with sandbox(tmp_path,
                 {"kind": "malformed_json", "endpoint": "create", "times": 1},
                 {"kind": "malformed_json", "endpoint": "create", "times": 1, "commit": False},
                 {"kind": "malformed_json", "endpoint": "poll", "times": 1}) as srv:  # fmt: skip
        with kie_client(srv.base_url) as kie:
            committed = kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
            not_committed = kie.post("/api/v1/jobs/createTask", json=KIE_BODY)
            poll = kie.get("/api/v1/jobs/recordInfo", params={"taskId": srv.ledger[0].task_id})
        for answer in (committed, not_committed, poll):
            assert answer.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                answer.json()
        assert len(srv.ledger) == 1


def test_bad_key_and_out_of_credits(tmp_path: Path) -> None:
    rules = ({"kind": "bad_key", "endpoint": "poll"},
             {"kind": "out_of_credits", "endpoint": "create"})  # fmt: skip
    with (
        sandbox(tmp_path, *rules) as srv,
        kie_client(srv.base_url) as kie,
        ace_client(srv.base_url) as ace,
        kling_client(srv.base_url) as kling,
    ):
        kie_create_ = kie.post("/api/v1/jobs/createTask", json=KIE_BODY).json()
        kie_poll = kie.get("/api/v1/jobs/recordInfo", params={"taskId": "t"}).json()
        ace_create = ace.post("/kling/motion", json=ACE_BODY)
        kling_create = kling.post("/v1/videos/motion-control", json=KLING_BODY)
        kling_poll = kling.get("/v1/videos/motion-control/1")
    assert kie_create_["code"] == 402 and kie_poll["code"] == 401
    assert (ace_create.status_code, ace_create.json()["error"]["code"]) == (403, "used_up")
    assert (kling_create.status_code, kling_create.json()["code"]) == (429, 1102)
    assert (kling_poll.status_code, kling_poll.json()["code"]) == (401, 1002)
    assert len(srv.ledger) == 0


def test_zero_credits_profile(tmp_path: Path) -> None:
    with sandbox(tmp_path, credits=0) as srv, kie_client(srv.base_url) as kie:
        assert kie.get("/api/v1/chat/credit").json()["data"] == 0
        assert kie.post("/api/v1/jobs/createTask", json=KIE_BODY).json()["code"] == 402


def test_task_fail_and_never_finish(tmp_path: Path, media: Media) -> None:
    reason = "Content moderation: sensitive content detected."
    with sandbox(tmp_path, {"kind": "task_fail", "times": 1, "message": reason},
                 {"kind": "never_finish", "times": 1}) as srv:  # fmt: skip
        image, video = srv.file_url(media.image), srv.file_url(media.video)
        with kie_client(srv.base_url) as kie:
            failing = kie_create(kie, image, video)
            stuck = kie_create(kie, image, video)
            fine = kie_create(kie, image, video)
            failed = kie_wait(kie, failing)
            assert kie_wait(kie, fine)["state"] == "success"
            # The normal task with the same inputs is done, yet this one still runs.
            for _ in range(5):
                poll = kie.get("/api/v1/jobs/recordInfo", params={"taskId": stuck}).json()
                assert poll["data"]["state"] in ("waiting", "queuing", "generating")
    assert failed["state"] == "fail" and failed["failMsg"] == reason
    assert failed["failCode"] == "500"
    assert len(srv.ledger) == 3


def test_never_finish_hits_acedata_sync_cap(tmp_path: Path, media: Media) -> None:
    with sandbox(tmp_path, {"kind": "never_finish"}, sync_timeout=0.3) as srv:
        body = {"image_url": srv.file_url(media.image), "video_url": srv.file_url(media.video),
                "character_orientation": "video", "mode": "std"}  # fmt: skip
        with ace_client(srv.base_url) as ace:
            answer = ace.post("/kling/motion", json=body)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "api_error"
    assert len(srv.ledger) == 1


def test_expired_result_fault_then_fresh_url(tmp_path: Path, media: Media) -> None:
    rule = {"kind": "expired_result", "times": 1}
    with sandbox(tmp_path, rule) as srv, kie_client(srv.base_url) as kie:
        task_id = kie_create(kie, srv.file_url(media.image), srv.file_url(media.video))
        url = kie_result_url(kie_wait(kie, task_id))
        assert kie.get(url).status_code == 404
        assert kie.get(url).status_code == 404  # it stays expired
        fresh = kie_result_url(kie_wait(kie, task_id))
        assert fresh != url and kie.get(fresh).status_code == 200


def test_expire_results_per_protocol(tmp_path: Path, media: Media) -> None:
    with SandboxServer(keys=KEYS, data_dir=tmp_path) as srv, kling_client(srv.base_url) as kling:
        body = {**KLING_BODY, "image_url": srv.file_url(media.image),
                "video_url": srv.file_url(media.video)}  # fmt: skip
        task_id = kling.post("/v1/videos/motion-control", json=body).json()["data"]["task_id"]

        def query() -> dict:
            return kling.get(f"/v1/videos/motion-control/{task_id}").json()["data"]

        url = until(query, lambda d: d["task_status"] == "succeed")["task_result"]["videos"][0][
            "url"
        ]
        assert kling.get(url).status_code == 200
        assert srv.expire_results() == 1
        assert kling.get(url).status_code == 403  # Kling's CDN: an expired signed URL
        fresh = query()["task_result"]["videos"][0]["url"]
        assert fresh != url and kling.get(fresh).status_code == 200


def test_truncated_download(tmp_path: Path, media: Media) -> None:
    rule = {"kind": "malformed_json", "endpoint": "download", "times": 1}
    with sandbox(tmp_path, rule) as srv, kie_client(srv.base_url) as kie:
        task_id = kie_create(kie, srv.file_url(media.image), srv.file_url(media.video))
        url = kie_result_url(kie_wait(kie, task_id))
        cut, whole = kie.get(url), kie.get(url)
    assert 0 < len(cut.content) < len(whole.content)
    assert whole.content.startswith(cut.content)


def test_latency_polls_per_protocol(tmp_path: Path, media: Media) -> None:
    profile = {"latency": {"polls": 0, "kling": {"polls": 3}}}
    with sandbox(tmp_path, **profile) as srv, kling_client(srv.base_url) as kling:
        body = {**KLING_BODY, "image_url": srv.file_url(media.image),
                "video_url": srv.file_url(media.video)}  # fmt: skip
        task_id = kling.post("/v1/videos/motion-control", json=body).json()["data"]["task_id"]
        seen = []
        until(lambda: seen.append(kling.get(f"/v1/videos/motion-control/{task_id}").json()["data"])
              or seen[-1], lambda d: d["task_status"] == "succeed")  # fmt: skip
    statuses = [d["task_status"] for d in seen]
    assert statuses[0] == "submitted" and statuses.count("succeed") == 1
    assert len(statuses) >= 4  # three polls answered "not yet" before the result


def test_render_cache_by_inputs_mode_and_sound(tmp_path: Path, media: Media) -> None:
    with SandboxServer(keys=KEYS, data_dir=tmp_path) as srv, kie_client(srv.base_url) as kie:
        image, video = srv.file_url(media.image), srv.file_url(media.video)
        ids = [kie_create(kie, image, video) for _ in range(4)]
        ids.append(kie_create(kie, image, video, mode="1080p"))
        urls = [kie_result_url(kie_wait(kie, i)) for i in ids]
        same = {kie.get(u).content for u in urls[:4]}
        assert len(same) == 1
    assert srv.render_count == 2


def test_serve_prints_base_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"faults": [{"kind": "bad_key"}]}))
    code = (
        "import sys; from pipeline.sandbox import serve; "
        f"serve('127.0.0.1', 0, ['kie'], {str(profile)!r}, data_dir={str(tmp_path / 'd')!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("sandbox listening on http://127.0.0.1:")
        base = first.rsplit(" ", 1)[-1]
        answer = httpx.post(f"{base}/api/v1/jobs/createTask", json=KIE_BODY,
                            headers={"Authorization": "Bearer anything"})  # fmt: skip
        assert answer.json()["code"] == 401  # the profile was loaded
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "sandbox stopped" in rest


def test_tasks_survive_a_restart_on_the_same_data_dir(tmp_path: Path, media: Media) -> None:
    data = tmp_path / "kept"

    def upload(kie: httpx.Client, path: Path, folder: str) -> str:
        files = {"file": (path.name, path.read_bytes())}
        doc = kie.post("/api/file-stream-upload", files=files, data={"uploadPath": folder}).json()
        return str(doc["data"]["downloadUrl"])

    with SandboxServer(keys=KEYS, data_dir=data) as first, kie_client(first.base_url) as kie:
        image, video = upload(kie, media.image, "images"), upload(kie, media.video, "videos")
        task_id = kie_create(kie, image, video)
        with kling_client(first.base_url) as kling:
            body = {**KLING_BODY, "external_task_id": "job-9"}
            assert kling.post("/v1/videos/motion-control", json=body).json()["code"] == 0
    # A new server (new port, as the embedded sandbox gets every run) on the same directory.
    with (
        SandboxServer(keys=KEYS, data_dir=data) as second,
        kie_client(second.base_url) as kie,
        kling_client(second.base_url) as kling,
    ):
        done = kie_wait(kie, task_id)
        assert done["state"] == "success", done
        assert kie.get(kie_result_url(done)).status_code == 200
        again = kling.post("/v1/videos/motion-control", json=body)
        assert (again.status_code, again.json()["code"]) == (400, 1201)
        assert kling.get("/v1/videos/motion-control/job-9").json()["code"] == 0
        assert len(second.ledger) == 0  # the ledger holds this server's accepted creates only
