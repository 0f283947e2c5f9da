"""Kling's own API: HS256 JWT auth, /v1/videos/motion-control, external_task_id.

Wire reference: ../shared/providers.md section 3. Every create carries our client id as
``external_task_id``, so an ambiguous create is reconciled by looking that id up
(``GET /v1/videos/motion-control/{external_task_id}``; 404 or code 1202/1203 means it never
happened). Business errors arrive as ``{code, message, request_id}`` inside HTTP 200, 429 or
4xx bodies; ``code`` decides, the HTTP status only when there is no envelope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

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
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.providers.common import (
    ClientBase,
    checked_task_id,
    float_or_none,
    no_upload_api,
    poll_each,
    ran_seconds,
    requery_result_url,
    require_object,
)
from pipeline.providers.http import Purpose, Reply, exchange, garbage_error, snippet
from pipeline.settings import redact

TASK_PATH = "/v1/videos/motion-control"

JWT_TTL = 1800.0
"""Seconds a minted token is valid (Kling's documented ``exp = now + 1800``)."""
JWT_REFRESH_BEFORE = 300.0
"""Mint a new token when the cached one has less than this left."""

_NOT_FOUND_CODES = frozenset({1202, 1203})


# --------------------------------------------------------------------------- auth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_jwt(access_key: str, secret_key: str, *, now: float, ttl: float = JWT_TTL) -> str:
    """An HS256 JWT: ``{"iss": access_key, "exp": now + ttl, "nbf": now - 5}``."""
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"iss": access_key, "exp": int(now + ttl), "nbf": int(now) - 5}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    signature = hmac.new(secret_key.encode(), signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64url(signature.digest())}"


class TokenCache:
    """The current JWT, re-minted when less than ``refresh_before`` seconds remain."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = JWT_TTL,
        refresh_before: float = JWT_REFRESH_BEFORE,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock = clock
        self._ttl = ttl
        self._refresh_before = refresh_before
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        now = self._clock()
        if not self._token or self._expires - now < self._refresh_before:
            self._token = mint_jwt(self._access_key, self._secret_key, now=now, ttl=self._ttl)
            self._expires = float(int(now + self._ttl))
        return self._token

    def __repr__(self) -> str:
        return "TokenCache(<redacted>)"


# --------------------------------------------------------------------------- request builders


def build_create_body(
    job: Job, urls: InputURLs, config: ProviderConfig, client_id: str | None
) -> dict[str, Any]:
    """The create body; ``external_task_id`` is our client id, for reconciliation."""
    settings = job.settings
    body: dict[str, Any] = {
        "model_name": job.model or config.model,
        "image_url": urls.image_url,
        "video_url": urls.video_url,
        "keep_original_sound": "yes" if settings.keep_original_sound else "no",
        "character_orientation": settings.character_orientation,
        "mode": settings.mode,
    }
    if settings.prompt:
        body["prompt"] = settings.prompt
    body.update(config.options)
    if config.callback_url:
        body["callback_url"] = config.callback_url
    if client_id:
        body["external_task_id"] = client_id
    return body


# --------------------------------------------------------------------------- response parsers


def envelope_code(reply: Reply) -> int | None:
    """Kling's business code, or None when the body is no envelope."""
    body = reply.body
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(code, bool) or not isinstance(code, int | str):
        return None
    try:
        value = int(code)
    except ValueError:
        return None
    return None if value == 0 and reply.status >= 400 else value


def envelope_message(reply: Reply, secrets: Iterable[str]) -> str:
    body = reply.body
    if isinstance(body, dict):
        msg = body.get("message") or body.get("msg")
        if isinstance(msg, str) and msg:
            return redact(msg, secrets)
    return snippet(reply.text, secrets) or f"HTTP {reply.status}"


