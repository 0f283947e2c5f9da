"""Local file -> URL: the manifest's bucket, the provider's upload API, pre-hosted http(s) URLs.

http(s) inputs pass through unchanged. A local (possibly prepared) file goes, in this order:

1. to the manifest's ``storage`` bucket when there is one (any provider; Kie too): a
   content-addressed private object, handed out as a presigned GET URL
   (:class:`~pipeline.storage.s3.S3Bucket`);
2. else through the provider's upload API, at most once per content hash and endpoint while the
   upload is fresh (Kie deletes uploads after its ``upload_ttl``);
3. else nowhere: a clear error (the manifest check and the plan refuse such jobs first, see
   :func:`pipeline.storage.policy.can_send_files`).

Every URL handed out carries its expiry (:class:`~pipeline.providers.base.InputURLs`), and
:meth:`Storage.ensure_fresh` signs again (bucket) or uploads again (provider) whatever could
expire before the provider fetches it: a late create, a retry, a resume the next day.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import InputError
from pipeline.jobs import InputRef
from pipeline.media.hashing import sha256_file
from pipeline.providers.base import InputURLs, Provider, ProviderConfig
from pipeline.settings import Settings, public_url
from pipeline.storage.inputs import MAX_INPUT_BYTES, download_input
from pipeline.storage.urls import display_url

if TYPE_CHECKING:
    from pipeline.manifest.model import Manifest
    from pipeline.storage.s3 import S3Bucket

__all__ = [  # download_input moved to pipeline.storage.inputs; importable from here as before
    "MAX_INPUT_BYTES",
    "InputURL",
    "LocalFile",
    "MemoryUploadCache",
    "Source",
    "Storage",
    "UploadCache",
    "download_input",
    "source_of",
    "storage_for_run",
    "upload_file_name",
]

#: Re-upload this long before the provider deletes an upload: a job may wait in the queue, and
#: the provider fetches the input only when the task starts.
DEFAULT_SAFETY_MARGIN = 3600.0
#: Re-sign a presigned URL this long before it expires, at most (signing costs nothing).
BUCKET_MARGIN = 300.0
#: The uploads table's ``provider`` column for objects in the manifest's bucket.
BUCKET_ROW = "s3"
_SUFFIXES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
}


class UploadCache(Protocol):
    """Where uploads are remembered; the state store implements the same two methods in SQLite."""

    def get(
        self, provider: str, endpoint: str, sha256: str
    ) -> tuple[str, float, float | None] | None:
        """``(url, uploaded_at, expires_at)`` of the last upload of this content, or None."""
        ...

    def put(
        self,
        provider: str,
        endpoint: str,
        sha256: str,
        url: str,
        uploaded_at: float,
        expires_at: float | None = None,
    ) -> None: ...


class MemoryUploadCache:
    """An :class:`UploadCache` in a dict, for tests and one-shot runs."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[str, float, float | None]] = {}

    def get(
        self, provider: str, endpoint: str, sha256: str
    ) -> tuple[str, float, float | None] | None:
        return self._entries.get((provider, endpoint, sha256))

    def put(
        self,
        provider: str,
        endpoint: str,
        sha256: str,
        url: str,
        uploaded_at: float,
        expires_at: float | None = None,
    ) -> None:
        self._entries[(provider, endpoint, sha256)] = (url, uploaded_at, expires_at)


@dataclass(frozen=True)
class LocalFile:
    """A file to turn into a URL. ``content_type`` comes from the probed format, not the name."""

    path: Path
    content_type: str
    sha256: str | None = None
    """Content hash when already known (media prep computes it); hashed here otherwise."""


Source = str | LocalFile
"""An http(s) URL to pass through, or a local file to upload."""


@dataclass(frozen=True)
class InputURL:
    """One URL a create carries and when it stops working (Unix time; None: it does not)."""

    url: str
    expires_at: float | None = None


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


def object_suffix(source: LocalFile) -> str:
    """The extension of a bucket object: from the content type (providers look at it)."""
    return _SUFFIXES.get(source.content_type) or source.path.suffix.lower()[:8]


