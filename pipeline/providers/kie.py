"""Kie.ai: createTask / recordInfo, body ``code`` carries errors, uploads on a separate host.

Wire reference: ../shared/providers.md section 1. Two Kie habits shape this module:

- the HTTP status is often 200 while ``body.code`` says 401/402/422/429/455/500/501, so the
  *body* code decides (the HTTP status only when there is no envelope);
- ``resultJson`` and ``param`` are JSON strings inside JSON and may be ``""``, ``"{}"``,
  malformed, a bare array or nested.

Kie has no client id: an ambiguous create cannot be reconciled and needs a human. A recordInfo
answer of code 404 (unknown task id) is raised as ``RefusedError(code="404")`` so the runner can
tell "this task id does not exist" from an outage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

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
    ran_seconds,
    requery_result_url,
    require_object,
)
from pipeline.providers.http import Purpose, Reply, exchange, garbage_error, snippet
from pipeline.settings import redact

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"
UPLOAD_PATH = "/api/file-stream-upload"

#: Kie names the tiers by resolution; the manifest uses Kling's std/pro.
MODES: Mapping[str, str] = {"std": "720p", "pro": "1080p"}

_SUCCESS_STATES = frozenset({"success", "completed"})  # "completed": seen in defensive clients
_FAIL_STATES = frozenset({"fail", "failed"})


# --------------------------------------------------------------------------- request builders


def build_create_body(job: Job, urls: InputURLs, config: ProviderConfig) -> dict[str, Any]:
    """The createTask body. Kie has no ``keep_original_sound``: media prep strips audio."""
    settings = job.settings
    payload: dict[str, Any] = {
        "input_urls": [urls.image_url],
        "video_urls": [urls.video_url],
        "character_orientation": settings.character_orientation,
        "mode": MODES[settings.mode],
    }
    if settings.prompt:
        payload["prompt"] = settings.prompt
    # Provider-specific fields (e.g. background_source for kling-3.0) pass through unchanged.
    payload.update(config.options)
    body: dict[str, Any] = {"model": job.model or config.model, "input": payload}
    if config.callback_url:
        body["callBackUrl"] = config.callback_url
    return body


# --------------------------------------------------------------------------- response parsers


def envelope_code(reply: Reply) -> int:
    """The code that decides: ``body.code`` when the body is a Kie envelope, else HTTP status."""
    body = reply.body
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(code, bool) or not isinstance(code, int | str):
        return reply.status
    try:
        value = int(code)
    except ValueError:
        return reply.status
    # A 200 envelope on an HTTP error status is not a success.
    return reply.status if value == 200 and reply.status >= 400 else value


def envelope_message(reply: Reply, secrets: Iterable[str]) -> str:
    body = reply.body
    if isinstance(body, dict):
        msg = body.get("msg") or body.get("message")
        if isinstance(msg, str) and msg:
            return redact(msg, secrets)
    return snippet(reply.text, secrets) or f"HTTP {reply.status}"


def classify(
    code: int, message: str, *, what: str, purpose: Purpose, reply: Reply
) -> ProviderError:
    """The error a non-200 Kie code means for a create or a query (recordInfo, download-url)."""
    text = f"{what}: {message} (code {code})"
    kwargs: dict[str, Any] = {"code": str(code), "http_status": reply.status}
    if code == 401:
        return AuthError(text, **kwargs)
    if code in (402, 433):  # 433: the sub-key's usage cap, as final as an empty balance
        return OutOfCreditsError(text, **kwargs)
    if code == 429:
        return RateLimitedError(text, retry_after=reply.retry_after, **kwargs)
    if code == 455:  # maintenance: the request was turned away at the door
        return TransientError(text, retry_after=reply.retry_after, **kwargs)
    if code == 404 and not isinstance(reply.body, dict):
        # A real HTTP 404 without an envelope is an unknown route: base_url is wrong.
        return BatchFatalError(
            f"{what}: endpoint not found (HTTP 404); check base_url/upload_url", **kwargs
        )
    if code >= 500 and code != 501 and code != 505:
        if purpose == "create":
            return AmbiguousError(text, **kwargs)
        return TransientError(text, retry_after=reply.retry_after, **kwargs)
    # 400, 404, 422, 501 (generation failed), 505 (feature disabled), anything else 4xx-like.
    return RefusedError(text, **kwargs)


def _require_envelope(reply: Reply, what: str, purpose: Purpose, secrets: list[str]) -> None:
    """Raise unless the body is a JSON object; a bare 4xx status still says what went wrong."""
    require_object(reply, what, purpose, secrets, classify=classify, no_code=reply.status)


def parse_create(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The task id of an accepted createTask, or the classified error."""
    secrets = list(secrets)
    _require_envelope(reply, what, "create", secrets)
    code = envelope_code(reply)
    if code != 200:
        raise classify(
            code, envelope_message(reply, secrets), what=what, purpose="create", reply=reply
        )
    data = reply.body.get("data")
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if task_id is None:
        # Success without an id: the task may exist, but we cannot name it.
        raise AmbiguousError(
            f"{what}: success without a taskId: {snippet(reply.text, secrets)!r}",
            http_status=reply.status,
        )
    return checked_task_id(task_id, what=what, secrets=secrets)


