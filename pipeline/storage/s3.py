"""The manifest's bucket: content-addressed private objects, handed out as presigned GET URLs.

Each input goes to ``<prefix><sha256 of its bytes><.ext>``. Before a PUT comes a HEAD: an object
already under that key with the right size and hash is kept, so two jobs sharing a file, a
rerun, and a run resumed after a crash between the PUT and the state commit all write nothing
(and no second object can exist: the key is the content). The bucket is the user's: it is never
created, its policy never changed, its objects never deleted.

Why boto3: it is the standard S3 client, and its credential chain (environment, profiles, SSO,
assume-role, instance roles) is the one users already configure; an async or Rust client would
add a second chain to learn. Its calls block, so each runs in a worker thread; the runner's
upload pool bounds how many. botocore's own retries are off: the runner's retry primitive is the
one retry of every call, and :mod:`pipeline.storage.s3errors` tells it what may be retried.

Presigning is local (no request): a URL about to expire is signed again for nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.manifest.model import StorageConfig
from pipeline.settings import Settings
from pipeline.storage.aws import (
    DEFAULT_REGION,
    AwsCredentials,
    credentials,
    credentials_expiry,
    session_for,
)
from pipeline.storage.s3errors import S3Call, translate

#: One PUT; the providers take 100 MB at most, and no prepared input comes near this.
MAX_OBJECT_BYTES = 512 * 1024**2
#: Seconds, as every other request of the tool: connect, then each read.
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
#: The object name used by :meth:`S3Bucket.preflight`; never written.
PREFLIGHT_KEY = ".motion-pipeline-preflight"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class SignedURL:
    """A presigned GET URL and the Unix time it stops working."""

    url: str
    expires_at: float


@dataclass(frozen=True)
class Stored:
    """An object in the bucket: its key, and whether this call wrote it (False: it was there)."""

    key: str
    written: bool


class S3Bucket:
    """One ``storage`` block's bucket, with credentials resolved at construction.

    Construction resolves the AWS chain (MissingKeyError when it finds nothing) and builds the
    client; it sends no request. ``clock`` is Unix time (tests move it).
    """

    def __init__(
        self,
        storage: StorageConfig,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from botocore.config import Config  # optional extra

        self.storage = storage
        self._clock = clock
        session = session_for(settings, storage)
        found: AwsCredentials = credentials(session)
        self._secrets = tuple(found.secrets())
        self._live = session.get_credentials()  # the object the client signs with (refreshed)
        config = Config(
            signature_version="s3v4",
            # Path style for S3-compatible services (MinIO, R2, moto on 127.0.0.1): no bucket
            # name in the host, so no wildcard DNS or certificate is needed.
            s3={"addressing_style": "path" if storage.endpoint_url else "auto"},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"total_max_attempts": 1, "mode": "standard"},  # one try: ours retries
            # Only the checksums S3 requires: the newer defaults break GCS and older MinIO.
            # Integrity comes from Content-MD5, which every S3-compatible service checks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=16,
        )
        try:
            self._client = session.client(
                "s3",
                endpoint_url=storage.endpoint_url,
                region_name=session.region_name or DEFAULT_REGION,
                config=config,
            )
        except Exception as exc:  # a malformed endpoint or region
            raise translate(exc, self._call("configure")) from None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret key and session token the client signs with: for redaction."""
        return self._secrets

    def key_for(self, sha256: str, suffix: str) -> str:
        return f"{self.storage.prefix}{sha256}{suffix.lower()}"

    # ------------------------------------------------------------------ requests

    async def preflight(self) -> None:
        """One read-only request that proves the bucket exists and the credentials are accepted.

        Run before anything is spent. A GET of a key that never exists answers NoSuchKey (all
        well), AccessDenied (well too: the credentials may lack s3:ListBucket; the PUT will say
        more), NoSuchBucket or an auth error (raised, see :mod:`pipeline.storage.s3errors`).
        """
        key = self.storage.prefix + PREFLIGHT_KEY
        call = self._call("check of", key=key)

        def check() -> None:
            try:
                answer = self._client.get_object(
                    Bucket=self.storage.bucket, Key=key, Range="bytes=0-0"
                )
            except Exception as exc:
                error = _code(exc)
                if error not in {"NoSuchKey", "AccessDenied", "404", "403", "InvalidRange"}:
                    raise translate(exc, call) from None
                answer = getattr(exc, "response", {})
            self._check_region(answer, call)

        await asyncio.to_thread(check)

    def _check_region(self, answer: Any, call: S3Call) -> None:
        """AWS names the bucket's region in every answer; a presigned URL signed for another
        region is refused when the provider fetches it, so say it now (the API calls would
        only have been redirected)."""
        headers = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        actual = headers.get("x-amz-bucket-region")
        region = self._client.meta.region_name
        if actual and region and actual != region and self.storage.endpoint_url is None:
            raise ConfigError(
                call.text(f"the bucket is in region {actual}, not {region}: "
                          f"set storage.region: {actual}")
            )  # fmt: skip

    async def store(
        self, path: Path, *, sha256: str, suffix: str, content_type: str, job_id: str
    ) -> Stored:
        """Make sure ``<prefix><sha256><suffix>`` holds the bytes of ``path`` (HEAD, then PUT)."""
        key = self.key_for(sha256, suffix)
        return await asyncio.to_thread(self._store, path, sha256, key, content_type, job_id)

    def presign(self, key: str) -> SignedURL:
        """A GET URL for ``key``, valid ``url_expires`` s (less if the credentials expire)."""
        lifetime = self.storage.url_expires
        # SigV4 dates a signature to the whole second (X-Amz-Date), and the URL expires that
        # many seconds after it: up to a second before "now + lifetime". Take the earlier time.
        signed_at = math.floor(self._clock())
        try:
            url = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.storage.bucket, "Key": key},
                ExpiresIn=lifetime,
            )
        except Exception as exc:
            raise translate(exc, self._call("signing a URL for", key=key)) from None
        expires_at: float = signed_at + lifetime
        creds_end = credentials_expiry(self._live)
        if creds_end is not None:
            expires_at = min(expires_at, creds_end)
        return SignedURL(str(url), expires_at)

    # ------------------------------------------------------------------ in a worker thread

    def _store(self, path: Path, sha256: str, key: str, content_type: str, job_id: str) -> Stored:
        call = self._call("upload to", key=key, job_id=job_id)
        size, md5 = _digests(path, sha256, job_id)
        existing = self._head(key, call)
        if existing is not None and _same(existing, size, sha256):
            return Stored(key, written=False)
        try:
            with path.open("rb") as body:
                self._client.put_object(
                    Bucket=self.storage.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    ContentMD5=md5,
                    ContentType=content_type,
                    Metadata={"sha256": sha256},
                )
        except PipelineError:
            raise
        except Exception as exc:
            raise translate(exc, call) from None
        return Stored(key, written=True)

    def _head(self, key: str, call: S3Call) -> dict[str, Any] | None:
        """The object's headers, or None when it is not there (or cannot be seen: no
        s3:ListBucket makes a missing key answer 403; the PUT then says whether we may write)."""
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.storage.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in {"404", "NoSuchKey", "NotFound", "403"}:
                return None
            raise translate(exc, call) from None
        return head

    def _call(self, op: str, *, key: str | None = None, job_id: str | None = None) -> S3Call:
        return S3Call(self.storage, op, key=key, job_id=job_id, secrets=self._secrets)