def classify(
    code: int | None, message: str, *, what: str, purpose: Purpose, reply: Reply
) -> ProviderError:
    """The error a Kling business code (or, without one, the HTTP status) means."""
    status = reply.status
    text = f"{what}: {message} (code {code if code is not None else '-'}, HTTP {status})"
    kw: dict[str, Any] = {"code": str(code if code is not None else status), "http_status": status}
    if code is None:
        return _classify_status(text, what=what, purpose=purpose, reply=reply, kw=kw)
    if 1000 <= code <= 1004 or code in (1103, 1304):  # bad/expired token, no permission, IP list
        return AuthError(text, **kw)
    if code in (1100, 1101, 1102):  # account exception, arrears, resource pack depleted
        return OutOfCreditsError(text, **kw)
    if code in (1302, 1303):  # too fast; parallel tasks over the resource pack limit
        return RateLimitedError(text, retry_after=reply.retry_after, **kw)
    if 5000 <= code <= 5099:
        # Server trouble. A create may still have been recorded: reconcile by external id.
        if purpose == "create":
            return AmbiguousError(text, **kw)
        return TransientError(text, retry_after=reply.retry_after, **kw)
    # 1200/1201 invalid params, 1202/1203 not found, 1300/1301 policy, unknown codes.
    return RefusedError(text, **kw)


def _classify_status(
    text: str, *, what: str, purpose: Purpose, reply: Reply, kw: dict[str, Any]
) -> ProviderError:
    status = reply.status
    if status == 401:
        return AuthError(text, **kw)
    if status == 429:
        return RateLimitedError(text, retry_after=reply.retry_after, **kw)
    if status == 404 and purpose == "create":
        return BatchFatalError(f"{what}: endpoint not found (HTTP 404); check base_url", **kw)
    if 400 <= status < 500:
        return RefusedError(text, **kw)
    if purpose == "create":
        return AmbiguousError(text, **kw)
    return TransientError(text, retry_after=reply.retry_after, **kw)


def _answered_id(reply: Reply, data: Any, *, what: str, secrets: Iterable[str]) -> str:
    """``data.task_id`` checked (Kling's ids are numeric strings; a bare number is tolerated)."""
    value = data.get("task_id") if isinstance(data, dict) else None
    if value is None:
        raise AmbiguousError(
            f"{what}: accepted without a task_id: {snippet(reply.text, secrets)!r}",
            http_status=reply.status,
        )
    return checked_task_id(value, what=what, secrets=secrets)


def _require_object(reply: Reply, what: str, purpose: Purpose, secrets: list[str]) -> None:
    """Raise unless the body is a JSON object; a bare 4xx status still says what went wrong."""
    require_object(reply, what, purpose, secrets, classify=classify, no_code=None)


