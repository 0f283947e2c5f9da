"""Provider clients over real loopback sockets: wire format, auth headers, transport faults.

The scripted server in :mod:`loopback` produces each fault at the byte level (close, RST, half a
body, silence, garbage), so the classification is that of the real httpx stack.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from loopback import CLOSE, HANG, PARTIAL, RESET, Answer, Loopback, http_client, ok, refused_url

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    ConfigError,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnreachableError,
)
from pipeline.jobs import Handle, InputRef, Job, JobSettings, TaskStatus
from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import Credentials, InputURLs, Provider, ProviderConfig
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider
from pipeline.providers.sandbox import SandboxProvider
from pipeline.storage.headers import parse_retry_after

T = TypeVar("T")

KIE_KEY = "kie-key-0123456789"
ACE_KEY = "ace-token-0123456789"
KLING_AK, KLING_SK = "kling-ak-0123456789", "kling-sk-0123456789"
URLS = InputURLs("https://cdn.example/char.png", "https://cdn.example/dance.mp4")


def job(provider: str = "kie", model: str = "kling-2.6/motion-control") -> Job:
    return Job(
        id="alice-salsa",
        image=InputRef(URLS.image_url, url=URLS.image_url),
        video=InputRef(URLS.video_url, url=URLS.video_url),
        settings=JobSettings(),
        provider=provider,
        model=model,
    )


def make(kind: str, base_url: str, client: httpx.AsyncClient, **kw: Any) -> Provider:
    if kind == "kie":
        cfg = ProviderConfig("kie", KieProvider.default_model, base_url, kw.pop("upload_url", None))
        return KieProvider(cfg, Credentials({"api_key": KIE_KEY}), client, **kw)
    if kind == "sandbox":
        cfg = ProviderConfig("sandbox", KieProvider.default_model, base_url)
        return SandboxProvider(cfg, Credentials(), client, **kw)
    if kind == "acedata":
        cfg = ProviderConfig("acedata", "kling-v2-6", base_url)
        return AceDataProvider(cfg, Credentials({"api_key": ACE_KEY}), client, **kw)
    cfg = ProviderConfig("kling", "kling-v2-6", base_url)
    creds = Credentials({"access_key": KLING_AK, "secret_key": KLING_SK})
    return KlingProvider(cfg, creds, client, **kw)


#: The read timeout: short only where the scripted server hangs on purpose. Everywhere else a
#: loaded machine may take a while to schedule the server thread; that is not a fault.
HANG_READ = 0.25
READ = 30.0


def read_for(fault: Any) -> float:
    return HANG_READ if isinstance(fault, str) and fault == HANG else READ


def run(fn: Callable[[httpx.AsyncClient], Awaitable[T]], *, read: float = READ) -> T:
    async def main() -> T:
        timeout = httpx.Timeout(30.0, read=read)
        async with http_client(timeout=timeout) as client:
            return await fn(client)

    return asyncio.run(main())


ACCEPTED = {
    "kie": {"code": 200, "msg": "success", "data": {"taskId": "task_kling-2.6_1"}},
    "acedata": {"task_id": "20068983-0cc9"},
    "kling": {
        "code": 0,
        "message": "SUCCEED",
        "data": {"task_id": "8672837", "task_status": "submitted"},
    },
}
RUNNING = {
    "kie": {"code": 200, "msg": "success", "data": {"taskId": "t", "state": "generating"}},
    "acedata": {"id": "t", "created_at": 1.0},
    "kling": {"code": 0, "data": {"task_id": "t", "task_status": "processing"}},
}
PROVIDERS = ["kie", "acedata", "kling"]


def submit(kind: str, base_url: str, *, read: float = READ) -> Handle:
    model = "kling-2.6/motion-control" if kind == "kie" else "kling-v2-6"
    return run(
        lambda c: make(kind, base_url, c).submit(job(kind, model), URLS, client_id="mp-1"),
        read=read,
    )


def poll(kind: str, base_url: str, *, read: float = READ) -> TaskStatus:
    return run(lambda c: make(kind, base_url, c).poll(Handle(kind, "t")), read=read)


# --------------------------------------------------------------------------- Retry-After


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    # One parser now (pipeline.run.retry): RFC 9110 delta-seconds is 1*DIGIT, so "-3" is not a
    # Retry-After value (test_retry pins "-5" -> None); next_wait treats None and 0.0 alike.
    assert parse_retry_after("-3") is None
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0
    for bad in (None, "", "soon", "nan", "Wed, 99 Foo"):
        assert parse_retry_after(bad) is None


# --------------------------------------------------------------------------- create faults


@pytest.mark.parametrize("kind", PROVIDERS)
def test_create_accepted(kind: str) -> None:
    with Loopback() as srv:
        srv.push(ok(ACCEPTED[kind]))
        handle = submit(kind, srv.base_url)
    assert handle.provider == kind and handle.task_id
    assert handle.client_id == ("mp-1" if kind == "kling" else None)


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    "fault",
    [
        CLOSE,
        RESET,
        PARTIAL,
        HANG,
        Answer(200, "<html>hello</html>"),
        Answer(200, b""),
        Answer(503, "<html>Service Unavailable</html>"),
        Answer(500, {"unexpected": True}),
    ],
    ids=["close", "reset", "partial", "read-timeout", "garbage", "empty", "503-html", "500-json"],
)
def test_create_that_may_have_happened_is_ambiguous(kind: str, fault: Any) -> None:
    with Loopback() as srv:
        srv.push(fault)
        with pytest.raises(AmbiguousError) as info:
            submit(kind, srv.base_url, read=read_for(fault))
        assert len(srv.requests) == 1  # the create reached the server
    assert "alice-salsa" in str(info.value)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_create_that_never_connected_is_unreachable_and_names_the_host(kind: str) -> None:
    with pytest.raises(UnreachableError) as info:
        submit(kind, refused_url().replace("://", "://user:pw@"))
    assert isinstance(info.value, TransientError)  # nothing was sent: safe to send again
    assert info.value.host == "127.0.0.1"
    assert "could not connect to 127.0.0.1" in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("header", "expected"), [("9", 9.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), (None, None)]
)
def test_http_429_is_rate_limited_with_retry_after(
    kind: str, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header else {}
    with Loopback() as srv:
        srv.push(Answer(429, "Too Many Requests", headers))
        with pytest.raises(RateLimitedError) as info:
            submit(kind, srv.base_url)
    assert info.value.retry_after == expected


def test_kie_rate_limit_inside_http_200_keeps_the_header() -> None:
    with Loopback() as srv:
        srv.push(ok({"code": 429, "msg": "too many"}, **{"Retry-After": "4"}))
        with pytest.raises(RateLimitedError) as info:
            submit("kie", srv.base_url)
    assert info.value.retry_after == 4.0


def test_a_header_no_request_can_carry_is_a_config_error_and_nothing_is_sent() -> None:
    """A key with its line break (pasted from a file) makes an unsendable Authorization header:
    refused before a byte leaves, as the user's to fix, never retried as an outage."""
    creds = Credentials({"api_key": KIE_KEY + "\r\nX-Injected: 1"})
    with Loopback() as srv:
        cfg = ProviderConfig("kie", KieProvider.default_model, srv.base_url)

        async def submit_it(client: httpx.AsyncClient) -> Handle:
            provider = KieProvider(cfg, creds, client)
            return await provider.submit(
                job("kie", "kling-2.6/motion-control"), URLS, client_id="c"
            )

        with pytest.raises(ConfigError, match="cannot encode the request") as info:
            run(submit_it)
        assert srv.requests == []
    assert KIE_KEY not in str(info.value)


