"""The run's stages one at a time, around a recording fake provider (tests/fake_provider.py)
registered through the provider registry; the state, journal, retry primitive and budget are
the real ones. End-to-end, crash and fault tests over HTTP are elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from batchkit import Media
from conftest import World, stage_world, streamed
from fake_provider import FakeProvider, Script

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import Handle, State, TaskStatus
from pipeline.manifest.model import Budget
from pipeline.run.download import DownloadStage
from pipeline.run.inputs import InputsStage
from pipeline.run.poll import PollStage
from pipeline.run.poller import Poller
from pipeline.run.submit import SubmitStage
from pipeline.state.rows import JobRecord


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def created(world: World, job_id: str = "a") -> Handle | None:
    pj = world.planned[job_id]
    ready = await InputsStage(world.ctx).ready(pj)
    return await SubmitStage(world.ctx).create(pj, ready)


# --------------------------------------------------------------------------- submit


def test_the_intent_is_committed_before_the_create_goes_out(
    tmp_path: Path, stage_media: Media
) -> None:
    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], Script()) as w:
            handle = await created(w)
            assert handle is not None and w.state("a") == "running"
            assert FakeProvider.calls("submit") == [
                ("submit", "a", w.store.get("a").client_id or "", "submitting")
            ]
            assert w.store.get("a").task_id == handle.task_id
            assert w.ctx.spending.this_run() == (1, 3.5, 0.35)

    run(main())


def test_a_create_that_certainly_failed_is_retried_and_pays_once(
    tmp_path: Path, stage_media: Media
) -> None:
    script = Script(creates=[TransientError("refused connection"), Handle("fake", "t1")])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], script) as w:
            submit = SubmitStage(w.ctx)
            handle = await submit.create(
                w.planned["a"], await InputsStage(w.ctx).ready(w.planned["a"])
            )
            assert handle == Handle("fake", "t1")
            assert len(FakeProvider.calls("submit")) == 2 and submit.in_flight == 0

    run(main())


@pytest.mark.parametrize("client_id", [False, True])
def test_an_ambiguous_create_is_looked_up_or_left_to_a_human(
    client_id: bool, tmp_path: Path, stage_media: Media
) -> None:
    script = Script(creates=[AmbiguousError("reset after send")], lookups=[Handle("fake", "found")])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], script, client_id=client_id) as w:
            handle = await created(w)
            assert len(FakeProvider.calls("submit")) == 1  # never re-sent blindly
            if client_id:
                assert handle == Handle("fake", "found") and w.state("a") == "running"
            else:
                assert handle is None and w.state("a") == "needs_attention"
                assert "resolve" in (w.store.get("a").error or "")
                assert FakeProvider.calls("lookup") == []

    run(main())


def test_refused_and_fatal_creates(tmp_path: Path, stage_media: Media) -> None:
    script = Script(creates=[RefusedError("bad prompt"), AuthError("key rejected")])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a", "b"], script) as w:
            assert await created(w, "a") is None
            assert w.state("a") == "failed" and w.store.get("a").fail_kind == "refused"
            assert await created(w, "b") is None
            assert w.state("b") == "pending" and w.halt.code == 3
            assert w.ctx.spending.this_run() == (0, 0.0, 0.0)  # nothing booked stays

    run(main())


def test_a_job_over_the_budget_sends_nothing(tmp_path: Path, stage_media: Media) -> None:
    async def main() -> None:
        budget = Budget(max_seconds=5)
        async with stage_world(tmp_path, stage_media, ["a", "b"], Script(), budget=budget) as w:
            assert await created(w, "a") is not None
            assert await created(w, "b") is None
            assert w.state("b") == "pending" and "budget reached" in (w.halt.reason or "")
            assert len(FakeProvider.calls("submit")) == 1

    run(main())


def test_a_twin_adopts_the_done_generation(tmp_path: Path, stage_media: Media) -> None:
    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], Script()) as w:
            await created(w)
            w.ctx.videos.mkdir(parents=True, exist_ok=True)
            (w.ctx.videos / "a.mp4").write_bytes(stage_media.video.read_bytes())
            await w.ctx.journal.move("a", State.DOWNLOADING)
            await w.ctx.journal.move("a", State.DONE, output="videos/a.mp4", output_sha256="x")
            twin = dataclasses.replace(
                w.planned["a"], job=dataclasses.replace(w.planned["a"].job, id="twin")
            )
            w.store.sync_jobs([JobRecord("twin", twin.key, {"settings": {"mode": "std"}})])
            assert await SubmitStage(w.ctx).settled_without_paying(twin)
            assert w.state("twin") == "done" and len(FakeProvider.calls("submit")) == 1
            assert (w.ctx.videos / "twin.mp4").read_bytes() == stage_media.video.read_bytes()

    run(main())


# --------------------------------------------------------------------------- inputs


def test_inputs_send_the_plans_files_with_their_types(tmp_path: Path, stage_media: Media) -> None:
    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], Script()) as w:
            ready = await InputsStage(w.ctx).ready(w.planned["a"])
            uploads = FakeProvider.calls("upload")
            assert [(u[1], u[2]) for u in uploads] == [
                (stage_media.image.name, "image/png"), (stage_media.video.name, "video/mp4"),
            ]  # fmt: skip
            assert ready.urls.image_url.startswith("http://files.invalid/")
            assert ready.billed_seconds == pytest.approx(3.5, abs=0.2)

    run(main())


def test_an_upload_that_keeps_failing_leaves_the_job_pending(
    tmp_path: Path, stage_media: Media
) -> None:
    script = Script(uploads=[TransientError("upload host down")])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], script) as w:
            assert await InputsStage(w.ctx).ready_or_none(w.planned["a"]) is None
            assert w.state("a") == "pending"
            assert len(FakeProvider.calls("upload")) >= 2  # retried by the one retry primitive

    run(main())


# --------------------------------------------------------------------------- poll


def _poller(w: World) -> Poller:
    c = w.ctx.calls
    return Poller(w.ctx.provider, interval=0.01, task_timeout=60, sleeper=c.sleeper, rng=c.rng,
                  breaker=c.breaker, log=w.ctx.log)  # fmt: skip


@pytest.mark.parametrize(
    ("steps", "state", "kind"),
    [
        (["running", "failed"], "failed", "task"),
        ([RefusedError("unknown task id", code="404")], "needs_attention", None),
        (["running", "succeeded"], "running", None),
    ],
    ids=["task failed", "unknown task", "succeeded"],
)
def test_poll_outcomes(
    steps: list[object], state: str, kind: str | None, tmp_path: Path, stage_media: Media
) -> None:
    async def main() -> None:
        script = Script(polls={"task-a": steps})  # type: ignore[dict-item]
        async with stage_world(tmp_path, stage_media, ["a"], script) as w:
            handle = await created(w)
            assert handle is not None
            poller = _poller(w)
            serving = asyncio.create_task(poller.run())
            try:
                status = await PollStage(w.ctx, poller).follow("a", handle, None)
            finally:
                serving.cancel()
            assert w.state("a") == state and w.store.get("a").fail_kind == kind
            assert (status is not None) == (state == "running")

    run(main())


# --------------------------------------------------------------------------- download


def _success(task: str) -> TaskStatus:
    return TaskStatus(task, "succeeded", result_url=f"http://results.invalid/{task}.mp4")


async def _downloading(w: World) -> Handle:
    handle = await created(w)
    assert handle is not None
    await w.ctx.journal.move("a", State.DOWNLOADING)
    return handle


def test_a_result_is_verified_published_and_recorded(tmp_path: Path, stage_media: Media) -> None:
    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], Script()) as w:
            handle = await _downloading(w)
            await DownloadStage(w.ctx).fetch("a", handle, _success(handle.task_id))
            row = w.store.get("a")
            assert row.state is State.DONE and row.output == "videos/a.mp4"
            assert (
                w.ctx.manifest.output_dir / "videos" / "a.mp4"
            ).read_bytes() == stage_media.video.read_bytes()

    run(main())


def test_an_expired_url_is_refreshed(tmp_path: Path, stage_media: Media) -> None:
    body = stage_media.video.read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("fresh.mp4"):
            return streamed(200, body)
        return httpx.Response(403)  # the first URL has expired

    script = Script(refreshes=["http://results.invalid/fresh.mp4"])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], script, handler=handler) as w:
            handle = await _downloading(w)
            await DownloadStage(w.ctx).fetch("a", handle, _success(handle.task_id))
            assert w.state("a") == "done" and FakeProvider.calls("refresh") == [
                ("refresh", handle.task_id)
            ]

    run(main())


def test_an_unusable_result_is_asked_for_once_more_then_fails(
    tmp_path: Path, stage_media: Media
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return streamed(200, b"not a video at all" * 100)

    script = Script(refreshes=["http://results.invalid/again.mp4"])

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], script, handler=handler) as w:
            handle = await _downloading(w)
            await DownloadStage(w.ctx).fetch("a", handle, _success(handle.task_id))
            assert w.state("a") == "failed" and w.store.get("a").fail_kind == "result"
            assert len(FakeProvider.calls("refresh")) == 1

    run(main())


def test_transport_trouble_leaves_the_download_for_the_next_run(
    tmp_path: Path, stage_media: Media
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async def main() -> None:
        async with stage_world(tmp_path, stage_media, ["a"], Script(), handler=handler) as w:
            handle = await _downloading(w)
            await DownloadStage(w.ctx).fetch("a", handle, _success(handle.task_id))
            assert w.state("a") == "downloading"

    run(main())
