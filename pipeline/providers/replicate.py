"""Replicate: predictions on an official model, ``Bearer`` auth, inputs through the files API.

Wire reference: ../shared/providers.md section 5, replicate-python (``replicate/prediction.py``,
``replicate/file.py``, ``replicate/exceptions.py``). What shapes this module:

- ``POST /v1/models/{owner}/{name}/predictions`` with ``{"input": {...}}`` answers 201 and the
  prediction; ``GET /v1/predictions/{id}`` follows it through ``starting``, ``processing`` to
  ``succeeded`` (``output`` one URL), ``failed`` (``error``) or ``canceled``;
- errors are problem details ``{title, detail, status}``; a 429 says when to come back in
  ``Retry-After`` (and in its text, "resets in ~30s"), which the run honours as a floor;
- Replicate deletes an API prediction's input, output and logs about an hour after it ends
  (``data_removed: true``, the output URL then 404s), so downloads come first. A job resumed
  after that window is told so: a succeeded prediction without its output fails with that
  reason, an unknown prediction id is explained, never retried forever;
- no idempotency key: an unanswered create is ambiguous and needs a human.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
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
    no_client_id,
    poll_each,
    requery_result_url,
)
from pipeline.providers.http import Purpose, Reply, exchange, garbage_error, snippet
from pipeline.settings import redact

FILES_PATH = "/v1/files"
PREDICTIONS_PATH = "/v1/predictions"
#: How long Replicate keeps an API prediction's data after it ends (its docs: about an hour).
RETENTION = "about an hour"
_RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


# --------------------------------------------------------------------------- request builders


def build_create_body(job: Job, urls: InputURLs, config: ProviderConfig) -> dict[str, Any]:
    """The prediction's input: Replicate names the media ``image``/``video`` and takes std/pro.

    ``character_orientation`` is always sent: Replicate's default (``image``) is not ours.
    """
    settings = job.settings
    payload: dict[str, Any] = {
        "image": urls.image_url,
        "video": urls.video_url,
        "character_orientation": settings.character_orientation,
        "mode": settings.mode,
        "keep_original_sound": settings.keep_original_sound,
    }
    if settings.prompt:
        payload["prompt"] = settings.prompt
    payload.update(config.options)  # checked against the model's fields by the manifest schema
    return {"input": payload}


# --------------------------------------------------------------------------- response parsers


def problem_text(reply: Reply, secrets: Iterable[str]) -> str:
    """A problem detail's ``detail`` (or title), else a snippet of the body."""
    body = reply.body
    text = ""
    if isinstance(body, dict):
        for key in ("detail", "title", "error"):
            if isinstance(body.get(key), str) and body[key].strip():
                text = " ".join(body[key].split())
                break
    return redact(text, secrets) if text else snippet(reply.text, secrets) or f"HTTP {reply.status}"


def retry_hint(reply: Reply, message: str) -> float | None:
    """Seconds to wait: ``Retry-After``, else the "resets in ~30s" of the 429 text."""
    if reply.retry_after is not None:
        return reply.retry_after
    found = _RESETS_IN.search(message)
    return float(found.group(1)) if found else None


def classify(
    status: int, message: str, *, what: str, purpose: Purpose, reply: Reply
) -> ProviderError:
    text = f"{what}: {message} (HTTP {status})"
    kwargs: dict[str, Any] = {"code": str(status), "http_status": status}
    if status == 401:
        return AuthError(text, **kwargs)
    if status == 402:
        return OutOfCreditsError(text, **kwargs)
    if status == 429:
        return RateLimitedError(text, retry_after=retry_hint(reply, message), **kwargs)
    if status == 404 and purpose != "query":
        return BatchFatalError(f"{text}; check the model and base_url", **kwargs)
    if status >= 500:
        if purpose == "create":
            return AmbiguousError(text, **kwargs)
        return TransientError(text, retry_after=reply.retry_after, **kwargs)
    return RefusedError(text, **kwargs)


def _raise_for(reply: Reply, what: str, purpose: Purpose, secrets: list[str]) -> None:
    if reply.status >= 400:
        message = problem_text(reply, secrets)
        raise classify(reply.status, message, what=what, purpose=purpose, reply=reply)
    if not (reply.is_json and isinstance(reply.body, dict)):
        raise garbage_error(what, reply, purpose, secrets)