# --------------------------------------------------------------------------- poll faults


@pytest.mark.parametrize("kind", PROVIDERS)
def test_poll_running(kind: str) -> None:
    with Loopback() as srv:
        srv.push(ok(RUNNING[kind]))
        assert poll(kind, srv.base_url).phase == "running"


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    "fault",
    [CLOSE, RESET, PARTIAL, HANG, Answer(200, "garbage"), Answer(502, "<html>bad gateway</html>")],
    ids=["close", "reset", "partial", "read-timeout", "garbage", "502"],
)
def test_poll_trouble_is_transient_never_a_failed_job(kind: str, fault: Any) -> None:
    with Loopback() as srv:
        srv.push(fault)
        with pytest.raises(TransientError):
            poll(kind, srv.base_url, read=read_for(fault))
    with pytest.raises(TransientError):
        poll(kind, refused_url())


# --------------------------------------------------------------------------- auth and secrets


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("kie", ok({"code": 401, "msg": f"Unauthorized: Bearer {KIE_KEY} is unknown"})),
        (
            "acedata",
            Answer(
                401,
                {"success": False, "error": {"code": "invalid_token", "message": f"bad {ACE_KEY}"}},
            ),
        ),
        ("kling", Answer(401, {"code": 1002, "message": f"bad signature for {KLING_AK}"})),
    ],
)
def test_rejected_key_is_auth_error_without_the_key(kind: str, answer: Answer) -> None:
    with Loopback() as srv:
        srv.push(answer)
        with pytest.raises(AuthError) as info:
            submit(kind, srv.base_url)
    text = f"{info.value} {info.value.args!r} {vars(info.value)!r}"
    for secret in (KIE_KEY, ACE_KEY, KLING_AK, KLING_SK):
        assert secret not in text
    assert "Bearer ***" in text or "***" in text


