"""fal.ai: the queue API (submit, status, result), ``Key`` auth, uploads through fal's storage.

Wire reference: ../shared/providers.md section 4. What shapes this module:

- the tier is in the endpoint id, not a field: ``<model>/standard/motion-control`` (std) or
  ``<model>/pro/motion-control`` (pro), ``model`` naming the family (``fal-ai/kling-video/v3``);
- the status has **no failed state**: a failed request ends ``COMPLETED`` and its failure is the
  answer of the result fetch (a 422 model error, or a request error whose status and
  ``error_type`` say what went wrong). So :meth:`FalProvider.poll` fetches the result as soon
  as the status says ``COMPLETED`` and returns a failed :class:`TaskStatus` with fal's reason:
  the run fails the job like any task failure, never as a download error or a retry loop. It
  also fetches promptly, as fal wants: queue results are kept an hour, six minutes when big;
- no idempotency key and fal retries some requests on its side: an unanswered submit is
  ambiguous and never re-sent (a human resolves it);
- the status and response URLs the submit answers are used while this process runs; after a
  restart (only the request id is in the state) they are rebuilt the way fal-client's
  ``from_request_id`` does, from the app's owner/alias: ``<base>/<owner>/<alias>/requests/<id>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    BatchFatalError,
    InputError,
    OutOfCreditsError,
    ProviderError,
    RateLimitedError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import Handle, Job, TaskStatus
from pipeline.providers.base import InputURLs, ProviderConfig
from pipeline.providers.common import (
    ClientBase,
    checked_task_id,
    float_or_none,
    no_client_id,
    poll_each,
    requery_result_url,
)
from pipeline.providers.http import Purpose, Reply, exchange, garbage_error, snippet
from pipeline.settings import redact
from pipeline.storage.urls import host_of

#: The manifest's std/pro as the tier segment of fal's endpoint id.
TIERS: Mapping[str, str] = {"std": "standard", "pro": "pro"}
TOKEN_PATH = "/storage/auth/token"  # noqa: S105 - a URL path, not a password
UPLOAD_PATH = "/files/upload"
#: A storage token is renewed when it has less than this many seconds left.
TOKEN_MARGIN = 300.0
_CHUNK = 1024 * 1024


# --------------------------------------------------------------------------- request builders


def endpoint_id(model: str, mode: str) -> str:
    """``fal-ai/kling-video/v2.6`` + ``pro`` -> ``fal-ai/kling-video/v2.6/pro/motion-control``."""
    return f"{model.strip('/')}/{TIERS[mode]}/motion-control"


def app_of(model: str) -> str:
    """The ``owner/alias`` of an endpoint id, which the queue's request URLs use."""
    return "/".join(model.strip("/").split("/")[:2])


def request_urls(base_url: str, model: str, request_id: str) -> tuple[str, str]:
    """(status_url, response_url) of a request, as fal-client's ``from_request_id`` builds them."""
    url = f"{base_url.rstrip('/')}/{app_of(model)}/requests/{quote(request_id, safe='')}"
    return f"{url}/status", url


def build_submit_body(job: Job, urls: InputURLs, config: ProviderConfig) -> dict[str, Any]:
    """The queue submit body: fal's input fields, ``keep_original_sound`` a JSON boolean."""
    settings = job.settings
    body: dict[str, Any] = {
        "image_url": urls.image_url,
        "video_url": urls.video_url,
        "character_orientation": settings.character_orientation,
        "keep_original_sound": settings.keep_original_sound,
    }
    if settings.prompt:
        body["prompt"] = settings.prompt
    body.update(config.options)  # checked against the model's fields by the manifest schema
    return body


# --------------------------------------------------------------------------- response parsers


