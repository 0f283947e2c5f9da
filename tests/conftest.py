"""Shared builders for the stage tests: a run's context around a recording fake provider.

The state store, the group committer, the journal, the retry primitive, budget, halt and slots
are the real ones; only the provider is the fake (registered through the provider registry) and
HTTP downloads go to an ``httpx.MockTransport`` serving a real mp4.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from batchkit import Media, make_media
from fake_provider import FakeProvider, Script

from pipeline import providers
from pipeline.jobs import InputRef, Job, JobSettings
from pipeline.manifest.model import Budget, Manifest
from pipeline.media.limits import limits_for
from pipeline.media.probe import probe_file
from pipeline.media.recipes import MediaPlan
from pipeline.media.tools import find_tools
from pipeline.plan.build import PlannedJob
from pipeline.plan.sending import SentMedia, as_is
from pipeline.progress.events import RecordingReporter
from pipeline.providers.base import ProviderConfig
from pipeline.run.budget import Spending
from pipeline.run.calls import Calls
from pipeline.run.context import RunContext
from pipeline.run.disk import DiskGuard
from pipeline.run.halt import Halt
from pipeline.run.journal import Journal
from pipeline.run.options import RunOptions
from pipeline.run.retry import CircuitBreaker, PauseGate, RateLimiter, RecordingSleeper
from pipeline.run.slots import Slots
from pipeline.settings import Settings
from pipeline.state.commits import GroupCommitter
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore
from pipeline.storage.uploads import Storage

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="session")
def stage_media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("stage-media"))


@dataclass
class World:
    """One run's context and what the test looks at: the store, the reporter, the fake."""

    ctx: RunContext
    store: StateStore
    reporter: RecordingReporter
    halt: Halt
    sleeper: RecordingSleeper
    planned: dict[str, PlannedJob]

    def state(self, job_id: str) -> str:
        return self.store.get(job_id).state.value


def planned_job(job_id: str, media: Media, *, key: str | None = None) -> PlannedJob:
    """A job whose inputs go as they are (the plan prepared nothing), billed 3.5 s."""
    tools = find_tools()
    image_info, video_info = probe_file(media.image, tools), probe_file(media.video, tools)
    job = Job(
        id=job_id,
        image=InputRef(raw=str(media.image), path=media.image),
        video=InputRef(raw=str(media.video), path=media.video),
        settings=JobSettings(prompt=f"job {job_id}"),
        provider=FakeProvider.name,
        model=FakeProvider.default_model,
    )
    media_plan = MediaPlan(
        job_id=job_id, action="ok", steps=(), billed_seconds=3.5,
        limits=limits_for("kie", "kling-2.6/motion-control", "video"),
        image_info=image_info, video_info=video_info,
    )  # fmt: skip
    sent = SentMedia(as_is(image_info, "img-sha", url=None), as_is(video_info, "vid-sha", url=None),
                     measured=True)  # fmt: skip
    return PlannedJob(job=job, key=key or f"key-{job_id}", image_sha256="img-sha",
                      video_sha256="vid-sha", billed_seconds=3.5, estimated_cost=0.35,
                      media=media_plan, sent=sent)  # fmt: skip


@contextlib.asynccontextmanager
async def stage_world(
    tmp_path: Path,
    media: Media,
    jobs: list[str],
    script: Script,
    *,
    client_id: bool = False,
    budget: Budget | None = None,
    handler: Handler | None = None,
    options: RunOptions | None = None,
) -> AsyncIterator[World]:
    """A run context for ``jobs`` (registered pending) around the fake provider."""
    providers.register(FakeProvider)
    FakeProvider.reset(script, client_id=client_id)
    config = ProviderConfig(FakeProvider.name, FakeProvider.default_model,
                            FakeProvider.default_base_url, poll_interval=0.01)  # fmt: skip
    planned = {j: planned_job(j, media) for j in jobs}
    output = tmp_path / "out"
    manifest = Manifest(
        path=tmp_path / "manifest.yaml", name="stages", output_dir=output, provider=config,
        budget=budget or Budget(price_per_second={"std": 0.1}),
        jobs=tuple(pj.job for pj in planned.values()),
    )  # fmt: skip
    store = StateStore.open(output)
    store.sync_jobs(
        JobRecord(pj.job.id, pj.key, {"settings": {"mode": "std"}}) for pj in planned.values()
    )
    FakeProvider.state_of = lambda job_id: store.get(job_id).state.value
    log = logging.getLogger(f"stages.{tmp_path.name}")
    reporter, sleeper = RecordingReporter(), RecordingSleeper()
    halt = Halt(lambda _reason: None)
    transport = httpx.MockTransport(handler or _results(media))
    try:
        async with (
            httpx.AsyncClient(transport=transport) as client,
            GroupCommitter(store) as commits,
        ):
            provider = FakeProvider(config, providers.Credentials(), client)
            breaker = CircuitBreaker(threshold=5, cooldown=1.0, clock=sleeper.monotonic)
            calls = Calls(
                sleeper=sleeper, rng=random.Random(7), gate=PauseGate(sleeper), breaker=breaker,
                limiter=RateLimiter(100, 1.0, sleeper=sleeper), halt=halt, log=log, secrets=(),
            )  # fmt: skip
            ctx = RunContext(
                manifest=manifest, planned=planned, options=options or RunOptions(),
                settings=Settings.from_env({"MOTION_PIPELINE_NO_SLEEP": "1"}), store=store,
                journal=Journal(store, commits, reporter, log, ()), provider=provider,
                client=client, storage=Storage(provider, config, store.uploads),
                tools=find_tools(), calls=calls, halt=halt, spending=Spending(manifest.budget),
                disk=DiskGuard(output, floor=0, reserve=0), slots=Slots(4, sleeper.monotonic),
                log=log,
            )  # fmt: skip
            yield World(ctx, store, reporter, halt, sleeper, planned)
    finally:
        store.close()
        providers.unregister(FakeProvider.name)


class Body(httpx.AsyncByteStream):
    """A response body that streams (``content=`` bytes would arrive already read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def streamed(status: int, data: bytes) -> httpx.Response:
    return httpx.Response(status, stream=Body(data), headers={"content-length": str(len(data))})


def _results(media: Media) -> Handler:
    """Result URLs answer a real mp4 (the test clip); anything else is a 404."""
    body = media.video.read_bytes()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "results.invalid":
            return streamed(200, body)
        return httpx.Response(404)

    return handle