def test_kie_wire_format() -> None:
    with Loopback() as srv:
        srv.push(ok(ACCEPTED["kie"]), ok(RUNNING["kie"]))
        handle = submit("kie", srv.base_url)
        run(lambda c: make("kie", srv.base_url, c).poll(handle))
    create, query = srv.requests
    assert (create.method, create.path) == ("POST", "/api/v1/jobs/createTask")
    assert create.headers["authorization"] == f"Bearer {KIE_KEY}"
    assert create.headers["content-type"] == "application/json"
    body = create.json()
    assert body["model"] == "kling-2.6/motion-control"
    assert body["input"]["input_urls"] == [URLS.image_url]
    assert body["input"]["mode"] == "720p"
    assert (query.method, query.target) == (
        "GET",
        "/api/v1/jobs/recordInfo?taskId=task_kling-2.6_1",
    )
    assert query.headers["authorization"] == f"Bearer {KIE_KEY}"


def test_sandbox_sends_the_dummy_token_and_needs_no_key() -> None:
    with Loopback() as srv:
        srv.push(ok(ACCEPTED["kie"]))
        handle = run(lambda c: make("sandbox", srv.base_url, c).submit(job(), URLS, client_id=None))
    assert handle.provider == "sandbox"
    assert srv.requests[0].headers["authorization"] == "Bearer sandbox"


def test_unfilled_embedded_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        submit("kie", "embedded")


def test_kie_upload_is_multipart_on_the_upload_host(tmp_path: Path) -> None:
    clip = tmp_path / "Dance.MP4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    answer = ok(
        {
            "success": True,
            "code": 200,
            "msg": "File uploaded successfully",
            "data": {"downloadUrl": "https://tempfile.redpandaai.co/x/videos/f.mp4"},
        }
    )
    with Loopback() as api, Loopback() as uploads:
        uploads.push(answer)

        async def go(client: httpx.AsyncClient) -> str:
            provider = make("kie", api.base_url, client, upload_url=uploads.base_url)
            return await provider.upload(clip, file_name="abc123-ff.mp4", content_type="video/mp4")

        url = run(go)
    assert url == "https://tempfile.redpandaai.co/x/videos/f.mp4"
    assert api.requests == []
    (request,) = uploads.requests
    assert (request.method, request.path) == ("POST", "/api/file-stream-upload")
    assert request.headers["authorization"] == f"Bearer {KIE_KEY}"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.body
    assert b'name="file"; filename="abc123-ff.mp4"' in body
    assert b"Content-Type: video/mp4" in body
    assert clip.read_bytes() in body
    assert b'name="uploadPath"\r\n\r\nmotion-pipeline/videos' in body
    assert b'name="fileName"\r\n\r\nabc123-ff.mp4' in body


