"""The sandbox misbehaving on purpose (huge_body, trickle, redirect_loop, bad_result_url,
weird_task_id, duplicate_task_id, huge_result), seen over HTTP by raw clients and by the real
provider clients, with the ledger saying what was really billed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from loopback import http_client
from test_sandbox_helpers import (
    ACE_KEY,
    KIE_KEY,
    KLING_AK,
    KLING_SK,
    Media,
    kie_client,
    make_media,
)
from waiting import wait_until_async

from pipeline.dataset.results import download_result
from pipeline.errors import (
    AmbiguousError,
    BadReplyError,
    ResultInvalidError,
    TransientError,
    UnreachableError,
)
from pipeline.jobs import Handle, InputRef, Job, JobSettings, TaskStatus
from pipeline.media.tools import find_tools
from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import Credentials, InputURLs, Provider, ProviderConfig
from pipeline.providers.fal import FalProvider
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider
from pipeline.providers.replicate import ReplicateProvider
from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer
from pipeline.storage.fetch import Limits

T = TypeVar("T")
FAL_KEY = "fal-hostile-key"
REPLICATE_TOKEN = "r8-hostile-token"
KEYS = SandboxKeys(kie=KIE_KEY, acedata=ACE_KEY, kling_access=KLING_AK, kling_secret=KLING_SK,
                   fal=FAL_KEY, replicate=REPLICATE_TOKEN)  # fmt: skip
PROTOCOLS = ["kie", "acedata", "kling", "fal", "replicate"]
MODELS = {"kie": "kling-2.6/motion-control", "acedata": "kling-v2-6", "kling": "kling-v2-6",
          "fal": FalProvider.default_model, "replicate": ReplicateProvider.default_model}  # fmt: skip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def sandbox(tmp_path: Path, *faults: dict[str, Any]) -> SandboxServer:
    profile = FaultProfile.from_dict({"faults": list(faults)})
    return SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sandbox")


def provider(kind: str, base_url: str, client: httpx.AsyncClient, **kw: Any) -> Provider:
    cfg = ProviderConfig(kind, MODELS[kind], base_url, base_url)
    if kind == "kie":
        return KieProvider(cfg, Credentials({"api_key": KIE_KEY}), client, **kw)
    if kind == "acedata":
        return AceDataProvider(cfg, Credentials({"api_key": ACE_KEY}), client, **kw)
    if kind == "fal":
        return FalProvider(cfg, Credentials({"api_key": FAL_KEY}), client, **kw)
    if kind == "replicate":
        return ReplicateProvider(cfg, Credentials({"api_key": REPLICATE_TOKEN}), client, **kw)
    creds = Credentials({"access_key": KLING_AK, "secret_key": KLING_SK})
    return KlingProvider(cfg, creds, client, **kw)


def run(fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with http_client(timeout=30) as client:
            return await fn(client)

    return asyncio.run(main())


def job(kind: str, srv: SandboxServer, media: Media, n: int = 1) -> tuple[Job, InputURLs]:
    urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))
    image, video = (
        InputRef(urls.image_url, url=urls.image_url),
        InputRef(urls.video_url, url=urls.video_url),
    )
    return Job(f"job-{n}", image, video, JobSettings(), provider=kind, model=MODELS[kind]), urls


async def submit(p: Provider, srv: SandboxServer, media: Media, n: int = 1) -> Handle:
    the_job, urls = job(type(p).name, srv, media, n)
    return await p.submit(the_job, urls, client_id=f"mp-{n}")


async def finished(p: Provider, handle: Handle) -> TaskStatus:
    async def terminal() -> TaskStatus | None:
        status = await p.poll(handle)
        return status if status.is_terminal else None

    return await wait_until_async(terminal, what=f"task {handle.task_id} to finish")


# --------------------------------------------------------------------------- huge_body


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_huge_create_answer_is_billed_and_ambiguous(
    kind: str, tmp_path: Path, media: Media
) -> None:
    with sandbox(tmp_path, {"kind": "huge_body", "endpoint": "create", "times": 1}) as srv:
        with pytest.raises(AmbiguousError, match="over the 4194304 byte limit"):
            run(lambda c: submit(provider(kind, srv.base_url, c), srv, media))
        assert len(srv.ledger) == 1  # the task was made: a human decides, nobody resubmits
        assert srv.ledger[0].answered_id is None


def test_huge_body_is_the_normal_answer_after_whitespace(tmp_path: Path) -> None:
    rule = {"kind": "huge_body", "endpoint": "poll", "size": 3_000_000, "times": 1}
    chunked_rule = {**rule, "content_length": False, "size": 5_000_000}
    with sandbox(tmp_path, rule, chunked_rule) as srv, kie_client(srv.base_url) as kie:
        announced = kie.get("/api/v1/jobs/recordInfo", params={"taskId": "nope"})
        chunked = kie.get("/api/v1/jobs/recordInfo", params={"taskId": "nope"})
    assert announced.headers["content-length"] == "3000000" and len(announced.content) == 3_000_000
    assert "content-length" not in chunked.headers and len(chunked.content) == 5_000_000
    assert (
        announced.json() == chunked.json() == {"code": 404, "msg": "task not found", "data": None}
    )


def test_default_huge_body_is_64_mib_and_stops_when_the_client_does(tmp_path: Path) -> None:
    with sandbox(tmp_path, {"kind": "huge_body", "endpoint": "account"}) as srv:
        with kie_client(srv.base_url) as kie, kie.stream("GET", "/api/v1/chat/credit") as answer:
            assert answer.headers["content-length"] == str(64 * 1024 * 1024)
            first = next(answer.iter_raw())
        assert first.strip() == b""  # whitespace first; then we hang up
        with kie_client(srv.base_url) as kie:  # and the server keeps serving
            assert kie.get("/api/v1/chat/credit").status_code == 200


def test_huge_poll_and_upload_answers_are_bad_replies(tmp_path: Path, media: Media) -> None:
    rules = ({"kind": "huge_body", "endpoint": "poll", "content_length": False},
             {"kind": "huge_body", "endpoint": "upload"})  # fmt: skip
    with sandbox(tmp_path, *rules) as srv:

        async def go(c: httpx.AsyncClient) -> tuple[BaseException, BaseException]:
            kie = provider("kie", srv.base_url, c)
            handle = await submit(kie, srv, media)
            with pytest.raises(BadReplyError) as poll_error:
                await kie.poll(handle)
            with pytest.raises(BadReplyError) as upload_error:
                await kie.upload(media.image, file_name="a.png", content_type="image/png")
            return poll_error.value, upload_error.value

        polled, uploaded = run(go)
    assert "over the 4194304 byte limit" in str(polled) and "upload" in str(uploaded)


# --------------------------------------------------------------------------- trickle


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_trickled_poll_hits_the_deadline(kind: str, tmp_path: Path, media: Media) -> None:
    rule = {"kind": "trickle", "endpoint": "poll", "seconds": 0.05, "chunk": 2}
    with sandbox(tmp_path, rule) as srv:

        async def go(c: httpx.AsyncClient) -> None:
            p = provider(kind, srv.base_url, c, deadlines={"query": 0.4})
            handle = await submit(p, srv, media)
            await p.poll(handle)

        with pytest.raises(UnreachableError, match=r"within 0\.4 s"):
            run(go)


def test_trickled_answer_arrives_whole_in_small_writes(tmp_path: Path) -> None:
    # What the client reads is what the kernel had buffered when it woke: on a busy machine a
    # late reader gets several writes in one piece, so the piece sizes say nothing reliable.
    # With 20 ms between 2-byte writes, though, the answer cannot arrive in a few reads.
    rule = {"kind": "trickle", "endpoint": "account", "seconds": 0.02, "chunk": 2}
    with (
        sandbox(tmp_path, rule) as srv,
        kie_client(srv.base_url) as kie,
        kie.stream("GET", "/api/v1/chat/credit") as answer,
    ):
        pieces = list(answer.iter_raw())
    body = b"".join(pieces)
    assert json.loads(body)["data"] == 1000
    assert len(body) > 20 and len(pieces) > 3, [len(p) for p in pieces]


def test_trickled_download_is_too_slow(tmp_path: Path, media: Media) -> None:
    rule = {"kind": "trickle", "endpoint": "download", "seconds": 0.01, "chunk": 64}
    with sandbox(tmp_path, rule) as srv:
        url = result_url("kling", srv, media)
        limits = Limits(max_bytes=10**8, min_rate=1024 * 1024, rate_grace=0.3)
        with pytest.raises(TransientError, match="too slow") as caught:
            fetch(url, tmp_path / "out", limits)
    assert type(caught.value) is TransientError  # the server answered: not UnreachableError


# --------------------------------------------------------------------------- downloads


def result_url(kind: str, srv: SandboxServer, media: Media) -> str:
    async def go(c: httpx.AsyncClient) -> str:
        p = provider(kind, srv.base_url, c)
        status = await finished(p, await submit(p, srv, media))
        assert status.phase == "succeeded", status
        assert status.result_url is not None
        return status.result_url

    return run(go)


def fetch(url: str, folder: Path, limits: Limits | None = None) -> Any:
    async def go(c: httpx.AsyncClient) -> Any:
        return await download_result(c, url, folder / "job-1.mp4", tools=find_tools(),
                                     expect_seconds=None, job_id="job-1", limits=limits)  # fmt: skip

    return run(go)


def test_redirect_loop(tmp_path: Path, media: Media) -> None:
    with sandbox(tmp_path, {"kind": "redirect_loop"}) as srv:
        url = result_url("kie", srv, media)
        with kie_client(srv.base_url) as kie:
            hop = kie.get(url)
        assert hop.status_code == 302 and hop.headers["location"] == url
        with pytest.raises(ResultInvalidError, match="redirects in a loop"):
            fetch(url, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("announced", [True, False])
def test_huge_result(tmp_path: Path, media: Media, announced: bool) -> None:
    rule = {"kind": "huge_result", "size": 8 * 1024 * 1024, "content_length": announced}
    with sandbox(tmp_path, rule) as srv:
        url = result_url("acedata", srv, media)
        with pytest.raises(ResultInvalidError) as caught:
            fetch(url, tmp_path / "out", Limits(max_bytes=1024 * 1024))
    words = "is 8388608 bytes, over 1048576" if announced else "is over 1048576 bytes"
    assert words in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("url", [None, "http://[::1/x.mp4"])
def test_bad_result_url(kind: str, url: str | None, tmp_path: Path, media: Media) -> None:
    rule: dict[str, Any] = {"kind": "bad_result_url"} | ({"url": url} if url else {})
    with sandbox(tmp_path, rule) as srv:
        got = result_url(kind, srv, media)
    assert got == (url or "http://127.0.0.1:99999/x")
    with pytest.raises(ResultInvalidError, match="cannot be requested") as caught:
        fetch(got, tmp_path / "out")
    assert "job job-1" in str(caught.value)


def test_bad_result_url_of_another_scheme_never_reaches_a_download(
    tmp_path: Path, media: Media
) -> None:
    with sandbox(tmp_path, {"kind": "bad_result_url", "url": "ftp://cdn.example/x.mp4"}) as srv:

        async def go(c: httpx.AsyncClient) -> TaskStatus:
            p = provider("kling", srv.base_url, c)
            return await finished(p, await submit(p, srv, media))

        status = run(go)
    assert status.phase == "failed" and "without a video URL" in (status.reason or "")


# --------------------------------------------------------------------------- task ids


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"task_id": ""}, "it is empty; 0 characters"),
        ({"task_id": "x", "repeat": 10_000}, "longer than 200 characters; 10000 characters"),
        ({"task_id": "\\ud800"}, "lone surrogate; 1 characters"),
        ({"task_id": "\\u001b[2J"}, "control or bidi characters"),
    ],
    ids=["empty", "10000", "surrogate", "escape"],
)
def test_weird_task_id(
    kind: str, spec: dict[str, Any], words: str, tmp_path: Path, media: Media
) -> None:
    with sandbox(tmp_path, {"kind": "weird_task_id", **spec}) as srv:
        with pytest.raises(AmbiguousError, match="job job-1") as caught:
            run(lambda c: submit(provider(kind, srv.base_url, c), srv, media))
        (entry,) = srv.ledger.snapshot()  # billed, whatever it was called
    assert words in str(caught.value)
    assert entry.answered_id == spec["task_id"] * spec.get("repeat", 1)
    assert entry.task_id and entry.task_id != entry.answered_id


def test_weird_task_id_is_sent_as_written(tmp_path: Path) -> None:
    body = {"model": "kling-2.6/motion-control",
            "input": {"input_urls": ["http://127.0.0.1:9/i.png"], "video_urls": ["http://127.0.0.1:9/v.mp4"],
                      "character_orientation": "video", "mode": "720p"}}  # fmt: skip
    rule = {"kind": "weird_task_id", "task_id": "\\ud800"}
    with sandbox(tmp_path, rule) as srv, kie_client(srv.base_url) as kie:
        answer = kie.post("/api/v1/jobs/createTask", json=body)
    assert b'"taskId":"\\ud800"' in answer.content
    assert json.loads(answer.content)["data"]["taskId"] == "\ud800"


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_duplicate_task_id(kind: str, tmp_path: Path, media: Media) -> None:
    with sandbox(tmp_path, {"kind": "duplicate_task_id", "times": 1}) as srv:

        async def go(c: httpx.AsyncClient) -> list[Handle]:
            p = provider(kind, srv.base_url, c)
            return [await submit(p, srv, media, n) for n in (1, 2, 3)]

        first, second, third = run(go)
        entries = srv.ledger.snapshot()
    assert second.task_id == first.task_id != third.task_id  # two jobs, one id
    assert len({e.task_id for e in entries}) == 3  # three tasks made and billed
    assert [e.answered_id for e in entries] == [None, entries[0].task_id, None]


# --------------------------------------------------------------------------- profiles


def test_profile_yaml_spells_every_new_kind(tmp_path: Path) -> None:
    text = r"""