def error_text(reply: Reply, secrets: Iterable[str]) -> str:
    """fal's ``detail``: a string (request errors) or pydantic items ``{loc, msg, type}``."""
    body = reply.body
    detail = body.get("detail") if isinstance(body, dict) else None
    error_type = reply.headers.get("x-fal-error-type", "")
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        error_type = body["error_type"]
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = (
                    ".".join(str(x) for x in loc if x != "body") if isinstance(loc, list) else ""
                )
                msg = str(item.get("msg") or item.get("type") or "invalid")
                parts.append(f"{where}: {msg}" if where else msg)
                error_type = error_type or str(item.get("type") or "")
        text = "; ".join(parts)
    elif isinstance(detail, str):
        text = detail
    else:
        text = snippet(reply.text, secrets)
    text = text or f"HTTP {reply.status}"
    return redact(f"{text} ({error_type})" if error_type else text, secrets)


def classify(
    status: int, message: str, *, what: str, purpose: Purpose, reply: Reply
) -> ProviderError:
    """The error an HTTP status means for a submit, a status query or an upload."""
    text = f"{what}: {message} (HTTP {status})"
    kwargs: dict[str, Any] = {"code": str(status), "http_status": status}
    if status == 401:
        return AuthError(text, **kwargs)
    if status == 403:  # "User is locked. Reason: Exhausted balance": as final as no credits
        return OutOfCreditsError(text, **kwargs)
    if status == 429:
        return RateLimitedError(text, retry_after=reply.retry_after, **kwargs)
    if status == 404 and purpose != "query":
        return BatchFatalError(f"{text}; check the model and base_url/upload_url", **kwargs)
    if status >= 500 or status in (408, 499):
        if purpose == "create":  # it may be in the queue: never re-sent blindly
            return AmbiguousError(text, **kwargs)
        return TransientError(text, retry_after=reply.retry_after, **kwargs)
    return RefusedError(text, **kwargs)


def _raise_for(reply: Reply, what: str, purpose: Purpose, secrets: list[str]) -> None:
    if reply.status >= 400:
        message = error_text(reply, secrets)
        raise classify(reply.status, message, what=what, purpose=purpose, reply=reply)
    if not (reply.is_json and isinstance(reply.body, dict)):
        raise garbage_error(what, reply, purpose, secrets)


