"""AceData Cloud's wire protocol (providers.md §2): real HTTP statuses, ``{success:false,error}``.

Routes: ``POST /kling/motion`` (synchronous unless ``async: true`` or ``callback_url``) and
``POST /kling/tasks`` with ``action`` ``retrieve`` / ``retrieve_batch``.

Not documented by AceData, chosen here and marked so (inferred): a failed task's body
``{success:false, task_id, state:"failed", error:{code:"api_error", message}}`` (HTTP 200), an
unknown task id on ``retrieve`` (404 ``not_found``), a synchronous wait past the server's cap
(500 ``api_error``), ``type: "motion"`` on task records.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.store import Phase, Task, TaskSpec
from pipeline.sandbox.wire import Callback, Reply, Request, json_reply, new_uuid, same_secret

MAX_PROMPT = 2500
MODELS = ("kling-v2-6", "kling-v3")
#: The /kling/motion body fields (AceDataCloud/Docs openapi/kling.json, commit 0ba546ff).
FIELDS = frozenset({
    "model_name", "image_url", "video_url", "character_orientation", "mode",
    "keep_original_sound", "watermark_info", "prompt", "callback_url", "async",
})  # fmt: skip


class Invalid(Exception):
    """A create or query AceData refuses with 400 bad_request."""


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    doc = {"success": False, "error": {"code": code, "message": message}, "trace_id": new_uuid()}
    return json_reply(status, doc, headers)


def route(req: Request) -> Route | None:
    if req.method != "POST":
        return None
    if req.path == "/kling/motion":
        return "create", motion
    if req.path == "/kling/tasks":
        return "poll", tasks
    return None


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
    defaults = {
        "rate_limit": (429, "too_many_requests", "too many requests"),
        "server_error": (500, "api_error", "internal server error"),
        "bad_key": (401, "invalid_token", "the token is invalid"),
        "out_of_credits": (403, "used_up", "your balance is not enough"),
    }
    status, code, message = defaults[rule.kind]
    return error(rule.status or status, rule.code or code, rule.message or message, headers)


def _auth_error(app: Service, req: Request) -> Reply | None:
    token = req.bearer()
    if token is None:
        return error(400, "no_token", "token is required in the authorization header")
    if not same_secret(token, app.keys.acedata):
        return error(401, "invalid_token", "the token is invalid")
    if app.profile.credits <= 0:
        return error(403, "used_up", "your balance is not enough")
    return None


# ---------------------------------------------------------------------- /kling/motion


def motion(app: Service, req: Request) -> Reply:
    refused = _auth_error(app, req)
    if refused is not None:
        return refused
    try:
        doc = req.json()
        spec, is_async = validate_motion(doc)
    except ValueError:
        return error(400, "bad_request", "the request body is not valid JSON")
    except Invalid as exc:
        return error(400, "bad_request", str(exc))
    extra = {
        "_id": secrets.token_hex(12),
        "trace_id": new_uuid(),
        "video_id": str(800_000_000_000_000_000 + app.next_seq()),
    }
    task = app.commit("acedata", new_uuid(), doc, spec, extra=extra)
    if is_async:
        return json_reply(200, {"task_id": task.task_id})
    return _wait(app, task, req.base_url)


def validate_motion(doc: Any) -> tuple[TaskSpec, bool]:
    """Check a /kling/motion body (pure); the flag says whether the answer is asynchronous."""
    if not isinstance(doc, dict):
        raise Invalid("the request body must be a JSON object")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise Invalid(f"{unknown[0]} is not a parameter of /kling/motion")
    model = doc.get("model_name") or MODELS[0]
    if model not in MODELS:
        raise Invalid(f"model_name is invalid: must be one of {', '.join(MODELS)}")
    for name in ("image_url", "video_url"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise Invalid(f"{name} is required and must be a URL string")
    orientation = _enum(doc, "character_orientation", ("image", "video"), None)
    mode = _enum(doc, "mode", ("std", "pro"), None)
    sound = _enum(doc, "keep_original_sound", ("yes", "no"), "yes")
    prompt = doc.get("prompt", "")
    if not isinstance(prompt, str):
        raise Invalid("prompt must be a string")
    if len(prompt) > MAX_PROMPT:
        raise Invalid(f"prompt is {len(prompt)} characters, over {MAX_PROMPT}")
    callback = doc.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise Invalid("callback_url must be a string")
    is_async = doc.get("async", False)
    if not isinstance(is_async, bool):
        raise Invalid("async must be a boolean")
    watermark = doc.get("watermark_info")
    if watermark is not None and not (
        isinstance(watermark, dict) and isinstance(watermark.get("enabled", False), bool)
    ):
        raise Invalid('watermark_info must be an object like {"enabled": false}')
    return (
        TaskSpec(model, doc["image_url"], doc["video_url"], orientation, mode, sound == "yes"),
        is_async or bool(callback),
    )


def _enum(doc: dict[str, Any], name: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = doc.get(name)
    if value is None and default is not None:
        return default
    if value not in allowed:
        raise Invalid(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _wait(app: Service, task: Task, base_url: str) -> Reply:
    """The synchronous mode: hold the connection until the task ends, up to the server's cap."""
    latency = app.latency("acedata")
    deadline = task.created + app.profile.sync_timeout
    task.done.wait(max(0.0, deadline - time.time()))
    time.sleep(max(0.0, min(deadline, task.created + latency.seconds) - time.time()))
    if app.store.peek(task, latency) in ("queued", "running"):
        return error(500, "api_error", "timed out waiting for the generation to finish")
    return json_reply(200, result(app, task, base_url))


