"""Replicate's predictions API (providers.md §5), as replicate-python reads it.

Routes: ``POST /v1/models/{owner}/{name}/predictions`` with ``{"input": {...}, "webhook",
"webhook_events_filter"}`` (header ``Prefer: wait[=n]`` holds the answer up to n <= 60 s),
``GET /v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``; the files API is in
:mod:`.replicate_files`. A prediction is the object of ``replicate/prediction.py``: ``{id,
model, version, input, output, logs, error, status, created_at, started_at, completed_at, urls:
{get, cancel, web}, metrics, data_removed}``; ``status`` goes starting -> processing ->
succeeded | failed | canceled; ``output`` is one URL string. Inputs are validated at the create
(a 422 listing ``invalid_fields``; that shape is from memory, unverified).

Retention: ``expire_after`` seconds (profile; Replicate says about an hour) after a prediction
ends, its input, output and logs are removed (``data_removed: true``) and its output URL
answers 404, whether or not anyone looked at it in between.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from typing import Any

from pipeline.sandbox import inputs, replicate_files
from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.replicate_api import (
    NO_CREDIT,
    auth_error,
    iso,
    new_id,
    problem,
)
from pipeline.sandbox.replicate_api import fault_reply as _fault_reply
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.store import TERMINAL, Phase, Task, TaskSpec
from pipeline.sandbox.wire import Callback, Reply, Request, json_reply

MODELS = {
    "kwaivgi/kling-v2.6-motion-control": "kling-v2-6",
    "kwaivgi/kling-v3-motion-control": "kling-v3",
}
FIELDS = (
    inputs.Field("image", str, required=True),
    inputs.Field("video", str, required=True),
    inputs.Field("prompt", str, default="", max_length=2500),
    inputs.Field("character_orientation", str, choices=("image", "video"), default="image"),
    inputs.Field("mode", str, choices=("std", "pro"), default="std"),
    inputs.Field("keep_original_sound", bool, default=True),
)
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
MAX_WAIT = 60
_CREATE = re.compile(r"^/v1/models/(?P<model>[^/]+/[^/]+)/predictions$")
_PREDICTION = re.compile(r"^/v1/predictions/(?P<id>[a-z0-9]+)(?P<cancel>/cancel)?$")
_STATUS: dict[Phase, str] = {
    "queued": "starting",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}


def route(req: Request) -> Route | None:
    if req.method == "POST" and _CREATE.match(req.path):
        return "create", create
    found = _PREDICTION.match(req.path)
    if found is not None and req.method == "GET" and not found["cancel"]:
        return "poll", get
    if found is not None and req.method == "POST" and found["cancel"]:
        return "cancel", cancel
    return replicate_files.route(req)


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    return _fault_reply(rule, req)


def version_of(model: str) -> str:
    """A stable 64-hex version id per model (official models hide theirs behind the name)."""
    return hashlib.sha256(model.encode()).hexdigest()


# ---------------------------------------------------------------------- create


def create(app: Service, req: Request) -> Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    if app.profile.credits <= 0:
        return problem(402, "Insufficient credit", NO_CREDIT)
    found = _CREATE.match(req.path)
    model = found["model"] if found is not None else ""
    if model not in MODELS:
        return problem(404, "Not found", f"The model {model} does not exist")
    try:
        doc = req.json()
    except ValueError:
        return problem(400, "Bad request", "the request body is not valid JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("input"), dict):
        return _invalid([inputs.Problem("input", "type", "input must be an object", "object")])
    values, problems = inputs.check(FIELDS, doc["input"])
    problems += _webhook_problems(doc)
    if problems:
        return _invalid(problems)
    try:
        image = _input_url(app, values["image"], "image")
        video = _input_url(app, values["video"], "video")
    except ValueError as exc:
        return _invalid([inputs.Problem(str(exc).split(":", 1)[0], "type", str(exc), "uri")])
    spec = TaskSpec(
        MODELS[model],
        image,
        video,
        values["character_orientation"],
        values["mode"],
        values["keep_original_sound"],
    )
    extra: dict[str, Any] = {"model": model}
    if doc.get("webhook"):
        extra["callback_url"] = doc["webhook"]
        extra["events"] = doc.get("webhook_events_filter") or list(WEBHOOK_EVENTS)
    task = app.commit("replicate", new_id(), doc, spec, extra=extra)
    wait = _prefer_wait(req.headers.get("prefer", ""))
    if wait:
        _hold(app, task, wait)
    return json_reply(201, prediction(app, task, req.base_url, app.store.current(task, _lat(app))))


def _invalid(problems: list[inputs.Problem]) -> Reply:
    fields = [
        {
            "type": "required" if p.kind == "missing" else p.kind,
            "field": f"input.{p.field}"
            if p.field not in ("input", "webhook", "webhook_events_filter")
            else p.field,
            "description": p.message,
        }
        for p in problems
    ]
    detail = "".join(f"- {f['field']}: {f['description']}\n" for f in fields)
    return json_reply(
        422,
        {
            "title": "Input validation failed",
            "detail": detail,
            "status": 422,
            "invalid_fields": fields,
        },
    )


def _webhook_problems(doc: dict[str, Any]) -> list[inputs.Problem]:
    found = []
    hook = doc.get("webhook")
    if hook is not None and not (
        isinstance(hook, str) and hook.startswith(("http://", "https://"))
    ):
        found.append(inputs.Problem("webhook", "type", "webhook must be an http(s) URL", "uri"))
    events = doc.get("webhook_events_filter")
    if events is not None and not (
        isinstance(events, list) and events and all(e in WEBHOOK_EVENTS for e in events)
    ):
        choices = ", ".join(WEBHOOK_EVENTS)
        message = f"webhook_events_filter must be a list of {choices}"
        found.append(inputs.Problem("webhook_events_filter", "enum", message, choices))
    return found


def _input_url(app: Service, value: str, field: str) -> str:
    """An input as the service fetches it: a URL, or a ``data:`` URI kept as a sandbox file."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{field}: not a valid base64 data URI") from None
        if ";base64" not in header or not data:
            raise ValueError(f"{field}: data URIs must be base64")
        return app.inline_url(data, f"{field}.bin")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{field}: must be a URI (http, https or data)")
    return value


