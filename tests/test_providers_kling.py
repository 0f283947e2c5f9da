"""Kling official API: JWT, builders and parsers with the payloads of providers.md section 3."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    BatchFatalError,
    OutOfCreditsError,
    RateLimitedError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import InputRef, Job, JobSettings
from pipeline.providers import kling
from pipeline.providers.base import InputURLs, ProviderConfig
from pipeline.providers.http import Reply

URLS = InputURLs("https://cdn.example/multi-3.png", "https://cdn.example/dance.mp4")
CONFIG = ProviderConfig(
    name="kling", model="kling-v2-6", base_url="https://api-singapore.klingai.com"
)
WHAT = "kling create for job j1"


def job(**settings: object) -> Job:
    return Job(
        id="j1",
        image=InputRef(URLS.image_url, url=URLS.image_url),
        video=InputRef(URLS.video_url, url=URLS.video_url),
        settings=JobSettings(**settings),  # type: ignore[arg-type]
        provider="kling",
        model="kling-v2-6",
    )


def reply(body: object, status: int = 200, retry_after: float | None = None) -> Reply:
    return Reply(status=status, body=body, text=json.dumps(body), retry_after=retry_after)


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --------------------------------------------------------------------------- JWT


def test_jwt_structure_and_signature() -> None:
    token = kling.mint_jwt("AK-123", "SK-secret", now=1_700_000_000.7)
    header, payload, signature = token.split(".")
    assert json.loads(b64decode(header)) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(b64decode(payload)) == {
        "iss": "AK-123",
        "exp": 1_700_000_000 + 1800,
        "nbf": 1_700_000_000 - 5,
    }
    expected = hmac.new(b"SK-secret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert b64decode(signature) == expected
    assert "=" not in token
    other = kling.mint_jwt("AK-123", "SK-other", now=1_700_000_000.7)
    assert other.split(".")[2] != signature


def test_token_is_cached_and_reminted_before_expiry() -> None:
    now = [1_000_000.0]
    cache = kling.TokenCache("AK", "SK", clock=lambda: now[0])
    first = cache.token()
    now[0] += 1800 - 301  # 301 s left: still good
    assert cache.token() == first
    now[0] += 2  # 299 s left: re-mint
    second = cache.token()
    assert second != first
    exp = json.loads(b64decode(second.split(".")[1]))["exp"]
    assert exp == int(now[0]) + 1800
    assert "SK" not in repr(cache)


# --------------------------------------------------------------------------- create


def test_create_body_carries_external_task_id() -> None:
    body = kling.build_create_body(
        job(
            prompt="The girl is wearing a loose gray T-shirt",
            character_orientation="image",
            mode="pro",
        ),
        URLS,
        CONFIG,
        "mp-j1-abc",
    )
    assert body == {
        "model_name": "kling-v2-6",
        "image_url": URLS.image_url,
        "prompt": "The girl is wearing a loose gray T-shirt",
        "video_url": URLS.video_url,
        "keep_original_sound": "yes",
        "character_orientation": "image",
        "mode": "pro",
        "external_task_id": "mp-j1-abc",
    }
    muted = kling.build_create_body(job(keep_original_sound=False), URLS, CONFIG, "x")
    assert muted["keep_original_sound"] == "no"


def test_create_body_passes_options_through() -> None:
    config = ProviderConfig(
        name="kling", model="kling-v3", base_url="x", options={"watermark_info": {"enabled": False}}
    )
    body = kling.build_create_body(job(), URLS, config, "cid")
    assert body["watermark_info"] == {"enabled": False}


DOC_CREATE = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "c0656403-1",
    "data": {
        "task_id": "867283741759111202",
        "task_info": {"external_task_id": "xxx"},
        "task_status": "submitted",
        "created_at": 1774805076166,
        "updated_at": 1774805076166,
    },
}


def test_create_success() -> None:
    assert kling.parse_create(reply(DOC_CREATE), what=WHAT) == "867283741759111202"
    numeric = {"code": 0, "data": {"task_id": 867283741759111202}}
    assert kling.parse_create(reply(numeric), what=WHAT) == "867283741759111202"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (1000, 401, AuthError),
        (1001, 401, AuthError),
        (1002, 401, AuthError),
        (1003, 401, AuthError),
        (1004, 401, AuthError),
        (1100, 429, OutOfCreditsError),
        (1101, 429, OutOfCreditsError),
        (1102, 429, OutOfCreditsError),
        (1102, 200, OutOfCreditsError),
        (1303, 429, RateLimitedError),
        (1302, 429, RateLimitedError),
        (1303, 200, RateLimitedError),
        (1200, 400, RefusedError),
        (1201, 400, RefusedError),
        (1300, 400, RefusedError),
        (1301, 400, RefusedError),
        (1301, 200, RefusedError),
        (5000, 500, AmbiguousError),
        (5001, 503, AmbiguousError),
        (5002, 504, AmbiguousError),
    ],
)
def test_create_business_errors(code: int, status: int, expected: type[Exception]) -> None:
    body = {"code": code, "message": "msg-from-kling", "request_id": "r"}
    with pytest.raises(expected) as info:
        kling.parse_create(reply(body, status, retry_after=2.0), what=WHAT)
    assert type(info.value) is expected
    assert info.value.code == str(code)  # type: ignore[attr-defined]
    assert "msg-from-kling" in str(info.value)
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after == 2.0


@pytest.mark.parametrize(
    "body", [{"code": 0, "data": {}}, {"code": 0, "data": None}, {"code": 0}, ["x"]]
)
def test_create_accepted_without_task_id_is_ambiguous(body: object) -> None:
    with pytest.raises(AmbiguousError):
        kling.parse_create(reply(body), what=WHAT)


def test_create_without_envelope_falls_back_to_http_status() -> None:
    with pytest.raises(AuthError):
        kling.parse_create(Reply(401, None, "Unauthorized"), what=WHAT)
    with pytest.raises(RateLimitedError):
        kling.parse_create(Reply(429, None, ""), what=WHAT)
    with pytest.raises(BatchFatalError):
        kling.parse_create(Reply(404, None, "not found"), what=WHAT)
    with pytest.raises(AmbiguousError):
        kling.parse_create(Reply(502, None, "<html>"), what=WHAT)
    with pytest.raises(AmbiguousError):
        kling.parse_create(Reply(500, {"code": 0}, "{}"), what=WHAT)


def test_create_messages_are_redacted() -> None:
    token = kling.mint_jwt("AK-abcdef123", "SK", now=1000.0)
    body = {"code": 1002, "message": f"invalid token {token} for AK-abcdef123"}
    with pytest.raises(AuthError) as info:
        kling.parse_create(reply(body, 401), what=WHAT, secrets=["AK-abcdef123"])
    assert token not in str(info.value) and "AK-abcdef123" not in str(info.value)


# --------------------------------------------------------------------------- query


def task(status: str, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "task_id": "867283741759111202",
        "task_status": status,
        "task_info": {"external_task_id": "mp-j1"},
        "created_at": 1774805076166,
        "updated_at": 1774805076166,
    }
    data.update(fields)
    return {"code": 0, "message": "SUCCEED", "request_id": "r", "data": data}


def query(body: object, status: int = 200) -> object:
    return kling.parse_query(reply(body, status), "867283741759111202", what="q")


@pytest.mark.parametrize("state", ["submitted", "processing", "queued-new"])
def test_running_states(state: str) -> None:
    assert query(task(state)).phase == "running"  # type: ignore[attr-defined]


def test_succeed_takes_the_first_video() -> None:
    body = task(
        "succeed",
        final_unit_deduction="5",
        task_result={
            "videos": [{"id": "v", "url": "https://cdn.klingai.com/o.mp4", "duration": "5.1"}]
        },
    )
    status = query(body)
    assert status.phase == "succeeded"  # type: ignore[attr-defined]
    assert status.result_url == "https://cdn.klingai.com/o.mp4"  # type: ignore[attr-defined]
    assert status.duration == pytest.approx(5.1)  # type: ignore[attr-defined]
    assert status.ran_seconds == 0.0  # type: ignore[attr-defined]  # the fixture's two stamps agree
    body["data"]["updated_at"] = 1774805171166  # type: ignore[index]
    assert query(body).ran_seconds == pytest.approx(95.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("result", [None, {}, {"videos": []}, {"videos": [{"url": ""}]}])
def test_succeed_without_video_is_failed(result: object) -> None:
    assert query(task("succeed", task_result=result)).phase == "failed"  # type: ignore[attr-defined]


def test_failed_carries_task_status_msg() -> None:
    status = query(task("failed", task_status_msg="Failure to pass the risk control system"))
    assert status.phase == "failed"  # type: ignore[attr-defined]
    assert status.reason == "Failure to pass the risk control system"  # type: ignore[attr-defined]
    assert query(task("failed")).reason == "task failed without a reason"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (5000, 500, TransientError),
        (5001, 503, TransientError),
        (1302, 429, RateLimitedError),
        (1004, 401, AuthError),
        (1203, 404, RefusedError),
    ],
)
def test_query_errors(code: int, status: int, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        query({"code": code, "message": "m"}, status)
    assert type(info.value) is expected


def test_query_transport_level_answers() -> None:
    with pytest.raises(TransientError):
        kling.parse_query(Reply(502, None, "<html>"), "t", what="q")
    with pytest.raises(TransientError):
        kling.parse_query(Reply(200, None, "{garbage"), "t", what="q")
    with pytest.raises(RefusedError) as info:
        kling.parse_query(Reply(404, None, "no"), "t", what="q")
    assert info.value.code == "404"


# --------------------------------------------------------------------------- reconcile lookup


def test_lookup_finds_the_task_of_our_external_id() -> None:
    found = kling.parse_lookup(reply(task("processing")), "mp-j1", what="l")
    assert found == "867283741759111202"


@pytest.mark.parametrize(
    "raw",
    [
        Reply(404, None, "not found"),
        Reply(404, {"code": 1203, "message": "task not found"}, "{}"),
        Reply(200, {"code": 1203, "message": "task not found"}, "{}"),
        Reply(400, {"code": 1202, "message": "no such method"}, "{}"),
    ],
)
def test_lookup_of_an_id_that_never_made_a_task(raw: Reply) -> None:
    assert kling.parse_lookup(raw, "mp-j1", what="l") is None


def test_lookup_ignores_a_task_with_another_external_id() -> None:
    body = task("processing", task_info={"external_task_id": "someone-else"})
    assert kling.parse_lookup(reply(body), "mp-j1", what="l") is None


def test_lookup_errors_stay_errors() -> None:
    with pytest.raises(TransientError):
        kling.parse_lookup(reply({"code": 5000, "message": "busy"}, 500), "mp-j1", what="l")
    with pytest.raises(AmbiguousError):
        kling.parse_lookup(reply({"code": 0, "data": {"task_status": "x"}}), "mp-j1", what="l")


def test_capabilities() -> None:
    cls = kling.KlingProvider
    assert cls.has_client_id and cls.has_sound_field
    assert not cls.has_upload and not cls.has_batch_poll
    assert set(cls.key_envs) == {"access_key", "secret_key"}
