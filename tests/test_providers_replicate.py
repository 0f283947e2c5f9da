"""The Replicate client against the sandbox's Replicate protocol, over loopback: the files API,
predictions to the end, a rerun that sends nothing, 429 with its retry hint, and a resume after
Replicate deleted the prediction's data, which must be explained rather than retried."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    fired,
    make_media,
    run_here,
    sandbox,
    state_rows,
    write_manifest,
)
from loopback import http_client
from waiting import wait_until

from pipeline.errors import RateLimitedError, RefusedError
from pipeline.jobs import Handle, InputRef, Job, JobSettings
from pipeline.providers import replicate
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.providers.http import Reply
from pipeline.providers.replicate import ReplicateProvider
from pipeline.sandbox import SandboxKeys

TOKEN = "r8_SECRET_0123456789abcdefghij"
KEYS = SandboxKeys(replicate=TOKEN)
ENV = cli_env(keys={"REPLICATE_API_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def manifest(folder: Path, base_url: str, media: Media, ids: list[str], **extra: Any) -> Path:
    block = {"name": "replicate", "base_url": base_url, "poll_interval": 0.1, "concurrency": 2,
             **extra}  # fmt: skip
    jobs = [{"id": i, "image": str(media.image), "video": str(media.video), "prompt": f"job {i}",
             "mode": "pro"} for i in ids]  # fmt: skip
    return write_manifest(folder, block, jobs)


def test_batch_end_to_end_then_a_rerun_sends_nothing(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb", {"latency": {"polls": 2}}, keys=KEYS) as (srv, log):
        path = manifest(tmp_path / "m", srv.base_url, media, ["a", "b"])
        summary = run_here(path, env=ENV)
        rows = state_rows(path.parent / "out")
        assert summary.exit_code == 0, rows
        assert {r["state"] for r in rows.values()} == {"done"}
        assert len(srv.ledger) == 2
        for entry in srv.ledger:
            sent = entry.body["input"]
            assert (sent["mode"], sent["keep_original_sound"]) == ("pro", True)
            assert sent["character_orientation"] == "image"  # ours, not Replicate's default
            assert sent["image"].startswith(f"{srv.base_url}/v1/files/")
        requests = log.snapshot()
        assert ("POST", "/v1/models/kwaivgi/kling-v2.6-motion-control/predictions") in requests
        assert sum(1 for r in requests if r == ("POST", "/v1/files")) == 2  # cached by content
        before = len(log)
        again = run_here(path, env=ENV)
        assert again.exit_code == 0 and again.submitted == 0
        assert len(srv.ledger) == 2 and len(log) == before
        leaked = [
            p for p in path.parent.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()
        ]
        assert leaked == []


def test_a_429_is_waited_out_with_its_retry_hint(media: Media, tmp_path: Path) -> None:
    profile = {"faults": [{"kind": "rate_limit", "endpoint": "create", "times": 2,
                           "retry_after": 1}]}  # fmt: skip
    with sandbox(tmp_path / "sb", profile, keys=KEYS) as (srv, _log):
        config = ProviderConfig("replicate", replicate.ReplicateProvider.default_model,
                                srv.base_url)  # fmt: skip
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def first() -> RateLimitedError:
            async with http_client() as client:
                provider = ReplicateProvider(config, Credentials({"api_key": TOKEN}), client)
                with pytest.raises(RateLimitedError) as caught:
                    await provider.submit(job(), urls, client_id=None)
                return caught.value

        limited = asyncio.run(first())
        assert limited.retry_after == 1.0 and limited.http_status == 429
        assert len(srv.ledger) == 0
        path = manifest(tmp_path / "m", srv.base_url, media, ["a"])
        summary = run_here(path, env=ENV)
        assert summary.exit_code == 0
        assert fired(srv) == [2]  # the run met the second 429 too
        assert len(srv.ledger) == 1  # waited it out, then sent once


def test_the_retry_hint_is_read_from_the_text_without_a_header() -> None:
    text = "Request was throttled. Your rate limit resets in ~30s."
    reply = Reply(429, {"detail": text}, text="")
    error = replicate.classify(429, text, what="create", purpose="create", reply=reply)
    assert isinstance(error, RateLimitedError) and error.retry_after == 30.0


def test_a_resume_after_the_retention_window_is_explained(media: Media, tmp_path: Path) -> None:
    profile = {"expire_after": 1, "latency": {"polls": 0}}
    with sandbox(tmp_path / "sb", profile, keys=KEYS) as (srv, _log):
        path = manifest(tmp_path / "m", srv.base_url, media, ["a"])
        crashed = cli("run", path, env={**ENV, "MOTION_PIPELINE_CRASH_AT": "after-task-id"})
        assert crashed.returncode != 0
        row = state_rows(path.parent / "out")["a"]
        assert row["state"] == "running" and row["task_id"]
        prediction = f"{srv.base_url}/v1/predictions/{row['task_id']}"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def removed() -> bool:
            doc = httpx.get(prediction, headers=auth).json()
            return doc["status"] == "succeeded" and doc["data_removed"] is True

        wait_until(removed, what="Replicate's retention to remove the prediction's data")
        summary = run_here(path, env=ENV)
        row = state_rows(path.parent / "out")["a"]
        assert summary.exit_code == 1
        assert row["state"] == "failed", row
        assert "deleted its output" in row["error"] and "retry-failed" in row["error"]
        assert len(srv.ledger) == 1  # nothing re-sent on its own


def test_an_unknown_prediction_is_explained(tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb", keys=KEYS) as (srv, _log):
        config = ProviderConfig("replicate", ReplicateProvider.default_model, srv.base_url)

        async def main() -> None:
            async with http_client() as client:
                provider = ReplicateProvider(config, Credentials({"api_key": TOKEN}), client)
                with pytest.raises(RefusedError, match="deletes API predictions about an hour"):
                    await provider.poll(Handle("replicate", "gone0000000000000000000000"))

        asyncio.run(main())


def job(model: str = "kwaivgi/kling-v2.6-motion-control") -> Job:
    return Job("j", InputRef("i.png"), InputRef("v.mp4"), JobSettings(), "replicate", model)


def test_prediction_states() -> None:
    parse = replicate.parse_prediction
    assert parse({"status": "starting"}, "p").phase == "running"
    assert parse({"status": "processing"}, "p").phase == "running"
    done = parse({"status": "succeeded", "output": "https://replicate.delivery/x.mp4"}, "p")
    assert (done.phase, done.result_url) == ("succeeded", "https://replicate.delivery/x.mp4")
    failed = parse({"status": "failed", "error": "NSFW content detected"}, "p")
    assert (failed.phase, failed.reason) == ("failed", "NSFW content detected")
    assert parse({"status": "canceled"}, "p").reason == "prediction was canceled"
    gone = parse({"status": "succeeded", "output": None, "data_removed": True}, "p")
    assert gone.phase == "failed" and "deleted its output" in (gone.reason or "")
