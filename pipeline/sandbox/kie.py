"""Kie.ai's wire protocol (providers.md §1): errors in HTTP 200 bodies, JSON-in-JSON fields.

Routes: ``POST /api/v1/jobs/createTask``, ``GET /api/v1/jobs/recordInfo?taskId=``,
``GET /api/v1/chat/credit``, ``POST /api/v1/common/download-url`` and the upload host's
``POST /api/file-stream-upload`` / ``file-base64-upload`` / ``file-url-upload`` (same server).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import mimetypes
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.store import Phase, Task, TaskSpec
from pipeline.sandbox.wire import (
    Callback,
    InputProblem,
    Reply,
    Request,
    json_reply,
    parse_multipart,
    same_secret,
)

MODELS = ("kling-2.6/motion-control", "kling-3.0/motion-control")
#: The ``input`` fields of each model (providers.md §1.2: 5 for 2.6, 6 for 3.0).
INPUT_FIELDS = {
    MODELS[0]: frozenset({"prompt", "input_urls", "video_urls", "character_orientation", "mode"}),
    MODELS[1]: frozenset(
        {"prompt", "input_urls", "video_urls", "character_orientation", "mode", "background_source"}
    ),
}
TOP_FIELDS = frozenset({"model", "callBackUrl", "input"})
MODES = {"720p": "std", "1080p": "pro"}
MAX_PROMPT = 2500
UPLOAD_PATHS = ("/api/file-stream-upload", "/api/file-base64-upload", "/api/file-url-upload")


class Invalid(Exception):
    """A create the API refuses: ``code`` 422 for validation, 500 for enum values (observed)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def body(code: int, msg: str, data: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """Kie's envelope, always HTTP 200: the outcome is in ``code``."""
    return json_reply(200, {"code": code, "msg": msg, "data": data}, headers)


def upload_error(status: int, msg: str) -> Reply:
    # The upload host lists real HTTP statuses (200/400/401/405/500); the body repeats the code.
    return json_reply(status, {"success": False, "code": status, "msg": msg, "data": None})


def route(req: Request) -> Route | None:
    table: dict[tuple[str, str], Route] = {
        ("POST", "/api/v1/jobs/createTask"): ("create", create_task),
        ("GET", "/api/v1/jobs/recordInfo"): ("poll", record_info),
        ("GET", "/api/v1/chat/credit"): ("account", credit),
        ("POST", "/api/v1/common/download-url"): ("account", download_url),
        ("POST", "/api/file-stream-upload"): ("upload", upload_stream),
        ("POST", "/api/file-base64-upload"): ("upload", upload_base64),
        ("POST", "/api/file-url-upload"): ("upload", upload_url),
    }
    return table.get((req.method, req.path))


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
    defaults = {
        "rate_limit": (429, "Too many requests, please slow down"),
        "server_error": (500, "Server error, please try again later"),
        "bad_key": (401, "You do not have access permissions"),
        "out_of_credits": (402, "Credits insufficient, please top up"),
    }
    code, msg = defaults[rule.kind]
    code = int(rule.code) if rule.code and rule.code.isdigit() else code
    msg = rule.message or msg
    if req.path in UPLOAD_PATHS:
        reply = upload_error(rule.status or code, msg)
        return Reply(reply.status, reply.body, {**reply.headers, **headers})
    doc = {"code": code, "msg": msg, "data": None}
    return json_reply(rule.status or 200, doc, headers)


def _authorized(app: Service, req: Request) -> bool:
    return same_secret(req.bearer() or "", app.keys.kie)


UNAUTHORIZED = "You do not have access permissions"


# ---------------------------------------------------------------------- createTask


def create_task(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return body(401, UNAUTHORIZED)
    if app.profile.credits <= 0:
        return body(402, "Credits insufficient, please top up")
    try:
        doc = req.json()
    except ValueError:
        return body(422, "request body is not valid JSON")
    try:
        spec = validate_create(doc)
    except Invalid as exc:
        return body(exc.code, exc.msg)
    tag = spec.model.split("/", 1)[0]
    task_id = f"task_{tag}_{int(time.time() * 1000)}{app.next_seq():05d}"
    app.commit("kie", task_id, doc, spec)
    return body(200, "success", {"taskId": task_id})


def validate_create(doc: Any) -> TaskSpec:
    """Check a createTask body like Kie does (pure); raises :class:`Invalid`."""
    if not isinstance(doc, dict):
        raise Invalid(422, "request body must be a JSON object")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid(422, "model is required")
    if model not in MODELS:
        raise Invalid(422, f"model {model} is not supported")
    unknown = sorted(set(doc) - TOP_FIELDS)
    if unknown:
        raise Invalid(422, f"{unknown[0]} is not a supported parameter")
    callback = doc.get("callBackUrl")
    if callback is not None and not isinstance(callback, str):
        raise Invalid(422, "callBackUrl must be a string")
    data = doc.get("input")
    if not isinstance(data, dict):
        raise Invalid(422, "input is required and must be an object")
    unknown = sorted(set(data) - INPUT_FIELDS[model])
    if unknown:
        raise Invalid(422, f"input.{unknown[0]} is not a supported parameter of {model}")
    v26 = model.startswith("kling-2.6")
    image = _one_url(data, "input_urls")
    video = _one_url(data, "video_urls")
    orientation = _enum(data, "character_orientation", ("image", "video"), "video", v26)
    mode = _enum(data, "mode", tuple(MODES), "720p", v26)
    if not v26:
        _enum(data, "background_source", ("input_video", "input_image"), "input_video", False)
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise Invalid(422, "prompt must be a string")
    if len(prompt) > MAX_PROMPT:
        raise Invalid(422, f"prompt length {len(prompt)} exceeds {MAX_PROMPT}")
    # Kie's motion-control models have no sound field: the clip's audio is kept (inferred).
    return TaskSpec(model, image, video, orientation, MODES[mode], sound=True)


def _one_url(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise Invalid(422, f"{name} is required")
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str):
        raise Invalid(422, f"{name} must be an array with exactly one URL string")
    if not value[0].startswith(("http://", "https://")):
        raise Invalid(422, f"{name}[0] must be an http(s) URL, not file content")
    return value[0]


def _enum(
    data: dict[str, Any], name: str, allowed: tuple[str, ...], default: str, req: bool
) -> str:
    if name not in data or data[name] is None:
        if req:
            raise Invalid(422, f"{name} is required")
        return default
    value = data[name]
    if value not in allowed:
        # What Kie answered to mode "std" on kling-3.0: code 500 with this text (providers.md §1.1).
        raise Invalid(500, f"{name} is not within the range of allowed options")
    return str(value)


# ---------------------------------------------------------------------- recordInfo


def record_info(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return body(401, UNAUTHORIZED)
    task_id = req.query.get("taskId", "")
    if not task_id:
        return body(422, "taskId is required")
    task = app.store.get("kie", task_id)
    if task is None:
        return body(404, "task not found")
    phase = app.store.observe(task, app.latency("kie"))
    return body(200, "success", record(app, task, phase, req.base_url))


def record(app: Service, task: Task, phase: Phase, base_url: str) -> dict[str, Any]:
    """recordInfo ``data`` for a task in ``phase`` (also the callback body's ``data``)."""
    created = int(task.created * 1000)
    state = {"queued": "waiting", "running": "queuing" if task.polls == 2 else "generating"}
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "model": task.spec.model,
        "state": state.get(phase, "generating"),
        "param": json.dumps(task.body),
        "resultJson": "",
        "failCode": None,
        "failMsg": None,
        "costTime": None,
        "completeTime": None,
        "createTime": created,
        "updateTime": created,
    }
    ended = app.store.ended_at(task, app.latency("kie"))  # the work and the latency, not the render
    if phase in ("succeeded", "failed") and ended is not None:
        finished = int(ended * 1000)
        data.update(updateTime=finished, completeTime=finished, costTime=finished - created)
    if phase == "succeeded":
        url = app.store.result_url(task, base_url)
        data.update(state="success", resultJson=json.dumps({"resultUrls": [url]}))
    elif phase == "failed":
        if task.outcome is None:
            raise RuntimeError(f"sandbox bug: task {task.task_id} failed without an outcome")
        data.update(state="fail", failCode=task.outcome.code, failMsg=task.outcome.reason,
                    costTime=None)  # fmt: skip
    return data


# ---------------------------------------------------------------------- callback


def callback_url(task: Task) -> str | None:
    url = task.body.get("callBackUrl")
    return url if isinstance(url, str) and url else None


def callback(app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
    """recordInfo's answer, POSTed ("identical to the Query Task API response", providers.md
    §1.4), signed when the profile sets ``webhook_hmac_key``: base64 HMAC-SHA256 of
    ``taskId + "." + timestamp`` in X-Webhook-Signature, the timestamp (s) beside it."""
    url = callback_url(task)
    if url is None:
        return None
    data = record(app, task, phase, base_url)
    headers: dict[str, str] = {}
    key = app.profile.webhook_hmac_key
    if key:
        stamp = str(int(time.time()))
        digest = hmac.new(key.encode(), f"{data['taskId']}.{stamp}".encode(), hashlib.sha256)
        headers = {
            "X-Webhook-Timestamp": stamp,
            "X-Webhook-Signature": base64.b64encode(digest.digest()).decode("ascii"),
        }
    return Callback(url, {"code": 200, "msg": "success", "data": data}, headers)


# ---------------------------------------------------------------------- account


def credit(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return body(401, UNAUTHORIZED)
    return body(200, "success", app.profile.credits)


def download_url(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return body(401, UNAUTHORIZED)
    try:
        url = req.json().get("url")
    except (ValueError, AttributeError):
        return body(422, "request body must be a JSON object with url")
    prefix = f"{req.base_url}/results/"
    if not isinstance(url, str) or not url.startswith(prefix):
        return body(422, "url is not a file generated by kie")
    link = app.store.link(url[len(prefix) :].removesuffix(".mp4"))
    task = app.store.get("kie", link.task_id) if link is not None else None
    if task is None or task.outcome is None or task.outcome.rendered is None:
        return body(404, "file not found")
    return body(200, "success", app.store.result_url(task, req.base_url, fresh=True))


# ---------------------------------------------------------------------- uploads


def upload_stream(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return upload_error(401, UNAUTHORIZED)
    try:
        parts = parse_multipart(req.headers.get("content-type", ""), req.body)
    except ValueError as exc:
        return upload_error(400, str(exc))
    file = parts.get("file")
    if file is None or file.filename is None:
        return upload_error(400, "file is required")
    upload_path = _text(parts, "uploadPath")
    name = _text(parts, "fileName") or file.filename or ""
    return _store(app, req, upload_path, name, file.data, file.content_type)


def upload_base64(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return upload_error(401, UNAUTHORIZED)
    try:
        doc = req.json()
        raw = doc["base64Data"]
        mime = None
        if raw.startswith("data:"):
            header, _, raw = raw.partition(",")
            mime = header[5:].split(";", 1)[0] or None
        data = base64.b64decode(raw, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return upload_error(400, "base64Data is required and must be valid base64")
    return _store(app, req, str(doc.get("uploadPath") or ""), str(doc.get("fileName") or ""),
                  data, mime)  # fmt: skip


def upload_url(app: Service, req: Request) -> Reply:
    if not _authorized(app, req):
        return upload_error(401, UNAUTHORIZED)
    try:
        doc = req.json()
        url = doc["fileUrl"]
        if not isinstance(url, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        return upload_error(400, "fileUrl is required")
    try:
        data = app.fetch(url, "fileUrl")
    except InputProblem as exc:
        return upload_error(400, str(exc))
    name = str(doc.get("fileName") or "") or url.rstrip("/").rsplit("/", 1)[-1]
    return _store(app, req, str(doc.get("uploadPath") or ""), name, data, None)


def _text(parts: dict[str, Any], name: str) -> str:
    part = parts.get(name)
    return part.data.decode("utf-8", "replace").strip() if part is not None else ""


def _store(
    app: Service, req: Request, upload_path: str, name: str, data: bytes, mime: str | None
) -> Reply:
    if not name:
        ext = mimetypes.guess_extension(mime or "") or ".bin"
        name = f"{secrets.token_hex(8)}{ext}"
    try:
        path = app.save_upload(upload_path or "uploads", name, data)
        rel = app.upload_relpath(upload_path or "uploads", name)
    except ValueError as exc:
        return upload_error(400, f"invalid uploadPath or fileName: {exc}")
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json_reply(200, {
        "success": True,
        "code": 200,
        "msg": "File uploaded successfully",
        "data": {
            "fileName": path.name,
            "filePath": rel,
            "downloadUrl": f"{req.base_url}/tempfile/{quote(rel)}",
            "fileSize": len(data),
            "mimeType": mime or mimetypes.guess_type(name)[0] or "application/octet-stream",
            "uploadedAt": now,
        },
    })  # fmt: skip