class Storage:
    """Turns a job's inputs into the URLs a create request carries, for one provider.

    ``bucket``: the manifest's storage (wins over the provider's upload API). Without it, local
    files go through the provider's upload API, or are refused when it has none.
    """

    def __init__(
        self,
        provider: Provider,
        config: ProviderConfig,
        cache: UploadCache,
        *,
        bucket: S3Bucket | None = None,
        clock: Callable[[], float] = time.time,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
    ) -> None:
        self._provider = provider
        self._name = type(provider).name
        # The cache key names the endpoint without userinfo: it is stored in state.sqlite, and a
        # proxy password in the manifest's URL must never be written anywhere.
        self._endpoint = public_url(config.upload_url or config.base_url)
        self._cache = cache
        self._bucket = bucket
        self._clock = clock
        self._margin = safety_margin
        # One lock per content hash: two jobs sharing an image upload it once.
        self._locks: dict[str, asyncio.Lock] = {}
        # Bucket objects checked (HEAD, PUT if missing) by this run: content hash -> key.
        self._stored: dict[str, str] = {}
        # What each handed-out URL was made from, so ensure_fresh can make it again.
        self._origins: dict[str, tuple[LocalFile, str]] = {}

    @property
    def refresh_margin(self) -> float:
        """The ``margin`` to give :meth:`ensure_fresh` before a create: half a presigned URL's
        lifetime, at most :data:`BUCKET_MARGIN`; the upload safety margin for provider uploads."""
        if self._bucket is not None:
            return min(BUCKET_MARGIN, self._bucket.storage.url_expires / 2)
        return self._margin

    async def preflight(self) -> None:
        """Before anything is spent: prove the bucket exists and accepts the credentials (one
        read-only request); nothing to check for provider uploads."""
        if self._bucket is not None:
            await self._bucket.preflight()

    async def input_urls(self, job_id: str, image: Source, video: Source) -> InputURLs:
        image_url = await self.url_for(image, job_id=job_id)
        video_url = await self.url_for(video, job_id=job_id)
        return InputURLs(
            image_url=image_url.url,
            video_url=video_url.url,
            image_expires_at=image_url.expires_at,
            video_expires_at=video_url.expires_at,
        )

    async def ensure_fresh(self, urls: InputURLs, *, job_id: str, margin: float) -> InputURLs:
        """``urls`` with every URL that expires within ``margin`` seconds made anew.

        Cheap when nothing is that close (no request, no await on I/O); a bucket URL is signed
        again locally, a provider upload is uploaded again (a request: retry TransientError).
        """
        now = self._clock()
        out = urls
        for role in ("image", "video"):
            url: str = getattr(urls, f"{role}_url")
            expires_at: float | None = getattr(urls, f"{role}_expires_at")
            if expires_at is None or expires_at - now > margin:
                continue
            origin = self._origins.get(url)
            if origin is None:
                raise InputError(
                    f"the {role} URL expires soon and was not made by this run, so it cannot "
                    "be made again",
                    job_id=job_id,
                    path=display_url(url),
                )
            source, digest = origin
            fresh = await self._send(source, digest, job_id=job_id, margin=margin)
            if role == "image":
                out = replace(out, image_url=fresh.url, image_expires_at=fresh.expires_at)
            else:
                out = replace(out, video_url=fresh.url, video_expires_at=fresh.expires_at)
        return out

    async def url_for(self, source: Source, *, job_id: str) -> InputURL:
        if isinstance(source, str):
            if not is_http_url(source):
                raise InputError(f"not an http(s) URL: {source!r}", job_id=job_id)
            return InputURL(source)
        if self._bucket is None and not type(self._provider).has_upload:
            raise InputError(
                f"provider {self._name} has no upload API; give this input as an http(s) URL, "
                "or add a storage block (an S3-compatible bucket) to the manifest",
                job_id=job_id,
                path=str(source.path),
            )
        digest = source.sha256 or await self._hash(source.path, job_id)
        return await self._send(source, digest, job_id=job_id, margin=self._margin)

    async def _send(
        self, source: LocalFile, digest: str, *, job_id: str, margin: float
    ) -> InputURL:
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if self._bucket is not None:
                sent = await self._in_bucket(self._bucket, source, digest, job_id)
            else:
                sent = await self._uploaded(source, digest, margin)
        self._origins[sent.url] = (source, digest)
        return sent

    async def _in_bucket(
        self, bucket: S3Bucket, source: LocalFile, digest: str, job_id: str
    ) -> InputURL:
        key = self._stored.get(digest)
        if key is None:
            # Checked once per run (a HEAD; a PUT only when the object is missing): a rerun
            # writes nothing, and an object deleted since (a lifecycle rule) is put back.
            stored = await bucket.store(
                source.path,
                sha256=digest,
                suffix=object_suffix(source),
                content_type=source.content_type,
                job_id=job_id,
            )
            key = stored.key
            location = f"s3://{bucket.storage.bucket}/{key}"
            cached = self._cache.get(BUCKET_ROW, self._bucket_endpoint(bucket), digest)
            if stored.written or cached is None or cached[0] != location:
                self._cache.put(
                    BUCKET_ROW, self._bucket_endpoint(bucket), digest, location, self._clock()
                )
            self._stored[digest] = key
        signed = bucket.presign(key)
        return InputURL(signed.url, signed.expires_at)

    async def _uploaded(self, source: LocalFile, digest: str, margin: float) -> InputURL:
        ttl = type(self._provider).upload_ttl
        cached = self._cache.get(self._name, self._endpoint, digest)
        if cached is not None:
            url, uploaded_at, expires_at = cached
            expires_at = uploaded_at + ttl if expires_at is None else expires_at
            if expires_at - self._clock() > margin:
                return InputURL(url, expires_at)
        uploaded_at = self._clock()
        url = await self._provider.upload(
            source.path,
            file_name=upload_file_name(digest, source.path),
            content_type=source.content_type,
        )
        expires_at = uploaded_at + ttl
        self._cache.put(self._name, self._endpoint, digest, url, uploaded_at, expires_at)
        return InputURL(url, expires_at)

    @staticmethod
    def _bucket_endpoint(bucket: S3Bucket) -> str:
        # Public by construction: endpoint_url with credentials is refused by the manifest check.
        return f"{bucket.storage.endpoint_url or 'aws'}/{bucket.storage.bucket}"

    @staticmethod
    async def _hash(path: Path, job_id: str) -> str:
        try:
            return await asyncio.to_thread(sha256_file, path)
        except OSError as exc:
            raise InputError(
                f"cannot read: {exc.strerror}", job_id=job_id, path=str(path)
            ) from None


def storage_for_run(
    manifest: Manifest,
    provider: Provider,
    config: ProviderConfig,
    cache: UploadCache,
    settings: Settings,
) -> Storage:
    """The :class:`Storage` of one run: with the manifest's bucket when it has ``storage``.

    Resolves the AWS credentials (MissingKeyError when there are none; ConfigError without the
    s3 extra) but sends nothing; call :meth:`Storage.preflight` before the first create.
    """
    bucket = None
    if manifest.storage is not None:
        from pipeline.storage.s3 import S3Bucket  # boto3 only when used

        bucket = S3Bucket(manifest.storage, settings)
    return Storage(provider, config, cache, bucket=bucket)
