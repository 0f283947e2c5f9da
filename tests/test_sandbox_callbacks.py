"""Callbacks end to end over loopback: each protocol's body, Kie's HMAC headers, retries, the
CALLBACK fault kinds, and the refusal to call anything off this machine."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_sandbox_helpers import (
    ACE_KEY,
    FAL_KEY,
    FAL_V26,
    KIE_KEY,
    KLING_AK,
    KLING_SK,
    REPLICATE_TOKEN,
    REPLICATE_V26,
    Media,
    ace_client,
    fal_client,
    kie_client,
    kie_create,
    kling_client,
    make_media,
    replicate_client,
    until,
)

from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer

KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, kling_access=KLING_AK, kling_secret=KLING_SK,
                   fal=FAL_KEY, replicate=REPLICATE_TOKEN)  # fmt: skip
NOWHERE = ("http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4")


class Receiver:
    """A loopback HTTP server that records every POST and answers the statuses it is given."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}  # case-insensitive
                    receiver.posts.append((self.path, headers, json.loads(body)))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int) -> list[tuple[str, dict[str, str], Any]]:
        until(lambda: len(self.posts), lambda n: n >= count)
        with self.lock:
            return list(self.posts)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def sandbox(tmp_path: Path, *faults: dict[str, Any], **top: Any) -> SandboxServer:
    profile = FaultProfile.from_dict({"faults": list(faults), **top})
    return SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sandbox")


def test_kie_callback_is_the_record_and_is_signed(
    tmp_path: Path, receiver: Receiver, media: Media
) -> None:
    with sandbox(tmp_path, webhook_hmac_key="hmac-key") as srv, kie_client(srv.base_url) as kie:
        task_id = kie_create(kie, srv.file_url(media.image), srv.file_url(media.video))
        kie_body = kie.post("/api/v1/jobs/createTask", json={  # a second one, to its own hook
            "model": "kling-2.6/motion-control", "callBackUrl": receiver.url,
            "input": {"input_urls": [srv.file_url(media.image)],
                      "video_urls": [srv.file_url(media.video)],
                      "character_orientation": "video", "mode": "720p"}}).json()  # fmt: skip
        ((path, headers, body),) = receiver.wait(1)
        record = kie.get("/api/v1/jobs/recordInfo",
                         params={"taskId": kie_body["data"]["taskId"]}).json()  # fmt: skip
    assert path == "/hook" and body["code"] == 200
    assert body["data"] == record["data"] and body["data"]["state"] == "success"
    stamp = headers["x-webhook-timestamp"]
    expected = hmac.new(b"hmac-key", f"{body['data']['taskId']}.{stamp}".encode(), hashlib.sha256)
    assert headers["x-webhook-signature"] == base64.b64encode(expected.digest()).decode()
    records = srv.callbacks
    assert [(r.kind, r.delivered, r.task_id) for r in records] == [
        ("final", True, kie_body["data"]["taskId"])
    ]
    assert task_id not in {r.task_id for r in records}  # no callBackUrl: no callback


def test_acedata_and_kling_bodies(tmp_path: Path, receiver: Receiver, media: Media) -> None:
    image, video = "", ""
    with (
        sandbox(tmp_path) as srv,
        ace_client(srv.base_url) as ace,
        kling_client(srv.base_url) as kl,
    ):
        image, video = srv.file_url(media.image), srv.file_url(media.video)
        created = ace.post("/kling/motion", json={
            "image_url": image, "video_url": video, "character_orientation": "video",
            "mode": "std", "callback_url": receiver.url}).json()  # fmt: skip
        assert set(created) == {"task_id"}  # a callback URL makes the call asynchronous
        ((_, _, ace_body),) = receiver.wait(1)
        task = kl.post("/v1/videos/motion-control", json={
            "image_url": image, "video_url": video, "character_orientation": "image",
            "mode": "std", "callback_url": receiver.url}).json()["data"]  # fmt: skip
        kling_body = receiver.wait(2)[1][2]
    assert ace_body["success"] is True and ace_body["state"] == "succeed"
    assert ace_body["task_id"] == created["task_id"] and ace_body["video_url"]
    assert kling_body["task_id"] == task["task_id"] and kling_body["task_status"] == "succeed"
    assert kling_body["task_result"]["videos"][0]["url"]