def result(app: Service, task: Task, base_url: str) -> dict[str, Any]:
    """The final result: the sync answer, the callback body and the record's ``response``."""
    if task.outcome is None:
        raise RuntimeError(f"sandbox bug: task {task.task_id} has no outcome to report")
    rendered = task.outcome.rendered
    if rendered is None:
        return {
            "success": False,
            "task_id": task.task_id,
            "state": "failed",
            "error": {"code": "api_error", "message": task.outcome.reason},
            "trace_id": task.extra["trace_id"],
        }
    return {
        "success": True,
        "video_id": task.extra["video_id"],
        "video_url": app.store.result_url(task, base_url),
        "duration": f"{rendered.duration:.3f}",
        "state": "succeed",
        "task_id": task.task_id,
    }


# ---------------------------------------------------------------------- callback


def callback_url(task: Task) -> str | None:
    url = task.body.get("callback_url")
    return url if isinstance(url, str) and url else None


def callback(app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
    """The final result, in the synchronous answer's shape (providers.md §2.2)."""
    url = callback_url(task)
    return None if url is None else Callback(url, result(app, task, base_url))


# ---------------------------------------------------------------------- /kling/tasks


def tasks(app: Service, req: Request) -> Reply:
    refused = _auth_error(app, req)
    if refused is not None and refused.status != 403:  # queries work with an empty balance
        return refused
    try:
        doc = req.json()
    except ValueError:
        return error(400, "bad_request", "the request body is not valid JSON")
    action = doc.get("action") if isinstance(doc, dict) else None
    if action == "retrieve":
        task_id = doc.get("id")
        if not isinstance(task_id, str) or not task_id:
            return error(400, "bad_request", "id is required for action retrieve")
        task = app.store.get("acedata", task_id)
        if task is None:
            return error(404, "not_found", f"task {task_id} not found")
        return json_reply(200, record(app, task, req.base_url))
    if action == "retrieve_batch":
        ids = doc.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return error(400, "bad_request", "ids must be a list of task id strings")
        found = [t for t in (app.store.get("acedata", i) for i in ids) if t is not None]
        items = [record(app, t, req.base_url) for t in found]
        return json_reply(200, {"items": items, "count": len(items)})
    return error(400, "bad_request", "action must be retrieve or retrieve_batch")


def record(app: Service, task: Task, base_url: str) -> dict[str, Any]:
    """A task record as /kling/tasks returns it; counts as one status query of the task."""
    phase = app.store.observe(task, app.latency("acedata"))
    doc: dict[str, Any] = {
        "_id": task.extra["_id"],
        "id": task.task_id,
        "api_id": "sandbox-kling-motion",
        "application_id": "sandbox-application",
        "created_at": round(task.created, 3),
        "started_at": round(task.created, 3),
        "credential_id": "sandbox-credential",
        "request": task.body,
        "trace_id": task.extra["trace_id"],
        "type": "motion",
        "user_id": "sandbox-user",
        "job_id": task.extra["video_id"],
    }
    ended = app.store.ended_at(task, app.latency("acedata"))  # the latency too, not the render
    if phase in ("succeeded", "failed") and ended is not None:
        doc["finished_at"] = round(ended, 3)
        doc["elapsed"] = round(ended - task.created, 3)
        doc["response"] = result(app, task, base_url)
    return doc