def parse_create(reply: Reply, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The task id of an accepted create, or the classified error."""
    secrets = list(secrets)
    _require_object(reply, what, "create", secrets)
    code = envelope_code(reply)
    if code != 0 or reply.status >= 400:
        raise classify(
            code, envelope_message(reply, secrets), what=what, purpose="create", reply=reply
        )
    return _answered_id(reply, reply.body.get("data"), what=what, secrets=secrets)


def parse_task(data: Mapping[str, Any], task_id: str, secrets: Iterable[str] = ()) -> TaskStatus:
    """A task ``data`` object as a TaskStatus. Unknown statuses mean still running."""
    tid = task_id  # ours, never the echoed ``task_id``: a reply must not rename our task
    state = str(data.get("task_status") or "").strip().lower()
    if state == "failed":
        reason = data.get("task_status_msg")
        text = reason.strip() if isinstance(reason, str) and reason.strip() else ""
        return TaskStatus(
            tid,
            "failed",
            reason=redact(text, secrets) or "task failed without a reason",
            provider_state=state,
        )
    if state == "succeed":
        result = data.get("task_result")
        videos = result.get("videos") if isinstance(result, dict) else None
        first = videos[0] if isinstance(videos, list) and videos else None
        url = first.get("url") if isinstance(first, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return TaskStatus(
                tid,
                "failed",
                reason="provider reported success without a video URL",
                provider_state=state,
            )
        duration = first.get("duration") if isinstance(first, dict) else None
        ran = ran_seconds(start=data.get("created_at"), end=data.get("updated_at"), unit=1000.0)
        return TaskStatus(tid, "succeeded", result_url=url, provider_state=state,
                          duration=float_or_none(duration), ran_seconds=ran)  # fmt: skip
    return TaskStatus(tid, "running", provider_state=state)


def parse_query(
    reply: Reply, task_id: str, *, what: str, secrets: Iterable[str] = ()
) -> TaskStatus:
    """A task query reply: business errors classified for a query, the task parsed.

    An unknown task id (HTTP 404, code 1202/1203) is ``RefusedError`` with that code.
    """
    secrets = list(secrets)
    _require_object(reply, what, "query", secrets)
    code = envelope_code(reply)
    if code != 0 or reply.status >= 400:
        raise classify(
            code, envelope_message(reply, secrets), what=what, purpose="query", reply=reply
        )
    data = reply.body.get("data")
    if not isinstance(data, dict):
        raise garbage_error(what, reply, "query", secrets)
    return parse_task(data, task_id, secrets)


def parse_lookup(
    reply: Reply, client_id: str, *, what: str, secrets: Iterable[str] = ()
) -> str | None:
    """The task id an ``external_task_id`` lookup found, or None when no such task exists."""
    code = envelope_code(reply)
    if reply.status == 404 or code in _NOT_FOUND_CODES:
        return None
    parse_query(reply, client_id, what=what, secrets=secrets)  # raises what is not a task
    data = reply.body["data"]
    info = data.get("task_info")
    external = info.get("external_task_id") if isinstance(info, dict) else None
    if external not in (None, "", client_id):
        # The path matched some other task (a task_id equal to our client id): not ours.
        return None
    return _answered_id(reply, data, what=what, secrets=secrets)


# --------------------------------------------------------------------------- client


class KlingProvider(ClientBase):
    name: ClassVar[str] = "kling"
    default_model: ClassVar[str] = "kling-v2-6"
    models: ClassVar[tuple[str, ...]] = ("kling-v2-6", "kling-v3")
    default_base_url: ClassVar[str] = "https://api-singapore.klingai.com"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {
        "access_key": "KLING_ACCESS_KEY",
        "secret_key": "KLING_SECRET_KEY",
    }
    has_upload: ClassVar[bool] = False
    has_client_id: ClassVar[bool] = True
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 0.0
    callback_field: ClassVar[str | None] = "callback_url"

    def __init__(
        self,
        config: ProviderConfig,
        credentials: Credentials,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        deadlines: Mapping[Purpose, float] | None = None,
    ) -> None:
        super().__init__(config, credentials, client, clock=clock, deadlines=deadlines)
        self._tokens = TokenCache(
            credentials.get("access_key"), credentials.get("secret_key"), clock=clock
        )

    def _secrets(self) -> list[str]:
        return self._credentials.secrets()

    def _url(self, suffix: str = "") -> str:
        return self.config.base_url.rstrip("/") + TASK_PATH + suffix

    async def _call(
        self, method: str, url: str, *, what: str, purpose: Purpose, **kw: Any
    ) -> Reply:
        token = self._tokens.token()
        return await exchange(
            self._client,
            method,
            url,
            what=what,
            purpose=purpose,
            secrets=[*self._secrets(), token],
            now=self._clock,
            deadline=self._deadlines[purpose],
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            **kw,
        )

    async def upload(self, path: Path, *, file_name: str, content_type: str) -> str:
        raise no_upload_api(self.name, path)

    async def submit(self, job: Job, urls: InputURLs, *, client_id: str | None) -> Handle:
        what = f"{self.name} create for job {job.id}"
        body = build_create_body(job, urls, self.config, client_id)
        reply = await self._call("POST", self._url(), what=what, purpose="create", json=body)
        task_id = parse_create(reply, what=what, secrets=self._secrets())
        return Handle(provider=self.name, task_id=task_id, client_id=client_id)

    async def poll(self, handle: Handle) -> TaskStatus:
        what = f"{self.name} status of task {handle.task_id}"
        reply = await self._call(
            "GET", self._url("/" + quote(handle.task_id, safe="")), what=what, purpose="query"
        )
        return parse_query(reply, handle.task_id, what=what, secrets=self._secrets())

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        """One query per task (no batch endpoint); transient misses are left out."""
        return await poll_each(self.poll, handles)

    async def reconcile(self, job: Job, client_id: str) -> Handle | None:
        what = f"{self.name} lookup of job {job.id} by external_task_id {client_id}"
        reply = await self._call(
            "GET", self._url("/" + quote(client_id, safe="")), what=what, purpose="query"
        )
        task_id = parse_lookup(reply, client_id, what=what, secrets=self._secrets())
        return None if task_id is None else Handle(self.name, task_id, client_id=client_id)

    async def refresh_result_url(self, handle: Handle, status: TaskStatus) -> str | None:
        """Kling has no link refresh: re-query the task and take its current URL."""
        return await requery_result_url(self.poll, handle)