def result_urls(raw: Any) -> list[str]:
    """The http(s) URLs inside ``resultJson`` (a JSON string, or already decoded)."""
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else None
        except ValueError:
            return []
    if isinstance(value, dict):
        found = value.get("resultUrls")
        if found is None:
            # Tolerate one level of nesting, e.g. {"resultObject": {"resultUrls": [...]}}.
            nested = [v.get("resultUrls") for v in value.values() if isinstance(v, dict)]
            found = next((n for n in nested if n is not None), None)
        value = found
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [u for u in value if isinstance(u, str) and u.startswith(("http://", "https://"))]


def parse_record(data: Mapping[str, Any], task_id: str, secrets: Iterable[str] = ()) -> TaskStatus:
    """A recordInfo ``data`` object as a TaskStatus. Unknown states mean still running."""
    state = str(data.get("state") or "").strip().lower()
    tid = task_id  # ours, never the echoed ``taskId``: a reply must not rename our task
    if state in _SUCCESS_STATES:
        urls = result_urls(data.get("resultJson"))
        if not urls:
            why = "provider reported success without a result URL"
            return TaskStatus(tid, "failed", reason=why, provider_state=state)
        # costTime only in older copies of the docs; the time stamps in every one (ms).
        ran = ran_seconds(data.get("costTime"), start=data.get("createTime"),
                          end=data.get("completeTime"), unit=1000.0)  # fmt: skip
        return TaskStatus(tid, "succeeded", result_url=urls[0], provider_state=state,
                          ran_seconds=ran)  # fmt: skip
    if state in _FAIL_STATES:
        return TaskStatus(tid, "failed", reason=_fail_reason(data, secrets), provider_state=state)
    progress = data.get("progress")
    share = float(progress) if isinstance(progress, int | float) else None
    return TaskStatus(tid, "running", provider_state=state, progress=share)


def _fail_reason(data: Mapping[str, Any], secrets: Iterable[str]) -> str:
    msg, code = data.get("failMsg"), data.get("failCode")
    msg = msg.strip() if isinstance(msg, str) else ""
    code = str(code).strip() if code not in (None, "") else ""
    if msg and code:
        return redact(f"{msg} (failCode {code})", secrets)
    if msg or code:
        return redact(msg or f"failCode {code}", secrets)
    return "task failed without a reason"


def parse_query(
    reply: Reply, task_id: str, *, what: str, secrets: Iterable[str] = ()
) -> TaskStatus:
    """A whole recordInfo reply: envelope errors classified, the record parsed."""
    secrets = list(secrets)
    _require_envelope(reply, what, "query", secrets)
    code = envelope_code(reply)
    data = reply.body.get("data")
    if code == 501:
        # "Generation failed": the task ran and failed; the record, when present, says why.
        if isinstance(data, dict) and data.get("state"):
            status = parse_record(data, task_id, secrets)
            if status.phase == "failed":
                return status
        return TaskStatus(
            task_id, "failed", reason=envelope_message(reply, secrets), provider_state="501"
        )
    if code != 200:
        raise classify(
            code, envelope_message(reply, secrets), what=what, purpose="query", reply=reply
        )
    if not isinstance(data, dict):
        raise garbage_error(what, reply, "query", secrets)
    return parse_record(data, task_id, secrets)