faults:
  - {kind: huge_body, endpoint: create, size: 1000, content_length: false}
  - {kind: trickle, endpoint: download, chunk: 8}
  - {kind: redirect_loop}
  - {kind: bad_result_url, url: "ftp://x/y"}
  - {kind: weird_task_id, task_id: "\\ud800"}
  - {kind: weird_task_id, task_id: "x", repeat: 10000}
  - {kind: duplicate_task_id, after: 1}
  - {kind: huge_result}
"""
    (tmp_path / "p.yaml").write_text(text)
    rules = FaultProfile.load(tmp_path / "p.yaml").faults
    assert [r.kind for r in rules] == [
        "huge_body", "trickle", "redirect_loop", "bad_result_url", "weird_task_id",
        "weird_task_id", "duplicate_task_id", "huge_result",
    ]  # fmt: skip
    assert (rules[0].size, rules[0].content_length) == (1000, False)
    assert (rules[1].chunk, rules[1].seconds) == (8, 1.0)  # trickle's default pace
    assert rules[3].url == "ftp://x/y"
    assert rules[4].task_id == "\\ud800" and len(rules[5].answered_id) == 10_000
    assert rules[7].size == 64 * 1024 * 1024 and rules[7].content_length
    assert yaml.safe_load(text) is not None


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"kind": "huge_body", "endpoint": "download"}, "use huge_result"),
        ({"kind": "weird_task_id"}, "needs the id text"),
        ({"kind": "weird_task_id", "task_id": "\ud800"}, "write it as the JSON escape"),
        ({"kind": "weird_task_id", "task_id": 'a"b'}, "inside of a JSON string"),
        ({"kind": "huge_result", "size": 0}, "at least 1"),
        ({"kind": "huge_result", "content_length": "no"}, "true or false"),
        ({"kind": "bad_result_url", "url": 7}, "must be a string"),
        ({"kind": "trickle", "chunk": 1.5}, "whole number"),
    ],
)
def test_profile_mistakes_are_named(rule: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FaultProfile.from_dict({"faults": [rule]})
