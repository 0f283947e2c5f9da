"""Local file -> URL: the provider's upload API, pre-hosted http(s) URLs; the upload cache.

http(s) inputs pass through unchanged. A local (possibly prepared) file is uploaded through the
provider when it has an upload API, at most once per content hash and provider endpoint while the
upload is still fresh: Kie deletes uploads after 24 h, so a cached URL older than the provider's
``upload_ttl`` minus a safety margin is uploaded again. Providers without an upload API get a
clear error asking for URLs (S3 and friends come later as storage backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from pipeline.errors import InputError, PipelineError, TransientError
from pipeline.jobs import InputRef
from pipeline.media.hashing import sha256_file, sha256_text
from pipeline.providers.base import InputURLs, Provider, ProviderConfig
from pipeline.settings import public_url
from pipeline.storage.fetch import Limits, disk_error, download, move_into
from pipeline.storage.urls import display_url

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
_SUFFIX = re.compile(r"\.[a-z0-9]{1,7}")
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


async def download_input(
    client: httpx.AsyncClient,
    url: str,
    folder: Path,
    *,
    job_id: str,
    max_bytes: int = MAX_INPUT_BYTES,
    limits: Limits | None = None,
) -> Path:
    """Fetch an http(s) input that must be prepared before it is sent; cached by its URL.

    The one streaming download of :mod:`pipeline.storage.fetch` (``limits``: ``max_bytes`` with its
    default deadline, speed and redirect rules unless given) writes a temporary name that is
    renamed when complete, so a half download is never taken for the file. An unusable URL or
    answer is an :class:`InputError` (the user must fix the manifest), trouble that may pass is
    a :class:`TransientError`, a full or unwritable disk :class:`BatchStopped`.
    """
    where = display_url(url)
    target = folder / f"{sha256_text(url)[:24]}{_suffix(url)}"
    if await asyncio.to_thread(_nonempty, target):
        return target
    try:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, folder) from None
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}.part"

    def unusable(reason: str) -> InputError:
        return InputError(f"input {reason}", job_id=job_id, path=where)

    def check_status(status: int, retry_after: float | None) -> PipelineError | None:
        if 200 <= status < 300:
            return None
        if status in _TRANSIENT_STATUSES or status >= 500:
            return TransientError(
                f"job {job_id}: input download from {where} answered HTTP {status}",
                http_status=status,
                retry_after=retry_after,
            )
        return InputError(f"input URL answered HTTP {status}", job_id=job_id, path=where)

    try:
        await download(
            client, url, tmp, job_id=job_id, label="input download",
            limits=limits or Limits(max_bytes), unusable=unusable, check_status=check_status,
        )  # fmt: skip
        await asyncio.to_thread(move_into, tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return target


def _suffix(url: str) -> str:
    """The URL path's extension when it is a plain one (ffprobe and names rely on it), else ""."""
    try:
        suffix = Path(urlsplit(url).path).suffix.lower()
    except ValueError:  # a malformed URL: download() says what is wrong with it
        return ""
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:  # unreadable: the download below reports the folder properly
        return False