def _digests(path: Path, sha256: str, job_id: str) -> tuple[int, str]:
    """Size and base64 MD5 of ``path``, checking on the way that its sha256 is the one planned.

    The object's name claims its content: a file changed since planning must not be stored
    under the old hash (the provider would get other bytes than the plan measured).
    """
    md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK):
                md5.update(block)
                sha.update(block)
                size += len(block)
                if size > MAX_OBJECT_BYTES:
                    raise InputError(
                        f"over {MAX_OBJECT_BYTES // 1024**2} MB, too large to upload",
                        job_id=job_id,
                        path=str(path),
                    )
    except OSError as exc:
        raise InputError(f"cannot read for upload: {exc.strerror}", job_id=job_id,
                         path=str(path)) from None  # fmt: skip
    if sha.hexdigest() != sha256:
        raise InputError(
            "changed since it was planned (its sha256 differs): run again to plan it anew",
            job_id=job_id,
            path=str(path),
        )
    return size, base64.b64encode(md5.digest()).decode("ascii")


def _same(head: dict[str, Any], size: int, sha256: str) -> bool:
    """An object already under our key holds our bytes: same size, and same hash if it says."""
    if int(head.get("ContentLength", -1)) != size:
        return False
    claimed = (head.get("Metadata") or {}).get("sha256")
    return claimed is None or claimed == sha256


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str((response.get("Error") or {}).get("Code") or "")
