"""AceData Cloud pure builders and parsers, with the payloads documented in providers.md section 2."""

from __future__ import annotations

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
from pipeline.providers import acedata
from pipeline.providers.base import InputURLs, ProviderConfig
from pipeline.providers.http import Reply

URLS = InputURLs("https://cdn.acedata.cloud/e724d7f13d.png", "https://cdn.acedata.cloud/odwfm5.mp4")
CONFIG = ProviderConfig(name="acedata", model="kling-v2-6", base_url="https://api.acedata.cloud")
WHAT = "acedata create for job j1"
TASK = "20068983-0cc9-4c6a-aeb6-9c6a3c668be0"


def job(**settings: object) -> Job:
    return Job(
        id="j1",
        image=InputRef(URLS.image_url, url=URLS.image_url),
        video=InputRef(URLS.video_url, url=URLS.video_url),
        settings=JobSettings(**settings),  # type: ignore[arg-type]
        provider="acedata",
        model="kling-v2-6",
    )


def reply(body: object, status: int = 200, retry_after: float | None = None) -> Reply:
    return Reply(status=status, body=body, text=json.dumps(body), retry_after=retry_after)


def error(code: str, message: str = "m") -> dict[str, object]:
    return {"success": False, "error": {"code": code, "message": message}, "trace_id": "2cf86e86"}


# --------------------------------------------------------------------------- create


def test_create_body_is_async_with_yes_no_sound() -> None:
    body = acedata.build_create_body(
        job(prompt="让画面生动起来", character_orientation="image"), URLS, CONFIG
    )
    assert body == {
        "model_name": "kling-v2-6",
        "image_url": URLS.image_url,
        "video_url": URLS.video_url,
        "prompt": "让画面生动起来",
        "mode": "std",
        "character_orientation": "image",
        "keep_original_sound": "yes",
        "async": True,
    }
    muted = acedata.build_create_body(job(keep_original_sound=False, mode="pro"), URLS, CONFIG)
    assert muted["keep_original_sound"] == "no" and muted["mode"] == "pro"
    assert "prompt" not in muted


def test_options_pass_through_but_async_stays_on() -> None:
    config = ProviderConfig(
        name="acedata", model="kling-v2-6", base_url="x", options={"foo": "bar", "async": False}
    )
    body = acedata.build_create_body(job(), URLS, config)
    assert body["foo"] == "bar" and body["async"] is True


def test_create_returns_the_async_task_id() -> None:
    assert acedata.parse_create(reply({"task_id": TASK}), what=WHAT) == TASK


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "invalid_token", AuthError),
        (401, "token_expired", AuthError),
        (400, "token_mismatched", AuthError),
        (400, "no_token", AuthError),
        (400, "disabled", AuthError),
        (403, "used_up", OutOfCreditsError),
        (429, "too_many_requests", RateLimitedError),
        (400, "bad_request", RefusedError),
        (400, "api_not_implemented", RefusedError),
        (404, "no_api", BatchFatalError),
        (500, "api_error", AmbiguousError),
    ],
)
def test_create_errors(status: int, code: str, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        acedata.parse_create(reply(error(code, "model is invalid."), status), what=WHAT)
    assert type(info.value) is expected
    assert info.value.code == code  # type: ignore[attr-defined]
    assert info.value.http_status == status  # type: ignore[attr-defined]


def test_documented_error_example_and_variants_without_success_flag() -> None:
    with pytest.raises(AmbiguousError, match="fetch failed"):
        acedata.parse_create(reply(error("api_error", "fetch failed"), 500), what=WHAT)
    # Some OpenAPI examples omit success:false; the status and code still decide.
    with pytest.raises(OutOfCreditsError):
        acedata.parse_create(reply({"error": {"code": "used_up", "message": "x"}}, 403), what=WHAT)
    with pytest.raises(RateLimitedError) as info:
        acedata.parse_create(Reply(429, None, "Too Many Requests", retry_after=30.0), what=WHAT)
    assert info.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("body", "status"),
    [({}, 200), ({"task_id": ""}, 200), ({"success": True}, 200), (None, 200), (None, 502)],
)
def test_create_without_task_id_or_readable_body_is_ambiguous(body: object, status: int) -> None:
    raw = Reply(status, body, "<html>" if body is None else json.dumps(body))
    with pytest.raises(AmbiguousError):
        acedata.parse_create(raw, what=WHAT)


