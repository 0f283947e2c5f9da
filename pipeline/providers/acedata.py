"""AceData Cloud: /kling/motion (async mode) and /kling/tasks with retrieve_batch.

Wire reference: ../shared/providers.md section 2. AceData is synchronous by default (the create
holds the connection for minutes), so every create carries ``async: true`` and returns
``{"task_id": ...}`` at once. Errors are ``{success: false, error: {code, message}}`` with a real
HTTP status. AceData documents no ``model`` field and no client id: an ambiguous create needs a
human, and only the default model can be requested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import (
    AmbiguousError,
    AuthError,
    BatchFatalError,
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
    no_upload_api,
    ran_seconds,
    requery_result_url,
    require_object,
)
from pipeline.providers.http import Purpose, Reply, exchange, garbage_error, snippet
from pipeline.settings import redact

CREATE_PATH = "/kling/motion"
TASKS_PATH = "/kling/tasks"

_AUTH_CODES = frozenset(
    {"invalid_token", "token_expired", "token_mismatched", "no_token", "disabled"}
)
_FAIL_STATES = frozenset({"failed", "fail", "error"})
_SUCCESS_STATES = frozenset({"succeed", "success", "succeeded"})


# --------------------------------------------------------------------------- request builders


def build_create_body(job: Job, urls: InputURLs, config: ProviderConfig) -> dict[str, Any]:
    """The /kling/motion body, always in async mode."""
    settings = job.settings
    body: dict[str, Any] = {
        "model_name": job.model or config.model,  # kling-v2-6 or kling-v3
        "image_url": urls.image_url,
        "video_url": urls.video_url,
        "character_orientation": settings.character_orientation,
        "mode": settings.mode,
        "keep_original_sound": "yes" if settings.keep_original_sound else "no",
    }
    if settings.prompt:
        body["prompt"] = settings.prompt
    body.update(config.options)
    if config.callback_url:
        body["callback_url"] = config.callback_url
    body["async"] = True  # never the minutes-long synchronous mode, whatever options say
    return body


def build_retrieve_body(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "action": "retrieve"}


def build_batch_body(task_ids: Sequence[str]) -> dict[str, Any]:
    return {"ids": list(task_ids), "action": "retrieve_batch"}


# --------------------------------------------------------------------------- response parsers


def error_of(reply: Reply, secrets: Iterable[str]) -> tuple[str, str] | None:
    """``(code, message)`` of an error reply, or None when the reply is not an error."""
    body = reply.body
    err = body.get("error") if isinstance(body, dict) else None
    failed = reply.status >= 400 or (isinstance(body, dict) and body.get("success") is False)
    if not failed and err is None:
        return None
    code, message = "", ""
    if isinstance(err, dict):
        code = str(err.get("code") or "")
        message = str(err.get("message") or "")
    elif isinstance(err, str):
        message = err
    if not message:
        message = snippet(reply.text, secrets) or f"HTTP {reply.status}"
    return code, redact(message, secrets)


def classify(
    code: str, message: str, *, what: str, purpose: Purpose, reply: Reply
) -> ProviderError:
    """The error an AceData ``error.code`` (or, without one, the HTTP status) means."""
    status = reply.status
    text = f"{what}: {message} ({code or 'no code'}, HTTP {status})"
    kw: dict[str, Any] = {"code": code or str(status), "http_status": status}
    if code in _AUTH_CODES or status == 401:
        return AuthError(text, **kw)
    if code == "used_up" or status == 402:
        return OutOfCreditsError(text, **kw)
    if status == 403:
        return AuthError(text, **kw)
    if code == "too_many_requests" or status == 429:
        return RateLimitedError(text, retry_after=reply.retry_after, **kw)
    if code == "no_api" or (status == 404 and not isinstance(reply.body, dict)):
        return BatchFatalError(
            f"{what}: endpoint not found ({code or status}); check base_url", **kw
        )
    if code == "api_error" or status >= 500 or (status < 400 and not code):
        if purpose == "create":
            return AmbiguousError(text, **kw)
        return TransientError(text, retry_after=reply.retry_after, **kw)
    # bad_request, api_not_implemented, an unknown task id (404), any other refusal.
    return RefusedError(text, **kw)


def _require_object(reply: Reply, what: str, purpose: Purpose, secrets: list[str]) -> None:
    """Raise unless the body is a JSON object; a bare 4xx status still says what went wrong."""
    require_object(reply, what, purpose, secrets, classify=classify, no_code="")


def parse_create(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The task id of an accepted async create, or the classified error."""
    secrets = list(secrets)
    _require_object(reply, what, "create", secrets)
    err = error_of(reply, secrets)
    if err is not None:
        raise classify(*err, what=what, purpose="create", reply=reply)
    task_id = reply.body.get("task_id")
    if task_id is None:
        raise AmbiguousError(
            f"{what}: accepted without a task_id: {snippet(reply.text, secrets)!r}",
            http_status=reply.status,
        )
    return checked_task_id(task_id, what=what, secrets=secrets)