def parse_submit(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> dict[str, str]:
    """``request_id`` and, when given, ``status_url``/``response_url`` of an accepted submit."""
    secrets = list(secrets)
    _raise_for(reply, what, "create", secrets)
    body = reply.body
    if "request_id" not in body:
        raise AmbiguousError(
            f"{what}: accepted without a request_id: {snippet(reply.text, secrets)!r}",
            http_status=reply.status,
        )
    found = {"request_id": checked_task_id(body["request_id"], what=what, secrets=secrets)}
    for key in ("status_url", "response_url"):
        if isinstance(body.get(key), str):
            found[key] = body[key]
    return found


def parse_status(
    reply: Reply, request_id: str, *, what: str, secrets: Iterable[str] = ()
) -> TaskStatus | None:
    """A running status, or None once ``COMPLETED`` (the result fetch decides the outcome)."""
    secrets = list(secrets)
    if reply.status == 404:
        raise RefusedError(
            f"{what}: fal does not know request {request_id} ({error_text(reply, secrets)}); fal "
            "keeps queue requests only a short time after they end",
            code="404",
            http_status=404,
        )
    _raise_for(reply, what, "query", secrets)
    state = str(reply.body.get("status") or "").strip().upper()
    if state == "COMPLETED":
        return None
    # IN_QUEUE, IN_PROGRESS, and anything unknown: still running.
    position = float_or_none(reply.body.get("queue_position"))
    detail = f"{state} (queue position {position:g})" if position and state == "IN_QUEUE" else state
    return TaskStatus(request_id, "running", provider_state=detail or "unknown")


def status_error(reply: Reply, secrets: Iterable[str]) -> str | None:
    """The ``error`` a COMPLETED status carries when the request failed (None when it did not)."""
    body = reply.body if isinstance(reply.body, dict) else {}
    error = body.get("error")
    if not error:
        return None
    kind = body.get("error_type")
    text = str(error) if not isinstance(error, dict) else str(error.get("message") or error)
    return redact(f"{text} ({kind})" if kind else text, secrets)


def parse_result(reply: Reply, request_id: str, failed: str | None, *, what: str,
                 secrets: Iterable[str] = ()) -> TaskStatus:  # fmt: skip
    """The result fetch of a COMPLETED request: its video, or the request's failure.

    ``failed`` is the status's own ``error``. A 4xx is the request's failure (the model's 422,
    a 400, a cancel's 499), a 5xx too when the status said the request failed or the answer
    names an ``error_type``; a bare 5xx, a 429 or no answer is trouble fetching: asked again.
    """
    secrets = list(secrets)
    status = reply.status
    if status == 404:
        return TaskStatus(
            request_id,
            "failed",
            reason=f"fal no longer keeps the result of request {request_id} (queue results are "
            "kept about an hour, six minutes when large)",
            provider_state="404",
        )
    named = "x-fal-error-type" in reply.headers or (
        isinstance(reply.body, dict) and "error_type" in reply.body
    )
    if status >= 400 and status != 429 and (status < 500 or failed or named):
        reason = error_text(reply, secrets)
        if failed and failed not in reason:
            reason = f"{reason}; {failed}"
        return TaskStatus(request_id, "failed", reason=reason, provider_state=f"COMPLETED/{status}")
    _raise_for(reply, what, "query", secrets)
    video = reply.body.get("video")
    url = video.get("url") if isinstance(video, dict) else None
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return TaskStatus(request_id, "succeeded", result_url=url, provider_state="COMPLETED")
    reason = failed or "fal completed the request without a video URL"
    return TaskStatus(request_id, "failed", reason=reason, provider_state="COMPLETED")


def parse_token(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> tuple[str, str, float]:
    """(Authorization value, CDN base URL, expiry) of a storage token."""
    secrets = list(secrets)
    _raise_for(reply, what, "upload", secrets)
    body = reply.body
    token, kind, base = body.get("token"), body.get("token_type"), body.get("base_url")
    if not (isinstance(token, str) and token and isinstance(base, str) and base):
        raise garbage_error(what, reply, "upload", secrets)
    return f"{kind if isinstance(kind, str) and kind else 'Bearer'} {token}", base, _expiry(body)


def _expiry(body: Mapping[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(body.get("expires_at"))).timestamp()
    except ValueError:
        return time.time() + 600.0  # unreadable: renew soon rather than trust it long


def parse_upload(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    secrets = list(secrets)
    _raise_for(reply, what, "upload", secrets)
    url = reply.body.get("access_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    raise garbage_error(what, reply, "upload", secrets)


# --------------------------------------------------------------------------- client


class FalProvider(ClientBase):
    name: ClassVar[str] = "fal"
    default_model: ClassVar[str] = "fal-ai/kling-video/v2.6"
    models: ClassVar[tuple[str, ...]] = ("fal-ai/kling-video/v2.6", "fal-ai/kling-video/v3")
    default_base_url: ClassVar[str] = "https://queue.fal.run"
    default_upload_url: ClassVar[str | None] = "https://rest.alpha.fal.ai"
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "FAL_KEY"}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 24 * 3600.0  # fal.media files outlive this (inferred)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requests: dict[str, tuple[str, str]] = {}
        """request id -> (status_url, response_url) the submit answered, this process only."""
        self._token: tuple[str, str, float] | None = None
        self._token_lock = asyncio.Lock()

    # -- plumbing

    def _secrets(self) -> list[str]:
        token = [self._token[0].split(" ", 1)[-1]] if self._token else []
        return [*self._credentials.secrets(), *token]

    async def _call(self, method: str, url: str, *, what: str, purpose: Purpose,
                    auth: str | None = None, **kw: Any) -> Reply:  # fmt: skip
        key = self._credentials.get("api_key")
        headers = {"Authorization": auth or f"Key {key}", "Accept": "application/json",
                   **kw.pop("headers", {})}  # fmt: skip
        return await exchange(self._client, method, url, what=what, purpose=purpose,
                              secrets=self._secrets(), now=self._clock,
                              deadline=self._deadlines[purpose], headers=headers, **kw)  # fmt: skip

    def _model(self, job: Job | None = None) -> str:
        return (job.model if job is not None and job.model else None) or self.config.model

    def _urls(self, request_id: str) -> tuple[str, str]:
        return self._requests.get(request_id) or request_urls(
            self.config.base_url, self._model(), request_id
        )

    def _keep(self, found: Mapping[str, str]) -> None:
        """Remember the answered URLs when they point at our queue host (the key goes there)."""
        request_id = found["request_id"]
        derived = request_urls(self.config.base_url, self._model(), request_id)
        ours = host_of(self.config.base_url)
        status_url = found.get("status_url", derived[0])
        response_url = found.get("response_url", derived[1])
        if host_of(status_url) == ours and host_of(response_url) == ours:
            self._requests[request_id] = (status_url, response_url)

    # -- Provider protocol

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        """fal-client's storage upload: a CDN token with the key, then the bytes to the CDN."""
        what = f"{self.name} upload of {path.name}"
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise InputError(f"cannot read for upload: {exc.strerror}", path=str(path)) from None
        auth, base, _ = await self._storage_token()
        reply = await self._call(
            "POST", base.rstrip("/") + UPLOAD_PATH, what=what, purpose="upload", auth=auth,
            headers={"Content-Type": content_type, "X-Fal-File-Name": file_name,
                     "Content-Length": str(size)},
            content=_read_chunks(path),
        )  # fmt: skip
        return parse_upload(reply, what=what, secrets=self._secrets())

    async def _storage_token(self) -> tuple[str, str, float]:
        async with self._token_lock:
            if self._token is None or self._token[2] - self._clock() < TOKEN_MARGIN:
                what = f"{self.name} storage token"
                base = self.config.upload_url or self.config.base_url
                reply = await self._call(
                    "POST", base.rstrip("/") + TOKEN_PATH, what=what, purpose="upload",
                    params={"storage_type": "fal-cdn-v3"}, json={},
                )  # fmt: skip
                self._token = parse_token(reply, what=what, secrets=self._secrets())
            return self._token

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        what = f"{self.name} submit for job {job.id}"
        url = (
            f"{self.config.base_url.rstrip('/')}/{endpoint_id(self._model(job), job.settings.mode)}"
        )
        reply = await self._call(
            "POST", url, what=what, purpose="create", json=build_submit_body(job, urls, self.config)
        )
        found = parse_submit(reply, what=what, secrets=self._secrets())
        self._keep(found)
        return Handle(provider=self.name, task_id=found["request_id"])

    async def poll(self, handle: Handle) -> TaskStatus:
        """The status; once COMPLETED, the result fetched at once (it decides the outcome)."""
        request_id = handle.task_id
        status_url, response_url = self._urls(request_id)
        what = f"{self.name} status of request {request_id}"
        reply = await self._call("GET", status_url, what=what, purpose="query")
        running = parse_status(reply, request_id, what=what, secrets=self._secrets())
        if running is not None:
            return running
        failed = status_error(reply, self._secrets())
        what = f"{self.name} result of request {request_id}"
        result = await self._call("GET", response_url, what=what, purpose="query")
        return parse_result(result, request_id, failed, what=what, secrets=self._secrets())

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        return await poll_each(self.poll, handles)

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        raise no_client_id(self.name, job.id)

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """The video URL of a fresh result fetch (fal.media URLs are public and long-lived)."""
        return await requery_result_url(self.poll, handle)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB pieces, read off the event loop (inputs are up to 100 MB)."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        handle.close()
