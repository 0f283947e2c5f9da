"""Shared helpers for the sandbox tests: tiny real media and polling loops (no tests here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mediagen import make_image, make_video
from waiting import wait_until

from pipeline.media.probe import MediaInfo, probe_file
from pipeline.media.tools import find_tools
from pipeline.sandbox.kling import mint_jwt

KIE_KEY = "kie-test-key"
ACE_KEY = "ace-test-key"
KLING_AK = "kling-access"
KLING_SK = "kling-secret"
FAL_KEY = "fal-id:fal-secret"
REPLICATE_TOKEN = "r8_test_token"
FAL_V26 = "/fal-ai/kling-video/v2.6/standard/motion-control"
REPLICATE_V26 = "/v1/models/kwaivgi/kling-v2.6-motion-control/predictions"


@dataclass(frozen=True)
class Media:
    image: Path  # 320x400 png
    video: Path  # 3.5 s 340x340 mp4 with a tone
    short: Path  # 2 s clip: too short for every orientation
    small_image: Path  # 200x200: under the 300 px minimum
    wide_image: Path  # 960x320: aspect 3:1


def make_media(folder: Path) -> Media:
    return Media(
        image=make_image(folder / "char.png", 320, 400),
        video=make_video(folder / "drive.mp4", 3.5, 340, 340),
        short=make_video(folder / "short.mp4", 2.0, 340, 340),
        small_image=make_image(folder / "small.png", 200, 200),
        wide_image=make_image(folder / "wide.jpg", 960, 320),
    )


def kie_client(base_url: str, key: str = KIE_KEY) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def ace_client(base_url: str, key: str = ACE_KEY) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}", "accept": "application/json"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=60)


def kling_client(base_url: str, access: str = KLING_AK, secret: str = KLING_SK) -> httpx.Client:
    headers = {"Authorization": f"Bearer {mint_jwt(access, secret)}"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30)


def fal_client(base_url: str, key: str = FAL_KEY) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Key {key}"}, timeout=30)


def replicate_client(base_url: str, token: str = REPLICATE_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30)


def fal_wait(client: httpx.Client, submitted: dict[str, Any]) -> httpx.Response:
    """Poll a fal request's status_url until COMPLETED (200); the last status answer."""
    return until(lambda: client.get(submitted["status_url"]), lambda r: r.status_code != 202)


def replicate_wait(client: httpx.Client, prediction: dict[str, Any]) -> dict[str, Any]:
    doc = until(
        lambda: client.get(prediction["urls"]["get"]).json(),
        lambda d: d["status"] in ("succeeded", "failed", "canceled"),
    )
    return dict(doc)


def until(fetch: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """Call ``fetch`` until ``done(answer)``; fails the test after a generous deadline."""
    last: list[Any] = []

    def finished() -> bool:
        last[:] = [fetch()]
        return done(last[0])

    wait_until(finished, what="the sandbox task to finish")
    return last[0]


def kie_create(client: httpx.Client, image_url: str, video_url: str, **input_: Any) -> str:
    body = {
        "model": "kling-2.6/motion-control",
        "input": {"input_urls": [image_url], "video_urls": [video_url],
                  "character_orientation": "video", "mode": "720p", **input_},
    }  # fmt: skip
    doc = client.post("/api/v1/jobs/createTask", json=body).json()
    assert doc["code"] == 200, doc
    return str(doc["data"]["taskId"])


def kie_wait(client: httpx.Client, task_id: str) -> dict[str, Any]:
    doc = until(
        lambda: client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json(),
        lambda d: d["data"]["state"] in ("success", "fail"),
    )
    return dict(doc["data"])


def kie_result_url(data: dict[str, Any]) -> str:
    return str(json.loads(data["resultJson"])["resultUrls"][0])


def probe_bytes(data: bytes, folder: Path, name: str = "result.mp4") -> MediaInfo:
    path = folder / name
    path.write_bytes(data)
    return probe_file(path, find_tools())
