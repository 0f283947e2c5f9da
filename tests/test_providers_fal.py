"""The fal.ai client against the sandbox's fal protocol, over loopback: uploads through fal's
storage, submit -> status -> result, the failure that shows only at the result fetch, an
ambiguous submit, a resume that rebuilds the request URLs, and a rerun that sends nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    Media,
    cli_env,
    make_media,
    run_here,
    sandbox,
    state_rows,
    write_manifest,
)
from loopback import http_client
from waiting import wait_until_async

from pipeline.errors import RefusedError
from pipeline.jobs import Handle, InputRef, Job, JobSettings, TaskStatus
from pipeline.providers import fal
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.providers.fal import FalProvider
from pipeline.sandbox import SandboxKeys

FAL_KEY = "fal-SECRET-0a1b2c3d4e5f6789"
KEYS = SandboxKeys(fal=FAL_KEY)
ENV = cli_env(keys={"FAL_KEY": FAL_KEY})


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def manifest(
    folder: Path, base_url: str, media: Media, ids: list[str], mode: str = "std", **extra: Any
) -> Path:
    block = {"name": "fal", "base_url": base_url, "upload_url": base_url, "poll_interval": 0.1,
             "concurrency": 2, **extra}  # fmt: skip
    jobs = [{"id": i, "image": str(media.image), "video": str(media.video), "prompt": f"job {i}",
             "mode": mode} for i in ids]  # fmt: skip
    return write_manifest(folder, block, jobs)


def swept(root: Path) -> list[str]:
    """Files under ``root`` that contain the fal key (there must be none)."""
    return [str(p) for p in root.rglob("*") if p.is_file() and FAL_KEY.encode() in p.read_bytes()]


def test_batch_end_to_end_then_a_rerun_sends_nothing(media: Media, tmp_path: Path) -> None:
    with sandbox(tmp_path / "sb", {"latency": {"polls": 2}}, keys=KEYS) as (srv, log):
        path = manifest(tmp_path / "m", srv.base_url, media, ["a", "b"], mode="pro")
        summary = run_here(path, env=ENV)
        rows = state_rows(path.parent / "out")
        assert summary.exit_code == 0, rows
        assert {r["state"] for r in rows.values()} == {"done"}
        assert len(srv.ledger) == 2
        for entry in srv.ledger:
            assert entry.protocol == "fal"
            assert entry.body["keep_original_sound"] is True  # a JSON boolean, not "yes"
            assert entry.body["image_url"].startswith(f"{srv.base_url}/fal-media/files/")
        sent = log.snapshot()
        assert ("POST", "/fal-ai/kling-video/v2.6/pro/motion-control") in sent
        assert ("POST", "/storage/auth/token") in sent and ("POST", "/files/upload") in sent
        # Uploads are cached by content: one image and one video for both jobs.
        assert sum(1 for r in sent if r == ("POST", "/files/upload")) == 2
        before = len(log)
        again = run_here(path, env=ENV)
        assert again.exit_code == 0 and again.submitted == 0
        assert len(srv.ledger) == 2 and len(log) == before  # not one request
        assert swept(path.parent) == []


def test_a_failure_shown_only_at_the_result_fetch_fails_the_job_with_the_reason(
    media: Media, tmp_path: Path
) -> None:
    profile = {"latency": {"polls": 1},
               "faults": [{"kind": "task_fail", "message": "The content may violate policies"}]}  # fmt: skip
    with sandbox(tmp_path / "sb", profile, keys=KEYS) as (srv, log):
        path = manifest(tmp_path / "m", srv.base_url, media, ["a"])
        summary = run_here(path, env=ENV)
        row = state_rows(path.parent / "out")["a"]
        assert summary.exit_code == 1
        assert (row["state"], row["fail_kind"]) == ("failed", "task")
        assert "The content may violate policies" in row["error"]
        assert "content_policy_violation" in row["error"]
        assert len(srv.ledger) == 1
        results = [r for r in log.snapshot() if r[0] == "GET" and not r[1].endswith("/status")]
        # One result fetch decides it: no download attempt, no retry loop.
        assert len([r for r in results if "/requests/" in r[1]]) == 1
        assert not any(r[1].startswith("/results/") for r in results)


def test_an_unanswered_submit_needs_attention_and_is_never_resent(
    media: Media, tmp_path: Path
) -> None:
    profile = {"faults": [{"kind": "reset_after_commit", "endpoint": "create", "times": 1}]}
    with sandbox(tmp_path / "sb", profile, keys=KEYS) as (srv, _log):
        path = manifest(tmp_path / "m", srv.base_url, media, ["a"])
        run_here(path, env=ENV)
        row = state_rows(path.parent / "out")["a"]
        assert row["state"] == "needs_attention", row
        assert len(srv.ledger) == 1  # fal made (and bills) the request
        run_here(path, env=ENV)
        assert len(srv.ledger) == 1
        assert state_rows(path.parent / "out")["a"]["state"] == "needs_attention"


# ----------------------------------------------------------------------- the client alone


def job(model: str = "fal-ai/kling-video/v3", **settings: Any) -> Job:
    return Job("j", InputRef("i.png"), InputRef("v.mp4"), JobSettings(**settings), "fal", model)


def test_endpoint_ids_and_body() -> None:
    assert fal.endpoint_id("fal-ai/kling-video/v2.6", "std") == (
        "fal-ai/kling-video/v2.6/standard/motion-control"
    )
    assert fal.endpoint_id("fal-ai/kling-video/v3", "pro") == (
        "fal-ai/kling-video/v3/pro/motion-control"
    )
    config = ProviderConfig("fal", "fal-ai/kling-video/v3", "https://queue.fal.run")
    body = fal.build_submit_body(
        job(keep_original_sound=False), InputURLs("https://i", "https://v"), config
    )
    assert body == {"image_url": "https://i", "video_url": "https://v",
                    "character_orientation": "video", "keep_original_sound": False}  # fmt: skip
    assert fal.request_urls("https://queue.fal.run", "fal-ai/kling-video/v3", "r1") == (
        "https://queue.fal.run/fal-ai/kling-video/requests/r1/status",
        "https://queue.fal.run/fal-ai/kling-video/requests/r1",
    )


def test_a_new_process_follows_the_request_by_its_id_alone(media: Media, tmp_path: Path) -> None:
    """After a restart only the request id is stored: fal-client's from_request_id URLs."""
    with sandbox(tmp_path / "sb", {"latency": {"polls": 1}}, keys=KEYS) as (srv, _log):
        config = ProviderConfig("fal", "fal-ai/kling-video/v3", srv.base_url, srv.base_url)
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def main() -> tuple[TaskStatus, Exception | None]:
            async with http_client() as client:
                first = FalProvider(config, Credentials({"api_key": FAL_KEY}), client)
                handle = await first.submit(job(mode="pro"), urls, client_id=None)
                later = FalProvider(config, Credentials({"api_key": FAL_KEY}), client)

                async def ended() -> TaskStatus | None:
                    status = await later.poll(handle)
                    return status if status.is_terminal else None

                status = await wait_until_async(ended, what="the request to end")
                try:
                    await later.poll(Handle("fal", "no-such-request"))
                except RefusedError as exc:
                    return status, exc
                return status, None

        status, unknown = asyncio.run(main())
        assert status.phase == "succeeded" and status.result_url
        assert srv.ledger[0].body.get("keep_original_sound") is True
        assert unknown is not None and "does not know request no-such-request" in str(unknown)


def test_request_urls_pointing_elsewhere_are_not_followed() -> None:
    """The key goes wherever the status URL points: only our queue host is trusted."""
    config = ProviderConfig("fal", "fal-ai/kling-video/v2.6", "https://queue.fal.run")
    provider = FalProvider(config, Credentials({"api_key": FAL_KEY}), http_client())
    provider._keep({"request_id": "r", "status_url": "https://evil.example/s",
                    "response_url": "https://evil.example/r"})  # fmt: skip
    assert provider._urls("r")[0] == "https://queue.fal.run/fal-ai/kling-video/requests/r/status"