def test_error_messages_are_redacted() -> None:
    body = error("invalid_token", "token tok-123456789abc is invalid")
    with pytest.raises(AuthError) as info:
        acedata.parse_create(reply(body, 401), what=WHAT, secrets=["tok-123456789abc"])
    assert "tok-123456789abc" not in str(info.value)


# --------------------------------------------------------------------------- tasks


def test_query_bodies() -> None:
    assert acedata.build_retrieve_body(TASK) == {"id": TASK, "action": "retrieve"}
    assert acedata.build_batch_body(["a", "b"]) == {"ids": ["a", "b"], "action": "retrieve_batch"}


def record(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "_id": "67c5163f550a4144a5b68698",
        "id": TASK,
        "created_at": 1740969535.333,
        "started_at": 1740969535.393,
        "request": {"image_url": URLS.image_url, "async": True},
        "type": "motion",
    }
    base.update(fields)
    return base


SUCCEEDED = {
    "success": True,
    "video_id": "842578800134742051",
    "video_url": "https://cdn.acedata.cloud/out.mp4",
    "duration": "5.066",
    "state": "succeed",
    "task_id": TASK,
}


def query(body: object, status: int = 200) -> object:
    return acedata.parse_query(reply(body, status), TASK, what="q")


def test_running_while_response_is_absent() -> None:
    status = query(record())
    assert status.phase == "running" and status.task_id == TASK  # type: ignore[attr-defined]


def test_documented_succeeded_record() -> None:
    body = record(finished_at=1740969852.463, elapsed=317.07, response=SUCCEEDED)
    status = query(body)
    assert status.phase == "succeeded"  # type: ignore[attr-defined]
    assert status.result_url == "https://cdn.acedata.cloud/out.mp4"  # type: ignore[attr-defined]
    assert status.duration == pytest.approx(5.066)  # type: ignore[attr-defined]
    assert status.ran_seconds == pytest.approx(317.07)  # type: ignore[attr-defined]
    # Without ``elapsed``, from the time stamps (seconds).
    body = record(created_at=1740969535.333, finished_at=1740969852.463, response=SUCCEEDED)
    assert query(body).ran_seconds == pytest.approx(317.13)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"success": False, "error": {"code": "api_error", "message": "nsfw image"}}, "nsfw image"),
        ({"state": "failed", "task_id": TASK}, "task failed without a reason"),
        ({"success": False, "error": "video too long"}, "video too long"),
        ({"state": "succeed", "video_url": ""}, "provider reported success without a video_url"),
    ],
)
def test_failed_records(response: dict[str, object], reason: str) -> None:
    status = query(record(response=response, finished_at=1.0))
    assert status.phase == "failed"  # type: ignore[attr-defined]
    assert status.reason.startswith(reason)  # type: ignore[attr-defined]


def test_unknown_state_is_running_and_finished_without_response_is_failed() -> None:
    assert query(record(response={"state": "processing"})).phase == "running"  # type: ignore[attr-defined]
    assert query(record(finished_at=2.0)).phase == "failed"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "invalid_token", AuthError),
        (403, "used_up", OutOfCreditsError),
        (429, "too_many_requests", RateLimitedError),
        (500, "api_error", TransientError),
        (400, "bad_request", RefusedError),
    ],
)
def test_query_errors(status: int, code: str, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        query(error(code), status)
    assert type(info.value) is expected


def test_unreadable_query_is_transient() -> None:
    with pytest.raises(TransientError):
        acedata.parse_query(Reply(200, None, "garbage"), TASK, what="q")
    with pytest.raises(TransientError):
        acedata.parse_query(Reply(503, None, "<html>"), TASK, what="q")


def test_batch_is_keyed_by_task_id_and_ignores_strangers() -> None:
    body = {
        "items": [
            record(id="a", response={**SUCCEEDED, "task_id": "a"}),
            record(id="b"),
            {"response": {"state": "failed", "task_id": "c"}},
            record(id="zzz"),
            "junk",
        ],
        "count": 5,
    }
    found = acedata.parse_batch(reply(body), ["a", "b", "c", "d"], what="q")
    assert set(found) == {"a", "b", "c"}
    assert found["a"].phase == "succeeded"
    assert found["b"].phase == "running"
    assert found["c"].phase == "failed"
    with pytest.raises(TransientError):
        acedata.parse_batch(reply({"count": 0}), ["a"], what="q")
    with pytest.raises(AuthError):
        acedata.parse_batch(reply(error("invalid_token"), 401), ["a"], what="q")


def test_capabilities() -> None:
    cls = acedata.AceDataProvider
    assert cls.has_batch_poll and cls.has_sound_field
    assert not cls.has_upload and not cls.has_client_id