def test_kie_refresh_result_url_asks_download_url() -> None:
    fresh = ok({"code": 200, "msg": "success", "data": "https://tempfile.redpandaai.co/fresh.mp4"})
    status = TaskStatus("t", "succeeded", result_url="https://kie.example/old.mp4")
    with Loopback() as srv:
        srv.push(fresh)
        url = run(
            lambda c: make("kie", srv.base_url, c).refresh_result_url(Handle("kie", "t"), status)
        )
    assert url == "https://tempfile.redpandaai.co/fresh.mp4"
    (request,) = srv.requests
    assert (request.method, request.path) == ("POST", "/api/v1/common/download-url")
    assert request.json() == {"url": "https://kie.example/old.mp4"}


def test_kie_has_nothing_to_reconcile_with() -> None:
    with pytest.raises(AmbiguousError, match="resolve it by hand"):
        run(lambda c: make("kie", "http://127.0.0.1:9", c).reconcile(job(), "mp-1"))


def test_acedata_wire_format_and_batch_poll() -> None:
    batch = {
        "items": [
            {"id": "a", "response": {"state": "succeed", "video_url": "https://c/a.mp4"}},
            {"id": "b"},
        ],
        "count": 2,
    }
    with Loopback() as srv:
        srv.push(ok(ACCEPTED["acedata"]), ok(batch))
        submit("acedata", srv.base_url)
        found = run(
            lambda c: make("acedata", srv.base_url, c).poll_many(
                [Handle("acedata", "a"), Handle("acedata", "b")]
            )
        )
    assert found["a"].result_url == "https://c/a.mp4" and found["b"].phase == "running"
    create, query = srv.requests
    assert (create.method, create.path) == ("POST", "/kling/motion")
    assert create.headers["authorization"] == f"Bearer {ACE_KEY}"
    assert create.json()["async"] is True and create.json()["keep_original_sound"] == "yes"
    assert (query.method, query.path) == ("POST", "/kling/tasks")
    assert query.json() == {"ids": ["a", "b"], "action": "retrieve_batch"}


def _claims(authorization: str) -> dict[str, Any]:
    token = authorization.removeprefix("Bearer ")
    header, payload, signature = token.split(".")
    mac = hmac.new(KLING_SK.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_kling_wire_format_jwt_and_reconcile() -> None:
    now = [1_800_000_000.0]
    found = ok(
        {
            "code": 0,
            "data": {
                "task_id": "99",
                "task_status": "processing",
                "task_info": {"external_task_id": "mp-1"},
            },
        }
    )
    with Loopback() as srv:
        srv.push(ok(ACCEPTED["kling"]), Answer(404, {"code": 1203, "message": "not found"}), found)

        async def go(client: httpx.AsyncClient) -> tuple[Handle, Handle | None, Handle | None]:
            provider = make("kling", srv.base_url, client, clock=lambda: now[0])
            handle = await provider.submit(job("kling", "kling-v2-6"), URLS, client_id="mp-1")
            missing = await provider.reconcile(job("kling"), "mp-0")
            now[0] += 1600  # under 5 minutes left: the next call carries a fresh token
            return handle, missing, await provider.reconcile(job("kling"), "mp-1")

        handle, missing, adopted = run(go)
    assert handle == Handle("kling", "8672837", client_id="mp-1")
    assert missing is None
    assert adopted == Handle("kling", "99", client_id="mp-1")
    create, lookup_missing, lookup_found = srv.requests
    assert (create.method, create.path) == ("POST", "/v1/videos/motion-control")
    assert create.json()["external_task_id"] == "mp-1"
    assert (lookup_missing.method, lookup_missing.path) == ("GET", "/v1/videos/motion-control/mp-0")
    first = _claims(create.headers["authorization"])
    assert first == {"iss": KLING_AK, "exp": 1_800_000_000 + 1800, "nbf": 1_800_000_000 - 5}
    assert lookup_missing.headers["authorization"] == create.headers["authorization"]
    assert _claims(lookup_found.headers["authorization"])["exp"] == 1_800_001_600 + 1800


def test_errors_are_provider_errors() -> None:
    # The runner catches ProviderError subclasses only; nothing else may leak from a fault.
    with Loopback() as srv:
        srv.push(RESET)
        with pytest.raises(ProviderError):
            poll("kie", srv.base_url)