def parse_record(
    record: Mapping[str, Any], task_id: str, secrets: Iterable[str] = ()
) -> TaskStatus:
    """One /kling/tasks record as a TaskStatus; no ``response`` yet means still running."""
    tid = task_id  # ours, never the echoed ``id``: a reply must not rename our task
    response = record.get("response")
    if not isinstance(response, dict):
        if record.get("finished_at"):
            return TaskStatus(
                tid, "failed", reason="task finished without a response", provider_state="finished"
            )
        return TaskStatus(tid, "running")
    state = str(response.get("state") or "").strip().lower()
    if response.get("success") is False or state in _FAIL_STATES:
        return TaskStatus(
            tid, "failed", reason=_fail_reason(response, secrets), provider_state=state or "failed"
        )
    url = response.get("video_url")
    if state in _SUCCESS_STATES or (not state and response.get("success") is True):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return TaskStatus(
                tid,
                "failed",
                reason="provider reported success without a video_url",
                provider_state=state,
            )
        return TaskStatus(
            tid,
            "succeeded",
            result_url=url,
            provider_state=state or "succeed",
            duration=float_or_none(response.get("duration")),
            ran_seconds=ran_seconds(
                record.get("elapsed"), start=record.get("created_at"), end=record.get("finished_at")
            ),
        )
    return TaskStatus(tid, "running", provider_state=state)


def _fail_reason(response: Mapping[str, Any], secrets: Iterable[str]) -> str:
    err = response.get("error")
    parts: list[str] = []
    if isinstance(err, dict):
        parts = [str(err[k]) for k in ("message", "code") if err.get(k)]
    elif isinstance(err, str) and err:
        parts = [err]
    for key in ("message", "msg", "reason"):
        if not parts and isinstance(response.get(key), str) and response[key]:
            parts = [response[key]]
    if not parts:
        return "task failed without a reason"
    text = parts[0] if len(parts) == 1 else f"{parts[0]} ({parts[1]})"
    return redact(text, secrets)


def _checked_body(reply: Reply, what: str, secrets: list[str]) -> dict[str, Any]:
    _require_object(reply, what, "query", secrets)
    err = error_of(reply, secrets)
    if err is not None:
        raise classify(*err, what=what, purpose="query", reply=reply)
    body: dict[str, Any] = reply.body
    return body


def parse_query(
    reply: Reply, task_id: str, *, what: str, secrets: Iterable[str] = ()
) -> TaskStatus:
    """A ``retrieve`` reply: errors classified for a query, the record parsed."""
    return parse_record(_checked_body(reply, what, list(secrets)), task_id, secrets)


def parse_batch(
    reply: Reply, task_ids: Sequence[str], *, what: str, secrets: Iterable[str] = ()
) -> dict[str, TaskStatus]:
    """A ``retrieve_batch`` reply keyed by task id; ids it does not mention are left out."""
    secrets = list(secrets)
    items = _checked_body(reply, what, secrets).get("items")
    if not isinstance(items, list):
        raise garbage_error(what, reply, "query", secrets)
    wanted = set(task_ids)
    found: dict[str, TaskStatus] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        response = item.get("response")
        tid = item.get("id") or (response.get("task_id") if isinstance(response, dict) else None)
        if isinstance(tid, str) and tid in wanted:
            found[tid] = parse_record(item, tid, secrets)
    return found


# --------------------------------------------------------------------------- client


class AceDataProvider(ClientBase):
    name: ClassVar[str] = "acedata"
    default_model: ClassVar[str] = "kling-v2-6"
    # providers.md documents no model field for /kling/motion: only the default can be had.
    models: ClassVar[tuple[str, ...]] = ("kling-v2-6", "kling-v3")
    default_base_url: ClassVar[str] = "https://api.acedata.cloud"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "ACEDATA_API_KEY"}
    has_upload: ClassVar[bool] = False
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = True
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 0.0
    callback_field: ClassVar[str | None] = "callback_url"

    def _secrets(self) -> list[str]:
        return self._credentials.secrets()

    def _url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    async def _post(self, path: str, body: dict[str, Any], *, what: str, purpose: Purpose) -> Reply:
        headers = {
            "authorization": f"Bearer {self._credentials.get('api_key')}",
            "accept": "application/json",
        }
        return await exchange(
            self._client,
            "POST",
            self._url(path),
            what=what,
            purpose=purpose,
            secrets=self._secrets(),
            now=self._clock,
            deadline=self._deadlines[purpose],
            headers=headers,
            json=body,
        )

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        raise no_upload_api(self.name, path)

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        what = f"{self.name} create for job {job.id}"
        reply = await self._post(
            CREATE_PATH, build_create_body(job, urls, self.config), what=what, purpose="create"
        )
        return Handle(
            provider=self.name, task_id=parse_create(reply, what=what, secrets=self._secrets())
        )

    async def poll(self, handle: Handle) -> TaskStatus:
        what = f"{self.name} status of task {handle.task_id}"
        reply = await self._post(
            TASKS_PATH, build_retrieve_body(handle.task_id), what=what, purpose="query"
        )
        return parse_query(reply, handle.task_id, what=what, secrets=self._secrets())

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        if not handles:
            return {}
        ids = [h.task_id for h in handles]
        what = f"{self.name} status of {len(ids)} tasks"
        reply = await self._post(TASKS_PATH, build_batch_body(ids), what=what, purpose="query")
        return parse_batch(reply, ids, what=what, secrets=self._secrets())

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        raise no_client_id(self.name, job.id)

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """AceData has no link refresh: re-query the task and take its current URL."""
        return await requery_result_url(self.poll, handle)
