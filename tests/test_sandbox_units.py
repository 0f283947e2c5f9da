"""Pure parts of the sandbox: fault profiles and picking, JWT checks, multipart, media rules,
task phases and create validation, tested with plain values."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.media.probe import MediaInfo
from pipeline.sandbox import FaultProfile, Latency, SandboxKeys, acedata, kie, kling
from pipeline.sandbox.kling import b64url, mint_jwt, verify_jwt
from pipeline.sandbox.picker import FaultPicker
from pipeline.sandbox.rules import RULES, check_media
from pipeline.sandbox.store import Outcome, Task, TaskSpec, TaskStore
from pipeline.sandbox.wire import parse_multipart

EXAMPLES = sorted((Path(__file__).parent.parent / "manifests" / "faults").glob("*.yaml"))


# ---------------------------------------------------------------------- profiles


def test_example_profiles_load() -> None:
    assert len(EXAMPLES) >= 5
    for path in EXAMPLES:
        profile = FaultProfile.load(path)
        assert profile == FaultProfile.from_dict(yaml.safe_load(path.read_text()) or {})


def test_profile_fields_and_latency_overrides() -> None:
    profile = FaultProfile.from_dict({
        "seed": 3, "credits": 5, "sync_timeout": 9,
        "latency": {"polls": 2, "seconds": 1.5, "kling": {"polls": 4}},
        "faults": [{"kind": "rate_limit", "endpoint": "create", "retry_after": 2, "times": 1}],
    })  # fmt: skip
    assert profile.latency_for("kie") == Latency(polls=2, seconds=1.5)
    assert profile.latency_for("kling") == Latency(polls=4, seconds=1.5)
    assert (profile.seed, profile.credits, profile.sync_timeout) == (3, 5.0, 9.0)
    assert profile.faults[0].retry_after == 2.0 and profile.faults[0].times == 1
    assert FaultProfile() == FaultProfile.from_dict({})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fautls": []}, "unknown key 'fautls'"),
        ({"faults": [{"kind": "explode"}]}, "faults[0].kind: must be one of"),
        ({"faults": [{"kind": "rate_limit", "endpoint": "everywhere"}]}, "faults[0].endpoint"),
        ({"faults": [{"kind": "rate_limit", "protocol": "runway"}]}, "faults[0].protocol"),
        ({"faults": [{"kind": "rate_limit", "probability": 1.5}]}, "between 0 and 1"),
        ({"faults": [{"kind": "rate_limit", "every": 0}]}, "at least 1"),
        ({"faults": [{"kind": "rate_limit", "times": "two"}]}, "faults[0].times: must be a number"),
        ({"latency": {"polls": -1}}, "latency.polls: must not be negative"),
        ({"latency": {"kie": {"pols": 1}}}, "latency.kie: unknown key 'pols'"),
        ({"faults": {"kind": "bad_key"}}, "faults: must be a list"),
    ],
)
def test_profile_errors_name_the_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FaultProfile.from_dict(data)


def test_profile_load_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults:\n  - kind: rate_limit\n    tims: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: faults\[0\]: unknown key 'tims'"):
        FaultProfile.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        FaultProfile.load(tmp_path / "missing.yaml")
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"latency": {"polls": 1}}))
    assert FaultProfile.load(as_json).latency.polls == 1


def _fires(rules: list[dict[str, Any]], requests: list[tuple[str, str]], seed: int = 0) -> list:
    picker = FaultPicker(FaultProfile.from_dict({"seed": seed, "faults": rules}))
    kinds = ("rate_limit", "server_error", "bad_key")
    out = []
    for protocol, endpoint in requests:
        rule = picker.pick(protocol, endpoint, kinds)
        out.append(rule.kind if rule else None)
    return out


def test_picker_times_every_after_and_scope() -> None:
    creates = [("kie", "create")] * 6
    assert _fires([{"kind": "rate_limit", "times": 2}], creates) == ["rate_limit"] * 2 + [None] * 4
    every = _fires([{"kind": "server_error", "every": 3}], creates)
    assert every == [None, None, "server_error"] * 2
    after = _fires([{"kind": "bad_key", "after": 4}], creates)
    assert after == [None] * 4 + ["bad_key"] * 2
    scoped = _fires(
        [{"kind": "rate_limit", "endpoint": "poll", "protocol": "kling"}],
        [("kling", "poll"), ("kie", "poll"), ("kling", "create")],
    )
    assert scoped == ["rate_limit", None, None]


def test_picker_first_firing_rule_wins_and_all_count() -> None:
    rules = [{"kind": "rate_limit", "every": 2}, {"kind": "server_error", "every": 3}]
    assert _fires(rules, [("kie", "create")] * 6) == [
        None, "rate_limit", "server_error", "rate_limit", None, "rate_limit",
    ]  # fmt: skip


def test_picker_probability_is_reproducible_per_seed() -> None:
    rules = [{"kind": "rate_limit", "probability": 0.5}]
    creates = [("kie", "create")] * 200
    first = _fires(rules, creates, seed=11)
    assert first == _fires(rules, creates, seed=11)
    assert 60 < first.count("rate_limit") < 140
    assert _fires([{"kind": "rate_limit", "probability": 0}], creates).count(None) == 200


def test_task_kinds_only_match_creates_and_download_kinds_downloads() -> None:
    profile = FaultProfile.from_dict({"faults": [
        {"kind": "task_fail", "endpoint": "poll"}, {"kind": "expired_result"}]})  # fmt: skip
    picker = FaultPicker(profile)
    assert picker.pick("kie", "poll", ("task_fail",)) is None
    assert picker.pick("kie", "create", ("task_fail",)) is not None
    assert picker.pick("kie", "create", ("expired_result",)) is None
    assert picker.pick("kling", "download", ("expired_result",)) is not None


# ---------------------------------------------------------------------- JWT


def _token(payload: dict[str, Any], secret: str = "sk", alg: str = "HS256") -> str:  # noqa: S107  # a test JWT secret
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def test_verify_jwt_codes() -> None:
    now = 1_800_000_000.0
    good = mint_jwt("ak", "sk", now=now)
    assert verify_jwt(good, "ak", "sk", now) is None
    assert verify_jwt(good, "ak", "sk", now + 1799) is None
    assert verify_jwt(good, "ak", "sk", now + 1800) == (1004, "Authorization has expired")
    assert verify_jwt(good, "ak", "sk", now - 10)[0] == 1003  # type: ignore[index]
    assert verify_jwt(None, "ak", "sk", now) == (1001, "Authorization is empty")
    assert verify_jwt(good, "other", "sk", now)[0] == 1002  # type: ignore[index]
    assert verify_jwt(good, "ak", "other", now)[0] == 1002  # type: ignore[index]
    assert verify_jwt("abc", "ak", "sk", now)[0] == 1002  # type: ignore[index]
    none_alg = _token({"iss": "ak", "exp": now + 60}, alg="none")
    assert verify_jwt(none_alg, "ak", "sk", now)[0] == 1002  # type: ignore[index]
    no_exp = _token({"iss": "ak"})
    assert verify_jwt(no_exp, "ak", "sk", now)[0] == 1002  # type: ignore[index]


def test_verify_jwt_without_keys_accepts_any_token_but_checks_times() -> None:
    now = 1_800_000_000.0
    assert verify_jwt("plain-static-key", None, None, now) is None
    assert verify_jwt(mint_jwt("x", "y", now=now), None, None, now) is None
    assert verify_jwt(mint_jwt("x", "y", now=now - 3600), None, None, now)[0] == 1004  # type: ignore[index]
    assert verify_jwt("", None, None, now)[0] == 1001  # type: ignore[index]


def test_keys_repr_hides_values() -> None:
    keys = SandboxKeys(kie="super-secret-kie", kling_secret="super-secret-sk")
    assert "super-secret" not in repr(keys) and "super-secret" not in str(keys)
    assert "kie" in repr(keys)


# ---------------------------------------------------------------------- multipart


def test_parse_multipart() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="uploadPath"\r\n\r\nimages/a\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="c.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x00\xff\r\n--XyZ--\r\n"
    )
    parts = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert parts["uploadPath"].data == b"images/a"
    assert parts["file"].filename == "c.png" and parts["file"].content_type == "image/png"
    assert parts["file"].data == b"\x89PNG\r\n\x00\xff"
    with pytest.raises(ValueError, match="multipart/form-data"):
        parse_multipart("application/json", body)


# ---------------------------------------------------------------------- media rules


def _image(w: int = 320, h: int = 400, fmt: str = "png", size: int = 20_000) -> MediaInfo:
    return MediaInfo(source="i", kind="image", format=fmt, format_name="png_pipe",
                     size_bytes=size, width=w, height=h)  # fmt: skip


def _video(seconds: float = 5.0, w: int = 480, h: int = 640, fmt: str = "mp4") -> MediaInfo:
    return MediaInfo(source="v", kind="video", format=fmt, format_name="mov,mp4",
                     size_bytes=1_000_000, width=w, height=h, duration=seconds)  # fmt: skip


@pytest.mark.parametrize(
    ("image", "video", "orientation", "needle"),
    [
        (_image(), _video(5), "image", None),
        (_image(), _video(10.0), "image", None),
        (_image(), _video(10.5), "image", "10.50 s exceeds 10 s"),
        (_image(), _video(29.9), "video", None),
        (_image(), _video(30.5), "video", "exceeds 30 s"),
        (_image(), _video(2.9), "video", "shorter than 3 s"),
        (_image(299, 400), _video(), "video", "299x400"),
        (_image(1000, 300), _video(), "video", "aspect ratio 3.33"),
        (_image(fmt="webp"), _video(), "video", "image format webp"),
        (_image(size=11 * 1024 * 1024), _video(), "video", "over the 10 MB limit"),
        (_image(), _video(w=320, h=640), "video", "320x640"),
        (_image(), _video(w=340, h=3851), "video", "340x3851"),
        (_image(), _video(fmt="webm"), "video", "video format webm"),
    ],
)
def test_check_media(
    image: MediaInfo, video: MediaInfo, orientation: str, needle: str | None
) -> None:
    reason = check_media(RULES["kling"], image, video, orientation)
    if needle is None:
        assert reason is None
    else:
        assert reason is not None and needle in reason


def test_rules_differ_per_service() -> None:
    mkv = _video(fmt="mkv")
    assert check_media(RULES["kie"], _image(), mkv, "video") is None
    assert "mkv" in (check_media(RULES["kling"], _image(), mkv, "video") or "")
    big = _image(size=20 * 1024 * 1024)
    assert check_media(RULES["acedata"], big, _video(), "video") is None
    assert check_media(RULES["kie"], big, _video(), "video") is not None


# ---------------------------------------------------------------------- phases


def _task(created: float = 100.0) -> Task:
    spec = TaskSpec("m", "i", "v", "video", "std", True)
    return Task("kie", "t1", None, {}, spec, created=created)


def test_phase_waits_for_work_polls_and_age() -> None:
    store, task = TaskStore(), _task()
    latency = Latency(polls=2, seconds=5)
    assert store.observe(task, latency, now=101) == "queued"
    store.finish(task, Outcome(reason="nope", code="422"))
    assert store.observe(task, latency, now=101) == "running"  # 2nd poll: still "not yet"
    assert store.observe(task, latency, now=101) == "running"  # 3rd poll, but only 1 s old
    assert store.observe(task, latency, now=106) == "failed"
    assert store.observe(task, Latency(polls=99), now=106) == "failed"  # terminal stays terminal


def test_phase_zero_latency_is_done_on_first_poll_once_work_is_done() -> None:
    store, task = TaskStore(), _task()
    assert store.observe(task, Latency(), now=100) == "queued"  # work not finished yet
    store.finish(task, Outcome(reason="x"))
    assert store.observe(task, Latency(), now=100) == "failed"
    never = _task()
    never.fate = "never"
    store.finish(never, Outcome(reason="x"))
    assert {store.observe(never, Latency(), now=1e12) for _ in range(3)} == {"queued", "running"}


# ---------------------------------------------------------------------- create validation


def test_kie_validate_maps_modes_and_defaults_for_3_0() -> None:
    doc = {"model": "kling-3.0/motion-control",
           "input": {"input_urls": ["https://a/i.png"], "video_urls": ["https://a/v.mp4"]}}  # fmt: skip
    spec = kie.validate_create(doc)
    assert (spec.mode, spec.orientation, spec.sound) == ("std", "video", True)
    doc["input"]["mode"] = "1080p"
    assert kie.validate_create(doc).mode == "pro"
    with pytest.raises(kie.Invalid) as caught:
        kie.validate_create({**doc, "model": "kling-2.6/motion-control"})
    assert caught.value.code == 422 and "character_orientation is required" in caught.value.msg


def test_acedata_validate_async_and_sound() -> None:
    base = {"image_url": "https://a/i.png", "video_url": "https://a/v.mp4",
            "character_orientation": "image", "mode": "pro"}  # fmt: skip
    spec, is_async = acedata.validate_motion(base)
    assert spec.sound is True and not is_async
    spec, is_async = acedata.validate_motion({**base, "keep_original_sound": "no",
                                              "callback_url": "https://cb"})  # fmt: skip
    assert spec.sound is False and is_async


def test_kling_validate_decodes_raw_base64() -> None:
    spec, raw = kling.validate_create({"image_url": "iVBORw0KGgo=", "video_url": "https://a/v.mp4",
                                       "character_orientation": "video", "mode": "std"})  # fmt: skip
    assert raw == b"\x89PNG\r\n\x1a\n" and spec.sound is True


def test_journal_round_trip_skips_a_torn_line(tmp_path: Path) -> None:
    from pipeline.sandbox.journal import TaskJournal

    journal = TaskJournal(tmp_path / "tasks.jsonl")
    task = _task()
    task.extra = {"trace_id": "t"}
    journal.append(task, None)
    journal.close()
    with (tmp_path / "tasks.jsonl").open("a") as handle:
        handle.write('{"protocol": "kie", "task_')  # killed mid-write
    [(loaded, code)] = TaskJournal(tmp_path / "tasks.jsonl").load()
    assert (loaded.task_id, loaded.spec, loaded.extra, code) == ("t1", task.spec, task.extra, None)