def parse_create(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The id of the prediction a create made."""
    secrets = list(secrets)
    _raise_for(reply, what, "create", secrets)
    if "id" not in reply.body:
        raise AmbiguousError(
            f"{what}: accepted without a prediction id: {snippet(reply.text, secrets)!r}",
            http_status=reply.status,
        )
    return checked_task_id(reply.body["id"], what=what, secrets=secrets)


def output_url(output: Any) -> str | None:
    """The one URL of ``output`` (a string; a one-item list is tolerated)."""
    if isinstance(output, list) and output:
        output = output[0]
    if isinstance(output, str) and output.startswith(("http://", "https://")):
        return output
    return None


def parse_prediction(
    doc: Mapping[str, Any], task_id: str, secrets: Iterable[str] = ()
) -> TaskStatus:
    """A prediction object as a TaskStatus; unknown states mean still running."""
    state = str(doc.get("status") or "").strip().lower()
    removed = doc.get("data_removed") is True
    if state == "succeeded":
        url = output_url(doc.get("output"))
        if url is not None:
            return TaskStatus(task_id, "succeeded", result_url=url, provider_state=state)
        reason = "Replicate reported success without an output URL"
        if removed:
            reason = (
                f"prediction {task_id} succeeded, but Replicate has deleted its output "
                f"(data_removed: it keeps API predictions {RETENTION} after they end) before "
                "it was downloaded; the generation is paid and lost: `run --retry-failed` pays "
                "for a new one"
            )
        return TaskStatus(task_id, "failed", reason=reason, provider_state=state)
    if state == "failed":
        error = doc.get("error")
        reason = redact(" ".join(str(error).split()), secrets) if error else "prediction failed"
        return TaskStatus(task_id, "failed", reason=reason, provider_state=state)
    if state == "canceled":
        return TaskStatus(task_id, "failed", reason="prediction was canceled", provider_state=state)
    return TaskStatus(task_id, "running", provider_state=state or "unknown")


def parse_get(reply: Reply, task_id: str, *, what: str, secrets: Iterable[str] = ()) -> TaskStatus:
    secrets = list(secrets)
    if reply.status == 404:
        raise RefusedError(
            f"{what}: Replicate does not know prediction {task_id} "
            f"({problem_text(reply, secrets)}); it deletes API predictions {RETENTION} after "
            "they end, so this one was probably removed before it was collected",
            code="404",
            http_status=404,
        )
    _raise_for(reply, what, "query", secrets)
    return parse_prediction(reply.body, task_id, secrets)


def parse_file(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """``urls.get`` of an uploaded file: what a prediction takes as an input."""
    secrets = list(secrets)
    _raise_for(reply, what, "upload", secrets)
    urls = reply.body.get("urls")
    url = urls.get("get") if isinstance(urls, dict) else None
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    raise garbage_error(what, reply, "upload", secrets)


# --------------------------------------------------------------------------- client


class ReplicateProvider(ClientBase):
    name: ClassVar[str] = "replicate"
    default_model: ClassVar[str] = "kwaivgi/kling-v2.6-motion-control"
    models: ClassVar[tuple[str, ...]] = (
        "kwaivgi/kling-v2.6-motion-control",
        "kwaivgi/kling-v3-motion-control",
    )
    default_base_url: ClassVar[str] = "https://api.replicate.com"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "REPLICATE_API_TOKEN"}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 24 * 3600.0  # a file's expires_at (inferred from the SDK)

    def _secrets(self) -> list[str]:
        return self._credentials.secrets()

    def _url(self, path: str, *, upload: bool = False) -> str:
        base = (self.config.upload_url if upload else None) or self.config.base_url
        return base.rstrip("/") + path

    async def _call(
        self, method: str, url: str, *, what: str, purpose: Purpose, **kw: Any
    ) -> Reply:
        headers = {"Authorization": f"Bearer {self._credentials.get('api_key')}",
                   "Accept": "application/json"}  # fmt: skip
        return await exchange(self._client, method, url, what=what, purpose=purpose,
                              secrets=self._secrets(), now=self._clock,
                              deadline=self._deadlines[purpose], headers=headers, **kw)  # fmt: skip

    # -- Provider protocol

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        """replicate-python's ``files.create``: multipart, the file in field ``content``."""
        what = f"{self.name} upload of {path.name}"
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise InputError(f"cannot read for upload: {exc.strerror}", path=str(path)) from None
        try:
            reply = await self._call(
                "POST", self._url(FILES_PATH, upload=True), what=what, purpose="upload",
                files={"content": (file_name, handle, content_type)},
            )  # fmt: skip
        finally:
            handle.close()
        return parse_file(reply, what=what, secrets=self._secrets())

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        what = f"{self.name} create for job {job.id}"
        model = job.model or self.config.model
        path = f"/v1/models/{quote(model, safe='/')}/predictions"
        body = build_create_body(job, urls, self.config)
        reply = await self._call("POST", self._url(path), what=what, purpose="create", json=body)
        task_id = parse_create(reply, what=what, secrets=self._secrets())
        return Handle(provider=self.name, task_id=task_id)

    async def poll(self, handle: Handle) -> TaskStatus:
        what = f"{self.name} status of prediction {handle.task_id}"
        path = f"{PREDICTIONS_PATH}/{quote(handle.task_id, safe='')}"
        reply = await self._call("GET", self._url(path), what=what, purpose="query")
        return parse_get(reply, handle.task_id, what=what, secrets=self._secrets())

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        return await poll_each(self.poll, handles)

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        raise no_client_id(self.name, job.id)

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """The prediction's output URL again (None once Replicate has removed it)."""
        return await requery_result_url(self.poll, handle)
