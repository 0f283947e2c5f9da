"""Kie.ai pure builders and parsers, with the payloads documented in providers.md section 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    BadReplyError,
    BatchFatalError,
    OutOfCreditsError,
    RateLimitedError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import InputRef, Job, JobSettings
from pipeline.providers import kie
from pipeline.providers.base import InputURLs, ProviderConfig
from pipeline.providers.http import Reply
from pipeline.providers.kie import KieProvider
from pipeline.providers.sandbox import SandboxProvider

URLS = InputURLs("https://cdn.example/char.png", "https://cdn.example/dance.mp4")
CONFIG = ProviderConfig(name="kie", model="kling-2.6/motion-control", base_url="https://api.kie.ai")
WHAT = "kie create for job j1"


def job(model: str = "kling-2.6/motion-control", **settings: object) -> Job:
    return Job(
        id="j1",
        image=InputRef("char.png", path=Path("/in/char.png")),
        video=InputRef("dance.mp4", path=Path("/in/dance.mp4")),
        settings=JobSettings(**settings),  # type: ignore[arg-type]
        provider="kie",
        model=model,
    )


def reply(body: object, status: int = 200, retry_after: float | None = None) -> Reply:
    return Reply(status=status, body=body, text=json.dumps(body), retry_after=retry_after)


# --------------------------------------------------------------------------- create body


def test_create_body_matches_the_documented_minimal_request() -> None:
    body = kie.build_create_body(job(prompt="The cartoon character is dancing."), URLS, CONFIG)
    assert body == {
        "model": "kling-2.6/motion-control",
        "input": {
            "prompt": "The cartoon character is dancing.",
            "input_urls": ["https://cdn.example/char.png"],
            "video_urls": ["https://cdn.example/dance.mp4"],
            "character_orientation": "video",
            "mode": "720p",
        },
    }


@pytest.mark.parametrize(("mode", "wire"), [("std", "720p"), ("pro", "1080p")])
def test_mode_is_named_by_resolution(mode: str, wire: str) -> None:
    assert kie.build_create_body(job(mode=mode), URLS, CONFIG)["input"]["mode"] == wire


def test_no_sound_field_and_no_empty_prompt() -> None:
    body = kie.build_create_body(job(keep_original_sound=False), URLS, CONFIG)
    assert "keep_original_sound" not in body["input"]
    assert "prompt" not in body["input"]
    assert KieProvider.has_sound_field is False


def test_options_pass_through_for_kling_3() -> None:
    config = ProviderConfig(
        name="kie",
        model="kling-3.0/motion-control",
        base_url="https://api.kie.ai",
        options={"background_source": "input_video"},
    )
    body = kie.build_create_body(
        job("kling-3.0/motion-control", character_orientation="image"), URLS, config
    )
    assert body["model"] == "kling-3.0/motion-control"
    assert body["input"]["background_source"] == "input_video"
    assert body["input"]["character_orientation"] == "image"


# --------------------------------------------------------------------------- create response


def test_create_success_returns_the_opaque_task_id() -> None:
    body = {"code": 200, "msg": "success", "data": {"taskId": "task_kling-2.6_1767693973938"}}
    assert kie.parse_create(reply(body), what=WHAT) == "task_kling-2.6_1767693973938"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (401, AuthError),
        (402, OutOfCreditsError),
        (433, OutOfCreditsError),
        (400, RefusedError),
        (404, RefusedError),
        (422, RefusedError),
        (501, RefusedError),
        (505, RefusedError),
        (429, RateLimitedError),
        (455, TransientError),
        (500, AmbiguousError),
        (503, AmbiguousError),
    ],
)
def test_create_errors_in_http_200_bodies(code: int, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        kie.parse_create(reply({"code": code, "msg": "nope", "data": None}), what=WHAT)
    assert type(info.value) is error
    assert info.value.code == str(code)  # type: ignore[attr-defined]
    assert "nope" in str(info.value) and "job j1" in str(info.value)


def test_create_documented_401_and_enum_500() -> None:
    with pytest.raises(AuthError, match="You do not have access permissions"):
        kie.parse_create(
            reply({"code": 401, "msg": "You do not have access permissions"}), what=WHAT
        )
    # Documented: an enum error comes back as 500. The create may or may not exist for all we
    # know from a 500, so it is ambiguous, never silently retried.
    with pytest.raises(AmbiguousError, match="mode is not within the range"):
        kie.parse_create(
            reply({"code": 500, "msg": "mode is not within the range of allowed options"}),
            what=WHAT,
        )


def test_rate_limit_carries_retry_after() -> None:
    with pytest.raises(RateLimitedError) as info:
        kie.parse_create(reply({"code": 429, "msg": "slow down"}, retry_after=12.0), what=WHAT)
    assert info.value.retry_after == 12.0


def test_http_error_status_without_envelope() -> None:
    with pytest.raises(AmbiguousError):
        kie.parse_create(Reply(502, {"error": "bad gateway"}, "{}"), what=WHAT)
    with pytest.raises(AmbiguousError):  # HTML from a proxy: not JSON at all
        kie.parse_create(Reply(502, None, "<html>502</html>"), what=WHAT)
    with pytest.raises(BatchFatalError, match="check base_url"):  # unknown route
        kie.parse_create(Reply(404, None, "404 page not found"), what=WHAT)
    with pytest.raises(RateLimitedError):
        kie.parse_create(Reply(429, {"detail": "x"}, "{}", retry_after=3.0), what=WHAT)


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "msg": "success", "data": {}},
        {"code": 200, "msg": "success", "data": None},
        {"code": 200, "msg": "success", "data": {"taskId": ""}},
        {"code": 200, "msg": "success"},
        ["not", "an", "envelope"],
    ],
)
def test_create_success_without_task_id_is_ambiguous(body: object) -> None:
    with pytest.raises(AmbiguousError):
        kie.parse_create(reply(body), what=WHAT)


def test_create_error_messages_are_redacted() -> None:
    body = {"code": 401, "msg": "key sk-live-123456789 is not valid"}
    with pytest.raises(AuthError) as info:
        kie.parse_create(reply(body), what=WHAT, secrets=["sk-live-123456789"])
    assert "sk-live-123456789" not in str(info.value)


# --------------------------------------------------------------------------- recordInfo


def record(state: str, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "taskId": "task_kling-2.6_1767693973938",
        "model": "kling-2.6/motion-control",
        "state": state,
        "param": '{"model":"kling-2.6/motion-control","input":{"mode":"720p"}}',
        "resultJson": "",
        "failCode": None,
        "failMsg": None,
        "costTime": None,
        "completeTime": None,
        "createTime": 1767693973938,
    }
    data.update(fields)
    return {"code": 200, "msg": "success", "data": data}


def query(body: object, status: int = 200) -> object:
    return kie.parse_query(reply(body, status), "task_x", what="kie status of task task_x")


def test_documented_waiting_example_is_running_even_with_a_result_json() -> None:
    body = record(
        "waiting",
        taskId="281e5b0*********************f39b9",
        resultJson='{"resultUrls":["https://static.aiquickdraw.com/tools/example/1767525938144_1MAbktBM.mp4"]}',
    )
    status = query(body)
    assert status.phase == "running" and status.result_url is None  # type: ignore[attr-defined]
    # The echoed (here masked) taskId is not ours to adopt: the status names the task we asked.
    assert status.task_id == "task_x"  # type: ignore[attr-defined]


@pytest.mark.parametrize("state", ["waiting", "queuing", "generating", "rendering-new", ""])
def test_non_terminal_and_unknown_states_are_running(state: str) -> None:
    status = query(record(state))
    assert status.phase == "running"  # type: ignore[attr-defined]


def test_success_takes_the_first_result_url() -> None:
    body = record(
        "success",
        resultJson='{"resultUrls":["https://tempfile.redpandaai.co/out.mp4","https://x/2.mp4"]}',
        costTime=95000,
        completeTime=1767694069000,
    )
    status = query(body)
    assert status.phase == "succeeded"  # type: ignore[attr-defined]
    assert status.result_url == "https://tempfile.redpandaai.co/out.mp4"  # type: ignore[attr-defined]
    assert status.ran_seconds == 95.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"costTime": None, "completeTime": 1767694069000}, 95.062),  # today's docs: time stamps
        ({"costTime": "oops", "completeTime": None}, None),
        ({"costTime": True, "completeTime": None}, None),  # a JSON boolean is not a figure
        ({"costTime": "NaN", "completeTime": "inf"}, None),
    ],
)
def test_how_long_the_task_ran_comes_from_cost_time_or_the_time_stamps(
    fields: dict[str, object], seconds: float | None
) -> None:
    body = record("success", resultJson='{"resultUrls":["https://x/o.mp4"]}', **fields)
    assert query(body).ran_seconds == (  # type: ignore[attr-defined]
        None if seconds is None else pytest.approx(seconds)
    )


@pytest.mark.parametrize(
    "result_json",
    ["", "{}", "{not json", "[]", '{"resultUrls": []}', '{"resultUrls": [""]}', "null", None],
)
def test_success_without_result_url_is_a_failure(result_json: object) -> None:
    status = query(record("success", resultJson=result_json))
    assert status.phase == "failed"  # type: ignore[attr-defined]
    assert "without a result URL" in status.reason  # type: ignore[attr-defined]


def test_result_json_tolerates_bare_arrays_and_nesting() -> None:
    assert kie.result_urls('["https://a/1.mp4"]') == ["https://a/1.mp4"]
    assert kie.result_urls('{"resultObject": {"resultUrls": ["https://a/2.mp4"]}}') == [
        "https://a/2.mp4"
    ]
    assert kie.result_urls({"resultUrls": ["https://a/3.mp4"]}) == ["https://a/3.mp4"]
    assert kie.result_urls('{"resultUrls": "https://a/4.mp4"}') == ["https://a/4.mp4"]
    assert kie.result_urls("[1, 2]") == []


def test_fail_carries_the_providers_reason_redacted() -> None:
    body = record("fail", failCode="500", failMsg="content moderation: sk-abcdefgh1234")
    status = kie.parse_query(reply(body), "t", what="q", secrets=["sk-abcdefgh1234"])
    assert status.phase == "failed"
    assert status.reason == "content moderation: *** (failCode 500)"
    assert query(record("fail")).reason == "task failed without a reason"  # type: ignore[attr-defined]
    assert query(record("fail", failCode="422")).reason == "failCode 422"  # type: ignore[attr-defined]


def test_code_501_is_a_failed_generation_not_an_outage() -> None:
    status = query({"code": 501, "msg": "generation failed", "data": None})
    assert status.phase == "failed" and status.reason == "generation failed"  # type: ignore[attr-defined]
    status = query({"code": 501, "msg": "x", "data": record("fail", failMsg="nsfw")["data"]})
    assert status.reason == "nsfw"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (401, AuthError),
        (402, OutOfCreditsError),
        (422, RefusedError),
        (429, RateLimitedError),
        (455, TransientError),
        (500, TransientError),
        (503, TransientError),
    ],
)
def test_query_errors(code: int, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        query({"code": code, "msg": "m"})
    assert type(info.value) is error


def test_unknown_task_id_is_a_refusal_with_code_404() -> None:
    with pytest.raises(RefusedError) as info:
        query({"code": 404, "msg": "task not found"})
    assert info.value.code == "404"


@pytest.mark.parametrize(
    "body",
    [None, ["x"], {"code": 200, "msg": "success", "data": None}, {"code": 200, "data": "x"}],
)
def test_unreadable_query_answers_are_transient(body: object) -> None:
    with pytest.raises(TransientError):
        query(body)
    with pytest.raises(TransientError):
        query({"code": 200}, status=502)


# --------------------------------------------------------------------------- upload, download-url

UPLOAD_OK = {
    "success": True,
    "code": 200,
    "msg": "File uploaded successfully",
    "data": {
        "fileName": "uploaded-image.png",
        "filePath": "images/user-uploads/uploaded-image.png",
        "downloadUrl": "https://tempfile.redpandaai.co/xxx/images/user-uploads/uploaded-image.png",
        "fileSize": 154832,
        "mimeType": "image/png",
        "uploadedAt": "2025-01-01T12:00:00.000Z",
    },
}


def test_upload_takes_download_url_then_file_url() -> None:
    url = kie.parse_upload(reply(UPLOAD_OK), what="u")
    assert url == "https://tempfile.redpandaai.co/xxx/images/user-uploads/uploaded-image.png"
    quickstart = {"success": True, "data": {"fileId": "f", "fileUrl": "https://t/f.png"}}
    assert kie.parse_upload(reply(quickstart), what="u") == "https://t/f.png"
    only_code = {"code": 200, "msg": "ok", "data": {"downloadUrl": "https://t/g.png"}}
    assert kie.parse_upload(reply(only_code), what="u") == "https://t/g.png"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"success": False, "code": 401, "msg": "Unauthorized"}, 200, AuthError),
        ({"success": False, "code": 400, "msg": "file too large"}, 400, RefusedError),
        ({"success": False, "msg": "oops"}, 200, TransientError),
        ({"success": False, "code": 500, "msg": "oops"}, 500, TransientError),
        ({"success": True, "data": {}}, 200, BadReplyError),  # an answer we cannot use
        ({"code": 429, "msg": "slow"}, 200, RateLimitedError),
    ],
)
def test_upload_errors(body: object, status: int, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        kie.parse_upload(reply(body, status), what="u")
    assert type(info.value) is error


def test_download_url() -> None:
    body = {"code": 200, "msg": "success", "data": "https://tempfile.redpandaai.co/fresh.mp4"}
    assert (
        kie.parse_download_url(reply(body), what="d") == "https://tempfile.redpandaai.co/fresh.mp4"
    )
    assert kie.parse_download_url(reply({"code": 422, "msg": "not a kie url"}), what="d") is None
    with pytest.raises(TransientError):
        kie.parse_download_url(reply({"code": 500, "msg": "later"}), what="d")
    with pytest.raises(TransientError):
        kie.parse_download_url(reply({"code": 200, "data": None}), what="d")


# --------------------------------------------------------------------------- capabilities


def test_capabilities() -> None:
    assert KieProvider.has_upload and not KieProvider.has_client_id
    assert KieProvider.upload_ttl == 24 * 3600
    assert SandboxProvider.key_envs == {} and SandboxProvider.name == "sandbox"
