"""Each provider client end to end against the sandbox server, over loopback sockets.

Real client code, real HTTP, real ffmpeg renders: create -> poll -> download, uploads through
storage for Kie, auth failures, and every sandbox fault kind classified as the runner expects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from loopback import http_client
from mediagen import make_image, make_video
from waiting import wait_until_async

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    OutOfCreditsError,
    RateLimitedError,
    TransientError,
)
from pipeline.jobs import Handle, InputRef, Job, JobSettings, TaskStatus
from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import Credentials, InputURLs, Provider, ProviderConfig
from pipeline.providers.fal import FalProvider
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider
from pipeline.providers.replicate import ReplicateProvider
from pipeline.providers.sandbox import SandboxProvider
from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer
from pipeline.storage.uploads import LocalFile, MemoryUploadCache, Storage

T = TypeVar("T")

KEYS = SandboxKeys(
    kie="kie-e2e-key", acedata="ace-e2e-key", kling_access="ak-e2e", kling_secret="sk-e2e",
    fal="fal-e2e-key", replicate="r8-e2e-token",
)  # fmt: skip
CREDENTIALS = {
    "kie": Credentials({"api_key": "kie-e2e-key"}),
    "acedata": Credentials({"api_key": "ace-e2e-key"}),
    "kling": Credentials({"access_key": "ak-e2e", "secret_key": "sk-e2e"}),
    "fal": Credentials({"api_key": "fal-e2e-key"}),
    "replicate": Credentials({"api_key": "r8-e2e-token"}),
}
CLASSES: dict[str, type[Provider]] = {
    "kie": KieProvider,
    "acedata": AceDataProvider,
    "kling": KlingProvider,
    "fal": FalProvider,
    "replicate": ReplicateProvider,
    "sandbox": SandboxProvider,
}
PROTOCOLS = ["kie", "acedata", "kling", "fal", "replicate"]


@dataclass(frozen=True)
class Media:
    image: Path
    video: Path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    root = tmp_path_factory.mktemp("media")
    return Media(
        make_image(root / "char.png", 320, 400),
        make_video(root / "dance.mp4", seconds=3.5, width=360, height=480, fps=10),
    )


def job(kind: str) -> Job:
    cls = CLASSES[kind]
    return Job(
        id=f"{kind}-job",
        image=InputRef("char.png"),
        video=InputRef("dance.mp4"),
        settings=JobSettings(character_orientation="image"),
        provider=kind,
        model=cls.default_model,
    )


def provider(
    kind: str, srv: SandboxServer, client: httpx.AsyncClient, creds: Credentials | None = None
) -> Provider:
    cls = CLASSES[kind]
    config = ProviderConfig(kind, cls.default_model, srv.base_url, srv.base_url)
    return cls(config, creds or CREDENTIALS.get(kind, Credentials()), client)


def run(fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with http_client(timeout=httpx.Timeout(60.0)) as client:
            return await fn(client)

    return asyncio.run(main())


async def urls_for(kind: str, srv: SandboxServer, p: Provider, media: Media) -> InputURLs:
    if type(p).has_upload:
        config = ProviderConfig(kind, type(p).default_model, srv.base_url, srv.base_url)
        store = Storage(p, config, MemoryUploadCache())
        return await store.input_urls(
            job(kind).id, LocalFile(media.image, "image/png"), LocalFile(media.video, "video/mp4")
        )
    return InputURLs(srv.file_url(media.image), srv.file_url(media.video))


async def until_done(p: Provider, handle: Handle) -> TaskStatus:
    async def terminal() -> TaskStatus | None:
        status = await p.poll(handle)
        return status if status.is_terminal else None

    return await wait_until_async(terminal, what=f"task {handle.task_id} to finish")


@pytest.mark.parametrize("kind", [*PROTOCOLS, "sandbox"])
def test_create_poll_download(kind: str, media: Media, tmp_path: Path) -> None:
    keys = SandboxKeys() if kind == "sandbox" else KEYS
    profile = FaultProfile.from_dict({"latency": {"polls": 1}})
    with SandboxServer(keys=keys, faults=profile, data_dir=tmp_path) as srv:

        async def go(client: httpx.AsyncClient) -> tuple[Handle, TaskStatus, bytes]:
            p = provider(kind, srv, client)
            handle = await p.submit(
                job(kind), await urls_for(kind, srv, p, media), client_id="mp-e2e-1"
            )
            status = await until_done(p, handle)
            assert status.result_url, status
            data = (await client.get(status.result_url)).content
            return handle, status, data

        handle, status, data = run(go)
        (entry,) = srv.ledger.snapshot()
    assert status.phase == "succeeded", status.reason
    assert data[4:8] == b"ftyp"
    assert entry.task_id == handle.task_id
    if kind == "kling":
        assert entry.client_id == "mp-e2e-1" == handle.client_id


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_wrong_key_is_auth_error(kind: str, media: Media, tmp_path: Path) -> None:
    wrong = {
        "kie": Credentials({"api_key": "nope-nope"}),
        "acedata": Credentials({"api_key": "nope-nope"}),
        "kling": Credentials({"access_key": "ak-e2e", "secret_key": "wrong-secret"}),
        "fal": Credentials({"api_key": "nope-nope"}),
        "replicate": Credentials({"api_key": "nope-nope"}),
    }[kind]
    with SandboxServer(keys=KEYS, data_dir=tmp_path) as srv:
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))
        with pytest.raises(AuthError) as info:
            run(lambda c: provider(kind, srv, c, wrong).submit(job(kind), urls, client_id="x"))
        assert len(srv.ledger) == 0
    assert "nope-nope" not in str(info.value) and "wrong-secret" not in str(info.value)


def fault(kind: str, **rule: Any) -> FaultProfile:
    return FaultProfile.from_dict({"faults": [{"kind": kind, **rule}]})


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize(
    ("rule", "error", "created"),
    [
        ({"kind": "reset_after_commit", "endpoint": "create"}, AmbiguousError, 1),
        ({"kind": "reset_before_commit", "endpoint": "create"}, AmbiguousError, 0),
        ({"kind": "malformed_json", "endpoint": "create"}, AmbiguousError, 1),
        ({"kind": "server_error", "endpoint": "create"}, AmbiguousError, 0),
        ({"kind": "rate_limit", "endpoint": "create", "retry_after": 5}, RateLimitedError, 0),
        ({"kind": "out_of_credits", "endpoint": "create"}, OutOfCreditsError, 0),
        ({"kind": "bad_key", "endpoint": "create"}, AuthError, 0),
    ],
    ids=["reset-after", "reset-before", "malformed", "5xx", "429", "credits", "bad-key"],
)
def test_create_faults(
    kind: str,
    rule: dict[str, Any],
    error: type[Exception],
    created: int,
    media: Media,
    tmp_path: Path,
) -> None:
    profile = FaultProfile.from_dict({"faults": [{**rule, "times": 1}]})
    with SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path) as srv:
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def go(client: httpx.AsyncClient) -> Handle | None:
            p = provider(kind, srv, client)
            with pytest.raises(error) as info:
                await p.submit(job(kind), urls, client_id="mp-fault-1")
            if isinstance(info.value, RateLimitedError):
                assert info.value.retry_after == 5
            if kind == "kling" and error is AmbiguousError:
                return await p.reconcile(job(kind), "mp-fault-1")
            return None

        adopted = run(go)
        ledger = srv.ledger.snapshot()
    assert len(ledger) == created
    if kind == "kling" and error is AmbiguousError:
        # external_task_id settles what the client could not know.
        assert (adopted.task_id if adopted else None) == (ledger[0].task_id if ledger else None)


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("rule_kind", ["server_error", "reset_before_commit", "malformed_json"])
def test_poll_faults_are_transient(kind: str, rule_kind: str, media: Media, tmp_path: Path) -> None:
    with SandboxServer(
        keys=KEYS, faults=fault(rule_kind, endpoint="poll", times=1), data_dir=tmp_path
    ) as srv:
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def go(client: httpx.AsyncClient) -> None:
            p = provider(kind, srv, client)
            handle = await p.submit(job(kind), urls, client_id="mp-poll-1")
            with pytest.raises(TransientError):
                await p.poll(handle)

        run(go)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_task_failure_carries_the_reason(kind: str, media: Media, tmp_path: Path) -> None:
    profile = fault("task_fail", message="moderation check failed: weapon")
    with SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path) as srv:
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def go(client: httpx.AsyncClient) -> TaskStatus:
            p = provider(kind, srv, client)
            return await until_done(p, await p.submit(job(kind), urls, client_id="mp-fail-1"))

        status = run(go)
    assert status.phase == "failed"
    assert status.reason and "moderation check failed: weapon" in status.reason


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_expired_result_url_is_refreshed(kind: str, media: Media, tmp_path: Path) -> None:
    with SandboxServer(keys=KEYS, data_dir=tmp_path) as srv:
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def go(client: httpx.AsyncClient) -> tuple[int, int]:
            p = provider(kind, srv, client)
            handle = await p.submit(job(kind), urls, client_id="mp-exp-1")
            status = await until_done(p, handle)
            assert status.result_url
            srv.expire_results()
            stale = (await client.get(status.result_url)).status_code
            fresh = await p.refresh_result_url(handle, status)
            assert fresh
            return stale, (await client.get(fresh)).status_code

        stale, fresh_status = run(go)
    assert stale in (403, 404)
    assert fresh_status == 200