def test_fal_webhooks_ok_and_error(tmp_path: Path, receiver: Receiver, media: Media) -> None:
    with sandbox(tmp_path) as srv, fal_client(srv.base_url) as fal:
        good = fal.post(FAL_V26, params={"fal_webhook": receiver.url}, json={
            "image_url": srv.file_url(media.image), "video_url": srv.file_url(media.video),
            "character_orientation": "video"}).json()  # fmt: skip
        ok = receiver.wait(1)[0][2]
        bad = fal.post(FAL_V26, params={"fal_webhook": receiver.url}, json={"prompt": 1}).json()
        error = receiver.wait(2)[1][2]
    assert ok["request_id"] == good["request_id"] and ok["status"] == "OK"
    assert ok["error"] is None and ok["payload"]["video"]["url"]
    assert error["request_id"] == bad["request_id"] and error["status"] == "ERROR"
    assert error["error"] == "Invalid status code: 422"
    assert {d["type"] for d in error["payload"]["detail"]} == {"missing", "string_type"}


def test_replicate_webhook_and_its_events_filter(
    tmp_path: Path, receiver: Receiver, media: Media
) -> None:
    with sandbox(tmp_path) as srv, replicate_client(srv.base_url) as rep:
        inputs = {"image": srv.file_url(media.image), "video": srv.file_url(media.video)}
        quiet = rep.post(REPLICATE_V26, json={"input": inputs, "webhook": receiver.url,
                                              "webhook_events_filter": ["start"]}).json()  # fmt: skip
        until(lambda: rep.get(quiet["urls"]["get"]).json()["status"], lambda s: s == "succeeded")
        loud = rep.post(REPLICATE_V26, json={"input": inputs, "webhook": receiver.url,
                                             "webhook_events_filter": ["completed"]}).json()  # fmt: skip
        ((_, headers, body),) = receiver.wait(1)
    assert body["id"] == loud["id"] and body["status"] == "succeeded" and body["output"]
    assert headers["webhook-id"] == f"msg_{loud['id']}" and headers["webhook-timestamp"]
    assert quiet["id"] not in {r.task_id for r in srv.callbacks}


def test_cancels_are_called_back(tmp_path: Path, receiver: Receiver) -> None:
    with (
        sandbox(tmp_path, {"kind": "never_finish"}) as srv,
        fal_client(srv.base_url) as fal,
        replicate_client(srv.base_url) as rep,
    ):
        sub = fal.post(FAL_V26, params={"fal_webhook": receiver.url},
                       json={"image_url": NOWHERE[0], "video_url": NOWHERE[1],
                             "character_orientation": "video"}).json()  # fmt: skip
        assert fal.put(sub["cancel_url"]).status_code == 202
        fal_body = receiver.wait(1)[0][2]
        pred = rep.post(REPLICATE_V26, json={"input": {"image": NOWHERE[0], "video": NOWHERE[1]},
                                             "webhook": receiver.url}).json()  # fmt: skip
        rep.post(pred["urls"]["cancel"])
        rep_body = receiver.wait(2)[1][2]
    assert fal_body["status"] == "ERROR" and fal_body["payload"]["error_type"] == "client_cancelled"
    assert rep_body["id"] == pred["id"] and rep_body["status"] == "canceled"


def test_failed_deliveries_are_retried(tmp_path: Path) -> None:
    hook = Receiver(statuses=[500, 503])
    try:
        with sandbox(tmp_path, callback_attempts=3) as srv, kie_client(srv.base_url) as kie:
            kie.post("/api/v1/jobs/createTask", json={
                "model": "kling-2.6/motion-control", "callBackUrl": hook.url,
                "input": {"input_urls": [NOWHERE[0]], "video_urls": [NOWHERE[1]],
                          "character_orientation": "video", "mode": "720p"}})  # fmt: skip
            posts = hook.wait(3)
            (record,) = until(lambda: srv.callbacks, lambda r: len(r) == 1)
    finally:
        hook.close()
    assert [p[2] for p in posts[1:]] == [posts[0][2]] * 2  # the same body each time
    assert record.delivered and record.attempts == 3 and record.status == 200
    assert record.json()["data"]["state"] == "fail"  # unreachable inputs: a failure is told too


