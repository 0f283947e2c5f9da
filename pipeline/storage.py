"""Local file -> URL: the provider's upload API, pre-hosted http(s) URLs; the upload cache.

http(s) inputs pass through unchanged. A local (possibly prepared) file is uploaded through the
provider when it has an upload API, at most once per content hash and provider endpoint while the
upload is still fresh: Kie deletes uploads after 24 h, so a cached URL older than the provider's
``upload_ttl`` minus a safety margin is uploaded again. Providers without an upload API get a
clear error asking for URLs (S3 and friends come later as storage backends).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiofiles
import httpx

from pipeline.errors import InputError, TransientError
from pipeline.hashing import sha256_file, sha256_text
from pipeline.jobs import InputRef
from pipeline.providers.base import InputURLs, Provider, ProviderConfig
from pipeline.settings import public_url

#: Re-upload this long before the provider deletes an upload: a job may wait in the queue, and
#: the provider fetches the input only when the task starts.
DEFAULT_SAFETY_MARGIN = 3600.0


class UploadCache(Protocol):
    """Where uploads are remembered; the state store implements the same two methods in SQLite."""

    def get(self, provider: str, endpoint: str, sha256: str) -> tuple[str, float] | None:
        """``(url, uploaded_at)`` of the last upload of this content, or None."""
        ...

    def put(
        self, provider: str, endpoint: str, sha256: str, url: str, uploaded_at: float
    ) -> None: ...


class MemoryUploadCache:
    """An :class:`UploadCache` in a dict, for tests and one-shot runs."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[str, float]] = {}

    def get(self, provider: str, endpoint: str, sha256: str) -> tuple[str, float] | None:
        return self._entries.get((provider, endpoint, sha256))

    def put(self, provider: str, endpoint: str, sha256: str, url: str, uploaded_at: float) -> None:
        self._entries[(provider, endpoint, sha256)] = (url, uploaded_at)


@dataclass(frozen=True)
class LocalFile:
    """A file to turn into a URL. ``content_type`` comes from the probed format, not the name."""

    path: Path
    content_type: str
    sha256: str | None = None
    """Content hash when already known (media prep computes it); hashed here otherwise."""


Source = str | LocalFile
"""An http(s) URL to pass through, or a local file to upload."""


def is_http_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def source_of(ref: InputRef, content_type: str, *, sha256: str | None = None) -> Source:
    """The :data:`Source` for a manifest input (URL as is, path as a :class:`LocalFile`)."""
    if ref.url is not None:
        return ref.url
    if ref.path is None:
        raise InputError("input has neither a path nor a URL", path=ref.raw)
    return LocalFile(ref.path, content_type, sha256)


def upload_file_name(sha256: str, path: Path) -> str:
    """A name no other upload will share: Kie overwrites files uploaded under the same name."""
    return f"{sha256[:16]}-{secrets.token_hex(4)}{path.suffix.lower()}"


class Storage:
    """Turns a job's inputs into the URLs a create request carries, for one provider."""

    def __init__(
        self,
        provider: Provider,
        config: ProviderConfig,
        cache: UploadCache,
        *,
        clock: Callable[[], float] = time.time,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
    ) -> None:
        self._provider = provider
        self._name = type(provider).name
        # The cache key names the endpoint without userinfo: it is stored in state.sqlite, and a
        # proxy password in the manifest's URL must never be written anywhere.
        self._endpoint = public_url(config.upload_url or config.base_url)
        self._cache = cache
        self._clock = clock
        self._margin = safety_margin
        # One lock per content hash: two jobs sharing an image upload it once.
        self._locks: dict[str, asyncio.Lock] = {}

    async def input_urls(self, job_id: str, image: Source, video: Source) -> InputURLs:
        return InputURLs(
            image_url=await self.url_for(image, job_id=job_id),
            video_url=await self.url_for(video, job_id=job_id),
        )

    async def url_for(self, source: Source, *, job_id: str) -> str:
        if isinstance(source, str):
            if not is_http_url(source):
                raise InputError(f"not an http(s) URL: {source!r}", job_id=job_id)
            return source
        if not type(self._provider).has_upload:
            raise InputError(
                f"provider {self._name} has no upload API; give this input as an http(s) URL "
                "until a storage backend exists",
                job_id=job_id,
                path=str(source.path),
            )
        digest = source.sha256 or await self._hash(source.path, job_id)
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            cached = self._cache.get(self._name, self._endpoint, digest)
            if cached is not None and self._fresh(cached[1]):
                return cached[0]
            url = await self._provider.upload(
                source.path,
                file_name=upload_file_name(digest, source.path),
                content_type=source.content_type,
            )
            self._cache.put(self._name, self._endpoint, digest, url, self._clock())
            return url

    def _fresh(self, uploaded_at: float) -> bool:
        ttl = type(self._provider).upload_ttl
        return self._clock() - uploaded_at < ttl - self._margin

    @staticmethod
    async def _hash(path: Path, job_id: str) -> str:
        try:
            return await asyncio.to_thread(sha256_file, path)
        except OSError as exc:
            raise InputError(
                f"cannot read: {exc.strerror}", job_id=job_id, path=str(path)
            ) from None


#: Largest input fetched for preparation: the providers' own video limit.
MAX_INPUT_BYTES = 100 * 1024 * 1024


async def download_input(
    client: httpx.AsyncClient,
    url: str,
    folder: Path,
    *,
    job_id: str,
    max_bytes: int = MAX_INPUT_BYTES,
) -> Path:
    """Fetch an http(s) input that must be prepared before it is sent; cached by its URL.

    Written to a temporary name and renamed, so a half download is never taken for the file.
    """
    suffix = Path(urlsplit(url).path).suffix.lower()[:8]
    target = folder / f"{sha256_text(url)[:24]}{suffix}"
    if await asyncio.to_thread(_nonempty, target):
        return target
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}.part"
    size = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise InputError(
                    f"input URL answered HTTP {response.status_code}", job_id=job_id, path=url
                )
            async with aiofiles.open(tmp, "wb") as fh:
                async for block in response.aiter_bytes(1 << 20):
                    size += len(block)
                    if size > max_bytes:
                        raise InputError(
                            f"input is larger than {max_bytes // 1024**2} MB",
                            job_id=job_id,
                            path=url,
                        )
                    await fh.write(block)
        await asyncio.to_thread(os.replace, tmp, target)
    except httpx.HTTPError as exc:
        raise TransientError(f"job {job_id}: fetching input {url}: {exc}") from None
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
    return target


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0