def _prefer_wait(header: str) -> float:
    """Seconds asked by ``Prefer: wait`` (60) or ``Prefer: wait=n``; 0 without it."""
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "wait":
            return float(min(MAX_WAIT, int(value))) if value.strip().isdigit() else MAX_WAIT
    return 0.0


def _hold(app: Service, task: Task, seconds: float) -> None:
    latency = _lat(app)
    deadline = time.time() + seconds
    task.done.wait(max(0.0, deadline - time.time()))
    ready = min(deadline, task.created + latency.seconds)
    time.sleep(max(0.0, ready - time.time()))
    if app.store.peek(task, latency) in TERMINAL:
        app.store.observe(task, latency)  # the held answer shows the end, as a poll would


def _lat(app: Service) -> Any:
    return app.latency("replicate")


# ---------------------------------------------------------------------- get, cancel


def _find(app: Service, req: Request) -> Task | Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    found = _PREDICTION.match(req.path)
    task = app.store.get("replicate", found["id"]) if found is not None else None
    return task if task is not None else problem(404, "Not found", "Prediction not found")


def get(app: Service, req: Request) -> Reply:
    task = _find(app, req)
    if isinstance(task, Reply):
        return task
    phase = app.store.observe(task, _lat(app))
    return json_reply(200, prediction(app, task, req.base_url, phase))


def cancel(app: Service, req: Request) -> Reply:
    task = _find(app, req)
    if isinstance(task, Reply):
        return task
    if app.store.current(task, _lat(app)) not in TERMINAL:
        app.cancel(task)
    return json_reply(200, prediction(app, task, req.base_url, app.store.current(task, _lat(app))))


def callback_url(task: Task) -> str | None:
    """The webhook, when its events filter asks for ``completed`` (the only event sent)."""
    url = task.extra.get("callback_url")
    events = task.extra.get("events") or WEBHOOK_EVENTS
    return url if isinstance(url, str) and url and "completed" in events else None


def callback(app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
    """The prediction object, with Standard Webhooks' id (the same on every retry) and time."""
    url = callback_url(task)
    if url is None:
        return None
    headers = {"webhook-id": f"msg_{task.task_id}", "webhook-timestamp": str(int(time.time()))}
    return Callback(url, prediction(app, task, base_url, phase), headers)


def data_removed(app: Service, task: Task, now: float | None = None) -> bool:
    """Whether retention has deleted this prediction's input, output and files."""
    ended = app.store.ended_at(task, _lat(app))
    now = time.time() if now is None else now
    return ended is not None and now - ended >= app.profile.expire_after


def prediction(app: Service, task: Task, base_url: str, phase: Phase) -> dict[str, Any]:
    """The prediction object of ``task`` as its last status query showed it."""
    url = f"{base_url}/v1/predictions/{task.task_id}"
    model = task.extra.get("model", "")
    doc: dict[str, Any] = {
        "id": task.task_id,
        "model": model,
        "version": version_of(model),
        "input": task.body.get("input", {}),
        "logs": "",
        "output": None,
        "error": None,
        "status": _STATUS[phase],
        "source": "api",
        "data_removed": False,
        "created_at": iso(task.created),
        "started_at": None,
        "completed_at": None,
        "urls": {
            "get": url,
            "cancel": f"{url}/cancel",
            "web": f"https://replicate.com/p/{task.task_id}",
        },
        "metrics": {},
    }
    if phase == "queued":
        return doc
    doc.update(started_at=iso(task.created), logs="Starting the generation\n")
    if phase not in TERMINAL:
        return doc
    ended = app.store.ended_at(task, _lat(app)) or time.time()
    doc.update(completed_at=iso(ended))
    doc["metrics"] = {
        "predict_time": round(ended - task.created, 3),
        "total_time": round(ended - task.created, 3),
    }
    outcome = task.outcome
    if phase == "failed" and outcome is not None:
        doc["error"] = outcome.reason or "Prediction failed"
        doc["logs"] += f"Error: {doc['error']}\n"
    if data_removed(app, task):
        doc.update(input={}, logs="", data_removed=True)
    elif phase == "succeeded" and outcome is not None and outcome.rendered is not None:
        doc["output"] = app.store.result_url(task, base_url)
        doc["logs"] += "Done\n"
    return doc
