"""Kling's official wire protocol (providers.md §3): HS256 JWT auth, ``{code,message,request_id}``.

Routes: ``POST /v1/videos/motion-control`` and ``GET /v1/videos/motion-control/{id}`` where the
id is a ``task_id`` or an ``external_task_id``.

Chosen here where the reference is silent (inferred): validation errors are 400/1201, an unknown
task is 404/1203, a duplicate ``external_task_id`` is 400/1201.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import threading
import time
from typing import Any

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.store import Phase, Task, TaskSpec
from pipeline.sandbox.wire import Callback, Reply, Request, json_reply, new_uuid

MODELS = ("kling-v2-6", "kling-v3")
#: The create body fields (providers.md §3.2); anything else is refused like a bad value.
FIELDS = frozenset({
    "model_name", "prompt", "image_url", "video_url", "keep_original_sound",
    "character_orientation", "mode", "callback_url", "external_task_id", "watermark_info",
    "element_list",
})  # fmt: skip
MAX_PROMPT = 2500
PATH = "/v1/videos/motion-control"
_CREATE_LOCK = threading.Lock()


class Invalid(Exception):
    """A create Kling refuses with 400/1201."""


def error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"code": code, "message": message, "request_id": new_uuid()}, headers)


def route(req: Request) -> Route | None:
    if req.method == "POST" and req.path == PATH:
        return "create", create
    if req.method == "GET" and req.path.startswith(PATH + "/") and len(req.path) > len(PATH) + 1:
        return "poll", query
    return None


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
    defaults = {
        "rate_limit": (429, 1302, "request too fast, please slow down"),
        "server_error": (500, 5000, "server internal error"),
        "bad_key": (401, 1002, "Authorization is invalid"),
        "out_of_credits": (429, 1102, "resource pack depleted or expired"),
    }
    status, code, message = defaults[rule.kind]
    code = int(rule.code) if rule.code and rule.code.isdigit() else code
    return error(rule.status or status, code, rule.message or message, headers)


# ---------------------------------------------------------------------- auth


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_jwt(access_key: str, secret_key: str, *, now: float | None = None, ttl: int = 1800) -> str:
    """A token as Kling documents it (for tests and the CLI's examples): iss, exp, nbf = now-5."""
    now = time.time() if now is None else now
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(
        json.dumps({"iss": access_key, "exp": int(now) + ttl, "nbf": int(now) - 5}).encode()
    )
    signature = hmac.new(secret_key.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url(signature.digest())}"


def verify_jwt(
    token: str | None, access_key: str | None, secret_key: str | None, now: float
) -> tuple[int, str] | None:
    """The (business code, message) Kling answers for a bad token, or None when it is good.

    1001 empty, 1002 invalid (shape, alg, signature, issuer), 1003 not yet valid (nbf),
    1004 expired (exp). With neither key configured any non-empty token is accepted, but a
    decodable JWT still has its exp/nbf checked.
    """
    if not token:
        return 1001, "Authorization is empty"
    parts = token.split(".")
    if len(parts) != 3:
        return None if access_key is None and secret_key is None else (1002, _INVALID)
    try:
        header = json.loads(_unb64url(parts[0]))
        payload = json.loads(_unb64url(parts[1]))
    except (ValueError, binascii.Error):
        return None if access_key is None and secret_key is None else (1002, _INVALID)
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return 1002, _INVALID
    if header.get("alg") != "HS256":
        return 1002, _INVALID
    if secret_key is not None:
        expected = hmac.new(secret_key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
        if not hmac.compare_digest(b64url(expected.digest()), parts[2].rstrip("=")):
            return 1002, _INVALID
    if access_key is not None and not (
        isinstance(payload.get("iss"), str) and hmac.compare_digest(payload["iss"], access_key)
    ):
        return 1002, _INVALID
    exp, nbf = payload.get("exp"), payload.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return 1002, _INVALID
    if nbf is not None and (not isinstance(nbf, int | float) or now < nbf):
        return 1003, "Authorization is not yet valid"
    if now >= exp:
        return 1004, "Authorization has expired"
    return None


_INVALID = "Authorization is invalid"


def _auth_error(app: Service, req: Request) -> Reply | None:
    found = verify_jwt(req.bearer(), app.keys.kling_access, app.keys.kling_secret, time.time())
    if found is None:
        return None
    code, message = found
    return error(401, code, message)


# ---------------------------------------------------------------------- create


def create(app: Service, req: Request) -> Reply:
    refused = _auth_error(app, req)
    if refused is not None:
        return refused
    if app.profile.credits <= 0:
        return error(429, 1102, "resource pack depleted or expired")
    try:
        doc = req.json()
    except ValueError:
        return error(400, 1200, "the request body is not valid JSON")
    try:
        spec, image_bytes = validate_create(doc)
    except Invalid as exc:
        return error(400, 1201, str(exc))
    if image_bytes is not None:
        # Raw base64 images are accepted by Kling; the sandbox keeps them as one of its files.
        spec = dataclasses.replace(spec, image_url=app.inline_url(image_bytes, "image.img"))
    external = doc.get("external_task_id") or None
    task_id = str(860_000_000_000_000_000 + int(time.time() * 1000) % 10**12 * 1000
                  + app.next_seq() % 1000)  # fmt: skip
    with _CREATE_LOCK:  # the uniqueness check and the commit must not interleave
        if external is not None and app.store.by_client_id("kling", external) is not None:
            return error(400, 1201, "external_task_id already exists")
        task = app.commit("kling", task_id, doc, spec, client_id=external)
    return json_reply(200, {"code": 0, "message": "SUCCEED", "request_id": new_uuid(),
                            "data": _task_doc(task, "submitted")})  # fmt: skip


def validate_create(doc: Any) -> tuple[TaskSpec, bytes | None]:
    """Check a create body like Kling does (pure); also returns decoded raw-base64 image bytes."""
    if not isinstance(doc, dict):
        raise Invalid("the request body must be a JSON object")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise Invalid(f"{unknown[0]} is not a parameter of motion-control")
    model = doc.get("model_name") or "kling-v2-6"
    if model not in MODELS:
        raise Invalid(f"model_name must be one of {', '.join(MODELS)}")
    image = doc.get("image_url")
    if not isinstance(image, str) or not image:
        raise Invalid("image_url is required")
    image_bytes = None
    if image.startswith("data:"):
        raise Invalid("image_url must be a URL or raw base64 without a data: prefix")
    if not image.startswith(("http://", "https://")):
        try:
            image_bytes = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("image_url is neither a URL nor valid base64") from None
    video = doc.get("video_url")
    if not isinstance(video, str) or not video.startswith(("http://", "https://")):
        raise Invalid("video_url is required and must be a URL")
    sound = _enum(doc, "keep_original_sound", ("yes", "no"), "yes")
    orientation = _enum(doc, "character_orientation", ("image", "video"), None)
    mode = _enum(doc, "mode", ("std", "pro"), None)
    prompt = doc.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise Invalid(f"prompt must be a string of at most {MAX_PROMPT} characters")
    for name in ("callback_url", "external_task_id"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise Invalid(f"{name} must be a string")
    watermark = doc.get("watermark_info")
    if watermark is not None and not (
        isinstance(watermark, dict) and isinstance(watermark.get("enabled", False), bool)
    ):
        raise Invalid('watermark_info must be an object like {"enabled": false}')
    return TaskSpec(model, image, video, orientation, mode, sound == "yes"), image_bytes


def _enum(doc: dict[str, Any], name: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = doc.get(name)
    if value is None and default is not None:
        return default
    if value not in allowed:
        raise Invalid(f"{name} must be one of {', '.join(allowed)}")
    return str(value)


# ---------------------------------------------------------------------- query


def query(app: Service, req: Request) -> Reply:
    refused = _auth_error(app, req)
    if refused is not None:
        return refused
    key = req.path[len(PATH) + 1 :]
    task = app.store.get("kling", key) or app.store.by_client_id("kling", key)
    if task is None:
        return error(404, 1203, f"task {key} not found")
    phase = app.store.observe(task, app.latency("kling"))
    data = task_data(app, task, phase, req.base_url)
    return json_reply(
        200, {"code": 0, "message": "SUCCEED", "request_id": new_uuid(), "data": data}
    )


def task_data(app: Service, task: Task, phase: Phase, base_url: str) -> dict[str, Any]:
    """The task object: a query's ``data``, and the callback body (a flat task, §3.4)."""
    status = {"queued": "submitted", "running": "processing", "succeeded": "succeed"}
    ended = app.store.ended_at(task, app.latency("kling"))  # the latency too, not the render
    data = _task_doc(task, status.get(phase, "failed"), ended)
    if phase == "succeeded":
        if task.outcome is None or task.outcome.rendered is None:
            raise RuntimeError(f"sandbox bug: task {task.task_id} succeeded without a video")
        duration = task.outcome.rendered.duration
        data["final_unit_deduction"] = f"{duration:.1f}"
        data["task_result"] = {"videos": [{
            "id": f"{task.task_id}-0",
            "url": app.store.result_url(task, base_url),
            "duration": f"{duration:.3f}",
        }]}  # fmt: skip
    elif phase == "failed":
        if task.outcome is None:
            raise RuntimeError(f"sandbox bug: task {task.task_id} failed without an outcome")
        data["task_status_msg"] = task.outcome.reason or "failed"
    return data


def callback_url(task: Task) -> str | None:
    url = task.body.get("callback_url")
    return url if isinstance(url, str) and url else None


def callback(app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
    url = callback_url(task)
    return None if url is None else Callback(url, task_data(app, task, phase, base_url))


def _task_doc(task: Task, status: str, ended: float | None = None) -> dict[str, Any]:
    created = int(task.created * 1000)
    updated = int(ended * 1000) if ended and status in ("succeed", "failed") else created
    watermark = task.body.get("watermark_info") or {}
    return {
        "task_id": task.task_id,
        "task_status": status,
        "task_status_msg": "",
        "task_info": {"external_task_id": task.client_id or ""},
        "watermark_info": {"enabled": bool(watermark.get("enabled", False))},
        "final_unit_deduction": "0",
        "created_at": created,
        "updated_at": updated,
    }