def parse_download_url(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str | None:
    """A fresh link from download-url; None when Kie cannot give one (422 not a Kie URL, 404)."""
    secrets = list(secrets)
    _require_envelope(reply, what, "query", secrets)
    code = envelope_code(reply)
    if code in (404, 422):
        return None
    if code != 200:
        raise classify(
            code, envelope_message(reply, secrets), what=what, purpose="query", reply=reply
        )
    data = reply.body.get("data")
    if isinstance(data, dict):  # tolerate {"data": {"url": ...}}
        data = data.get("url") or data.get("downloadUrl")
    if isinstance(data, str) and data.startswith(("http://", "https://")):
        return data
    raise garbage_error(what, reply, "query", secrets)


def parse_upload(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The URL of an uploaded file: ``data.downloadUrl``, falling back to ``data.fileUrl``.

    Uploads are free and carry a unique file name, so every doubt is a TransientError.
    """
    secrets = list(secrets)
    _require_envelope(reply, what, "upload", secrets)
    body = reply.body
    code = envelope_code(reply)
    flag = body.get("success")
    if flag is False or reply.status >= 400 or (code != 200 and flag is not True):
        # success:false with code 200 says nothing more: treat it as a server fault.
        failed = code if code != 200 else (reply.status if reply.status >= 400 else 500)
        message = envelope_message(reply, secrets)
        raise classify(failed, message, what=what, purpose="upload", reply=reply)
    data = body.get("data")
    if isinstance(data, dict):
        for key in ("downloadUrl", "fileUrl"):
            url = data.get(key)
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                return url
    raise garbage_error(what, reply, "upload", secrets)


# --------------------------------------------------------------------------- client


class KieProvider(ClientBase):
    name: ClassVar[str] = "kie"
    default_model: ClassVar[str] = "kling-2.6/motion-control"
    models: ClassVar[tuple[str, ...]] = ("kling-2.6/motion-control", "kling-3.0/motion-control")
    default_base_url: ClassVar[str] = "https://api.kie.ai"
    default_upload_url: ClassVar[str | None] = "https://kieai.redpandaai.co"
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "KIE_API_KEY"}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = False
    upload_ttl: ClassVar[float] = 24 * 3600.0
    callback_field: ClassVar[str | None] = "callBackUrl"

    #: Folder on Kie's upload host; files are told apart by their unique names.
    upload_folder: ClassVar[str] = "motion-pipeline"

    # -- plumbing

    def _token(self) -> str:
        return self._credentials.get("api_key")

    def _secrets(self) -> list[str]:
        return [*self._credentials.secrets(), self._token()]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}

    def _url(self, path: str, *, upload: bool = False) -> str:
        base = (self.config.upload_url if upload else None) or self.config.base_url
        return base.rstrip("/") + path

    async def _call(
        self, method: str, url: str, *, what: str, purpose: Purpose, **kw: Any
    ) -> Reply:
        return await exchange(self._client, method, url, what=what, purpose=purpose,
                              secrets=self._secrets(), now=self._clock,
                              deadline=self._deadlines[purpose], headers=self._headers(),
                              **kw)  # fmt: skip

    # -- Provider protocol

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        what = f"{self.name} upload of {path.name}"
        kind = "images" if content_type.startswith("image/") else "videos"
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise InputError(f"cannot read for upload: {exc.strerror}", path=str(path)) from None
        try:
            reply = await self._call(
                "POST",
                self._url(UPLOAD_PATH, upload=True),
                what=what,
                purpose="upload",
                data={"uploadPath": f"{self.upload_folder}/{kind}", "fileName": file_name},
                files={"file": (file_name, handle, content_type)},
            )
        finally:
            handle.close()
        return parse_upload(reply, what=what, secrets=self._secrets())

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        what = f"{self.name} create for job {job.id}"
        reply = await self._call(
            "POST",
            self._url(CREATE_PATH),
            what=what,
            purpose="create",
            json=build_create_body(job, urls, self.config),
        )
        task_id = parse_create(reply, what=what, secrets=self._secrets())
        return Handle(provider=self.name, task_id=task_id)

    async def poll(self, handle: Handle) -> TaskStatus:
        what = f"{self.name} status of task {handle.task_id}"
        reply = await self._call(
            "GET",
            self._url(RECORD_PATH),
            what=what,
            purpose="query",
            params={"taskId": handle.task_id},
        )
        return parse_query(reply, handle.task_id, what=what, secrets=self._secrets())

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        """One recordInfo per task (Kie has no batch query); transient misses are left out."""
        return await poll_each(self.poll, handles)

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        raise no_client_id(self.name, job.id)

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """A 20-minute link from download-url; else the URL a fresh recordInfo gives."""
        url = status.result_url
        if url:
            what = f"{self.name} download-url for task {handle.task_id}"
            reply = await self._call(
                "POST", self._url(DOWNLOAD_URL_PATH), what=what, purpose="query", json={"url": url}
            )
            fresh = parse_download_url(reply, what=what, secrets=self._secrets())
            if fresh:
                return fresh
        return await requery_result_url(self.poll, handle)