def kie_with_hook(kie: Any, url: str) -> str:
    body = {"model": "kling-2.6/motion-control", "callBackUrl": url,
            "input": {"input_urls": [NOWHERE[0]], "video_urls": [NOWHERE[1]],
                      "character_orientation": "video", "mode": "720p"}}  # fmt: skip
    return str(kie.post("/api/v1/jobs/createTask", json=body).json()["data"]["taskId"])


def test_drop_delay_and_duplicate(tmp_path: Path, receiver: Receiver) -> None:
    rules = ({"kind": "callback_drop", "times": 1},
             {"kind": "callback_delay", "times": 1, "seconds": 0.5},
             {"kind": "callback_duplicate", "times": 1})  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, kie_client(srv.base_url) as kie:
        dropped = kie_with_hook(kie, receiver.url)
        until(lambda: srv.callbacks, lambda r: any(x.kind == "dropped" for x in r))
        delayed = kie_with_hook(kie, receiver.url)
        until(lambda: srv.callbacks, lambda r: any(x.task_id == delayed for x in r))
        doubled = kie_with_hook(kie, receiver.url)
        posts = receiver.wait(3)
        records = until(lambda: srv.callbacks, lambda r: len(r) == 4)
        ended = kie.get("/api/v1/jobs/recordInfo", params={"taskId": delayed}).json()
    assert [p[2]["data"]["taskId"] for p in posts] == [delayed, doubled, doubled]
    assert posts[1][2] == posts[2][2]
    kinds = {(r.task_id, r.kind) for r in records}
    assert kinds == {(dropped, "dropped"), (delayed, "final"), (doubled, "final"),
                     (doubled, "duplicate")}  # fmt: skip
    late = next(r for r in records if r.task_id == delayed)
    assert late.sent_at >= ended["data"]["completeTime"] / 1000 + 0.5  # never early


@pytest.mark.parametrize("forge", ["unknown_task", "early_success"])
def test_forged_callbacks(forge: str, tmp_path: Path, receiver: Receiver) -> None:
    rules = ({"kind": "callback_forged", "times": 1, "forge": forge}, {"kind": "never_finish"})
    with sandbox(tmp_path, *rules) as srv, kie_client(srv.base_url) as kie:
        task_id = kie_with_hook(kie, receiver.url)
        ((_, _, body),) = receiver.wait(1)
        record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()["data"]
        url = json.loads(body["data"]["resultJson"])["resultUrls"][0]
        assert kie.get(url).status_code == 404  # the "result" of a forgery does not exist
    assert body["data"]["state"] == "success"
    assert record["state"] != "success"  # the task itself never finished
    if forge == "unknown_task":
        assert body["data"]["taskId"] != task_id and body["data"]["taskId"].startswith("forged-")
    else:
        assert body["data"]["taskId"] == task_id
    assert [r.kind for r in srv.callbacks] == ["forged"]


def test_only_loopback_is_ever_called(tmp_path: Path) -> None:
    with sandbox(tmp_path) as srv, kie_client(srv.base_url) as kie:
        task_id = kie_with_hook(kie, "http://example.invalid/hook")
        (record,) = until(lambda: srv.callbacks, lambda r: len(r) == 1)
    assert record.task_id == task_id and record.attempts == 0 and not record.delivered
    assert record.error is not None and "only calls loopback" in record.error


def test_a_restarted_sandbox_does_not_call_back_again(tmp_path: Path, receiver: Receiver) -> None:
    with sandbox(tmp_path) as srv, kie_client(srv.base_url) as kie:
        first = kie_with_hook(kie, receiver.url)
        receiver.wait(1)
    with sandbox(tmp_path) as again, kie_client(again.base_url) as kie:
        second = kie_with_hook(kie, receiver.url)
        receiver.wait(2)
        assert kie.get("/api/v1/jobs/recordInfo", params={"taskId": first}).json()["code"] == 200
        records = again.callbacks
    assert [r.task_id for r in records] == [second]
    assert [p[2]["data"]["taskId"] for p in receiver.posts] == [first, second]
