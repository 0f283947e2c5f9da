"""Inputs -> URLs: pass-through, uploads through the provider, the upload cache and its expiry.

The manifest's bucket (storage: s3) has its own tests against a real S3 server: test_s3_*.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from loopback import Loopback, http_client, ok

from pipeline.errors import InputError, TransientError
from pipeline.jobs import Handle, InputRef, Job, TaskStatus
from pipeline.media.hashing import sha256_file
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.providers.kie import KieProvider
from pipeline.storage.uploads import (
    InputURL,
    LocalFile,
    MemoryUploadCache,
    Storage,
    source_of,
    upload_file_name,
)

HOUR = 3600.0


class RecordingUploads:
    """A provider whose upload API records what it was asked and hands out numbered URLs."""

    name: ClassVar[str] = "fake"
    default_model: ClassVar[str] = "m"
    models: ClassVar[tuple[str, ...]] = ("m",)
    default_base_url: ClassVar[str] = "https://api.fake"
    default_upload_url: ClassVar[str | None] = "https://up.fake"
    key_envs: ClassVar[Mapping[str, str]] = {}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = False
    upload_ttl: ClassVar[float] = 24 * HOUR

    def __init__(
        self, config: ProviderConfig, credentials: Credentials, client: httpx.AsyncClient
    ) -> None:
        self.calls: list[tuple[Path, str, str]] = []

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        self.calls.append((path, file_name, content_type))
        await asyncio.sleep(0)  # let a concurrent caller interleave if the lock were missing
        return f"https://up.fake/{len(self.calls)}/{file_name}"

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        raise NotImplementedError

    async def poll(self, handle: Handle) -> TaskStatus:
        raise NotImplementedError

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        raise NotImplementedError

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        raise NotImplementedError

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        raise NotImplementedError


class NoUploads(RecordingUploads):
    name: ClassVar[str] = "nouploads"
    has_upload: ClassVar[bool] = False


CONFIG = ProviderConfig("fake", "m", "https://api.fake", "https://up.fake")


def storage(
    provider: RecordingUploads, clock: list[float], cache: MemoryUploadCache | None = None
) -> Storage:
    return Storage(provider, CONFIG, cache or MemoryUploadCache(), clock=lambda: clock[0])


def fake() -> RecordingUploads:
    return RecordingUploads(CONFIG, Credentials(), None)  # type: ignore[arg-type]


@pytest.fixture
def image(tmp_path: Path) -> LocalFile:
    path = tmp_path / "alice.PNG"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"alice" * 100)
    return LocalFile(path, "image/png")


def test_http_inputs_pass_through_untouched() -> None:
    provider = fake()
    urls = asyncio.run(
        storage(provider, [0.0]).input_urls(
            "j1", "https://cdn.example/a.png?sig=1", "http://cdn.example/b.mp4"
        )
    )
    assert urls == InputURLs("https://cdn.example/a.png?sig=1", "http://cdn.example/b.mp4")
    assert provider.calls == []


def test_non_http_string_is_an_input_error() -> None:
    with pytest.raises(InputError, match="job j1: not an http"):
        asyncio.run(storage(fake(), [0.0]).url_for("ftp://x/a.png", job_id="j1"))


def test_local_file_is_uploaded_once_under_a_unique_name(image: LocalFile) -> None:
    provider, clock = fake(), [1000.0]
    store = storage(provider, clock)

    async def twice() -> tuple[InputURL, InputURL]:
        return await store.url_for(image, job_id="j1"), await store.url_for(image, job_id="j2")

    first, second = asyncio.run(twice())
    assert first == second
    assert first.expires_at == 1000.0 + 24 * HOUR  # uploaded at 1000, Kie-like ttl
    ((path, name, content_type),) = provider.calls
    digest = hashlib.sha256(image.path.read_bytes()).hexdigest()
    assert path == image.path and content_type == "image/png"
    assert re.fullmatch(rf"{digest[:16]}-[0-9a-f]{{8}}\.png", name)


def test_concurrent_jobs_sharing_an_input_upload_it_once(image: LocalFile) -> None:
    provider = fake()
    store = storage(provider, [0.0])

    async def many() -> list[str]:
        got = await asyncio.gather(*(store.url_for(image, job_id=f"j{i}") for i in range(5)))
        return [u.url for u in got]

    assert len(set(asyncio.run(many()))) == 1
    assert len(provider.calls) == 1


def test_reupload_when_the_cached_upload_nears_expiry(image: LocalFile) -> None:
    provider, clock = fake(), [0.0]
    cache = MemoryUploadCache()
    store = storage(provider, clock, cache)
    first = asyncio.run(store.url_for(image, job_id="j1"))
    clock[0] = 23 * HOUR - 1  # just inside ttl - 1 h margin
    assert asyncio.run(store.url_for(image, job_id="j1")) == first
    clock[0] = 23 * HOUR  # 1 h before Kie deletes it: upload again
    second = asyncio.run(store.url_for(image, job_id="j1"))
    assert second != first and len(provider.calls) == 2
    digest = sha256_file(image.path)
    assert cache.get("fake", "https://up.fake", digest) == (second.url, 23 * HOUR, 47 * HOUR)


def test_rows_without_an_expiry_expire_after_the_provider_ttl(image: LocalFile) -> None:
    # Rows written before schema v3 have no expires_at: uploaded_at + upload_ttl is the rule.
    cache = MemoryUploadCache()
    cache.put("fake", "https://up.fake", sha256_file(image.path), "https://up.fake/old.png", 0.0)
    provider = fake()
    got = asyncio.run(storage(provider, [HOUR], cache).url_for(image, job_id="j"))
    assert got == InputURL("https://up.fake/old.png", 24 * HOUR) and provider.calls == []


def test_input_urls_carry_each_expiry_and_pass_through_urls_never_expire(
    image: LocalFile,
) -> None:
    urls = asyncio.run(storage(fake(), [10.0]).input_urls("j", image, "https://cdn/x.mp4"))
    assert urls.image_expires_at == 10.0 + 24 * HOUR
    assert urls.video_expires_at is None and urls.expires_at == urls.image_expires_at


def test_ensure_fresh_is_free_until_a_url_nears_expiry_then_uploads_again(
    image: LocalFile,
) -> None:
    provider, clock = fake(), [0.0]
    store = storage(provider, clock)

    async def go() -> tuple[InputURLs, InputURLs, InputURLs]:
        urls = await store.input_urls("j1", image, "https://cdn/x.mp4")
        clock[0] = 20 * HOUR  # 4 h left: more than the margin
        same = await store.ensure_fresh(urls, job_id="j1", margin=HOUR)
        assert len(provider.calls) == 1
        clock[0] = 23.5 * HOUR  # half an hour left: a create now could reach a deleted file
        fresh = await store.ensure_fresh(urls, job_id="j1", margin=HOUR)
        return urls, same, fresh

    urls, same, fresh = asyncio.run(go())
    assert same is urls
    assert fresh.image_url != urls.image_url and len(provider.calls) == 2
    assert fresh.image_expires_at == 23.5 * HOUR + 24 * HOUR
    assert fresh.video_url == "https://cdn/x.mp4" and fresh.video_expires_at is None


def test_ensure_fresh_refuses_a_url_it_did_not_make() -> None:
    stranger = InputURLs("https://up.fake/x.png", "https://cdn/x.mp4", image_expires_at=5.0)
    with pytest.raises(InputError, match=r"job j: .*not made by this run"):
        asyncio.run(storage(fake(), [10.0]).ensure_fresh(stranger, job_id="j", margin=60))


def test_cache_is_keyed_by_provider_endpoint_and_content(image: LocalFile, tmp_path: Path) -> None:
    cache = MemoryUploadCache()
    digest = sha256_file(image.path)
    cache.put("fake", "https://other-host", digest, "https://other/x.png", 0.0)
    cache.put("kie", "https://up.fake", digest, "https://kie/x.png", 0.0)
    provider = fake()
    asyncio.run(storage(provider, [1.0], cache).url_for(image, job_id="j1"))
    assert len(provider.calls) == 1  # neither foreign entry was reused
    other = tmp_path / "bob.png"
    other.write_bytes(b"bob")
    asyncio.run(storage(provider, [1.0], cache).url_for(LocalFile(other, "image/png"), job_id="j"))
    assert len(provider.calls) == 2


def test_known_hash_is_trusted_and_used_as_the_key(image: LocalFile) -> None:
    cache = MemoryUploadCache()
    cache.put("fake", "https://up.fake", "f" * 64, "https://up.fake/cached.png", 0.0)
    provider = fake()
    known = LocalFile(image.path, "image/png", sha256="f" * 64)
    got = asyncio.run(storage(provider, [1.0], cache).url_for(known, job_id="j"))
    assert got.url == "https://up.fake/cached.png"
    assert provider.calls == []


def test_provider_without_upload_asks_for_urls(image: LocalFile) -> None:
    provider = NoUploads(CONFIG, Credentials(), None)  # type: ignore[arg-type]
    with pytest.raises(InputError) as info:
        asyncio.run(storage(provider, [0.0]).url_for(image, job_id="j1"))
    message = str(info.value)
    assert "job j1" in message and str(image.path) in message
    assert "http(s) URL" in message and "add a storage block" in message


def test_unreadable_file_names_job_and_path(tmp_path: Path) -> None:
    missing = LocalFile(tmp_path / "gone.mp4", "video/mp4")
    with pytest.raises(InputError, match=r"job j9: .*gone\.mp4: cannot read"):
        asyncio.run(storage(fake(), [0.0]).url_for(missing, job_id="j9"))


def test_source_of_manifest_inputs(tmp_path: Path) -> None:
    assert source_of(InputRef("https://x/a.png", url="https://x/a.png"), "image/png") == (
        "https://x/a.png"
    )
    local = source_of(InputRef("a.png", path=tmp_path / "a.png"), "image/png", sha256="ab")
    assert local == LocalFile(tmp_path / "a.png", "image/png", "ab")


def test_upload_file_names_never_repeat() -> None:
    names = {upload_file_name("a" * 64, Path("x.MOV")) for _ in range(50)}
    assert len(names) == 50 and all(n.endswith(".mov") for n in names)


def test_real_kie_upload_through_storage(image: LocalFile) -> None:
    answer = ok({"success": True, "code": 200, "data": {"downloadUrl": "https://t/up.png"}})
    with Loopback() as srv:
        srv.push(answer)
        config = ProviderConfig("kie", KieProvider.default_model, srv.base_url, srv.base_url)

        async def go() -> tuple[str, str]:
            async with http_client() as client:
                kie = KieProvider(config, Credentials({"api_key": "k" * 16}), client)
                store = Storage(kie, config, MemoryUploadCache())
                return (
                    (await store.url_for(image, job_id="j1")).url,
                    (await store.url_for(image, job_id="j2")).url,
                )

        assert asyncio.run(go()) == ("https://t/up.png", "https://t/up.png")
    assert len(srv.requests) == 1
    assert b'name="uploadPath"\r\n\r\nmotion-pipeline/images' in srv.requests[0].body


def test_failed_upload_is_not_cached(image: LocalFile) -> None:
    with Loopback() as srv:
        srv.push(ok({"success": False, "code": 500, "msg": "disk full"}))
        config = ProviderConfig("kie", KieProvider.default_model, srv.base_url, srv.base_url)
        cache = MemoryUploadCache()

        async def go() -> str:
            async with http_client() as client:
                kie = KieProvider(config, Credentials({"api_key": "k" * 16}), client)
                return (await Storage(kie, config, cache).url_for(image, job_id="j1")).url

        with pytest.raises(TransientError, match="disk full"):
            asyncio.run(go())
    assert cache.get("kie", srv.base_url, sha256_file(image.path)) is None
