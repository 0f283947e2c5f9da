"""fal.ai's queue protocol (providers.md §4): ``Key`` auth, 202 while queued, no FAILED status.

Routes (fal's hosts ``queue.fal.run``, ``rest.alpha.fal.ai`` and ``v3.fal.media`` are all this one
server; storage in :mod:`.fal_storage`):

- ``POST /<endpoint id>`` (``?fal_webhook=<url>``) submits; the answer carries ``request_id``,
  ``status_url``, ``response_url`` and ``cancel_url``, which use the app's ``owner/alias`` only:
  ``/fal-ai/kling-video/requests/<id>``.
- ``GET .../requests/<id>/status`` (``?logs=1``): 202 ``IN_QUEUE`` (``queue_position``) or
  ``IN_PROGRESS``, then 200 ``COMPLETED``.
- ``GET .../requests/<id>``: the result ``{"video": {"url", ...}}``, 400 while it runs.
- ``PUT .../requests/<id>/cancel``: 202 ``CANCELLATION_REQUESTED``, 400 ``ALREADY_COMPLETED``.

A failed generation still ends ``COMPLETED`` (with ``error``/``error_type`` in the status); the
failure is the result's answer: a model error (422, ``{"detail": [{loc, msg, type, url}]}``) or a
request error (its status, ``{"detail", "error_type"}``). fal checks the inputs only when it runs
the request (observed by a public client against the live API, TanStack/ai#396), so a submit with
bad inputs is accepted, in the ledger, and completes with a 422. Composed where fal's docs are
silent (inferred): the 401/404 texts, "Request is still in progress" (400).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from pipeline.sandbox import fal_storage, inputs
from pipeline.sandbox.fal_auth import BAD_KEY, LOCKED, auth_error, detail, locked
from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.store import TERMINAL, Outcome, Phase, Task, TaskSpec
from pipeline.sandbox.wire import Callback, Reply, Request, json_reply, new_uuid

APP = "fal-ai/kling-video"
ENDPOINTS = {  # endpoint id -> (model, tier): the tier is in the id, there is no mode input
    f"{APP}/v2.6/standard/motion-control": ("kling-v2-6", "std"),
    f"{APP}/v2.6/pro/motion-control": ("kling-v2-6", "pro"),
    f"{APP}/v3/standard/motion-control": ("kling-v3", "std"),
    f"{APP}/v3/pro/motion-control": ("kling-v3", "pro"),
}
FIELDS = (
    inputs.Field("image_url", str, required=True),
    inputs.Field("video_url", str, required=True),
    inputs.Field("character_orientation", str, required=True, choices=("image", "video")),
    inputs.Field("prompt", str, default="", max_length=2500),
    inputs.Field("keep_original_sound", bool, default=True),
)
#: fal's request error types and their statuses ("Request Errors" page); others are model errors.
REQUEST_ERRORS = {
    "request_timeout": 504,
    "startup_timeout": 504,
    "runner_scheduling_failure": 503,
    "runner_connection_timeout": 503,
    "runner_disconnected": 503,
    "runner_connection_refused": 503,
    "runner_connection_error": 503,
    "runner_incomplete_response": 502,
    "runner_server_error": 500,
    "client_disconnected": 499,
    "client_cancelled": 499,
    "bad_request": 400,
    "internal_error": 500,
}
_PYDANTIC_TYPES = {
    "missing": ("missing", "Field required"),
    "type": ("{expected}_type", "Input should be a valid {expected}"),
    "enum": ("literal_error", "Input should be {expected}"),
    "too_long": ("string_too_long", "String should have at most {expected} characters"),
    "extra": ("extra_forbidden", "Extra inputs are not permitted"),
}
_REQUEST = re.compile(rf"^/{re.escape(APP)}/requests/(?P<id>[^/]+)(?P<tail>/status|/cancel)?$")


def request_error(status: int, error_type: str, message: str) -> Reply:
    """A request error: a flat body, and its type in ``X-Fal-Error-Type`` too."""
    return json_reply(
        status, {"detail": message, "error_type": error_type}, {"X-Fal-Error-Type": error_type}
    )


def route(req: Request) -> Route | None:
    found = _REQUEST.match(req.path)
    if found is not None:
        tail = found["tail"]
        if req.method == "GET" and tail == "/status":
            return "poll", status
        if req.method == "GET" and tail is None:
            return "poll", result
        if req.method == "PUT" and tail == "/cancel":
            return "cancel", cancel
        return None
    if req.method == "POST" and req.path.startswith("/fal-ai/"):
        return "create", submit
    return fal_storage.route(req)


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
    if rule.kind == "server_error":
        error_type = rule.code or "internal_error"
        reply = request_error(
            rule.status or REQUEST_ERRORS.get(error_type, 500),
            error_type,
            rule.message or "Internal server error",
        )
        return Reply(reply.status, reply.body, {**reply.headers, **headers})
    defaults = {
        "rate_limit": (429, "Too many requests, please slow down"),
        "bad_key": (401, BAD_KEY),
        "out_of_credits": (403, LOCKED),
    }
    code, message = defaults[rule.kind]
    return detail(rule.status or code, rule.message or message, headers)


def _urls(base_url: str, request_id: str) -> dict[str, str]:
    url = f"{base_url}/{APP}/requests/{request_id}"
    return {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}


# ---------------------------------------------------------------------- submit


def submit(app: Service, req: Request) -> Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    refused = locked(app)
    if refused is not None:
        return refused
    endpoint_id = req.path.strip("/")
    if endpoint_id not in ENDPOINTS:
        return detail(404, f"Application {endpoint_id!r} not found")
    try:
        doc = req.json()
    except ValueError:
        return json_reply(422, {"detail": [_pydantic("json_invalid", ["body"], "Invalid JSON")]})
    if not isinstance(doc, dict):
        item = _pydantic("dict_type", ["body"], "Input should be a valid dictionary", doc)
        return json_reply(422, {"detail": [item]})
    model, mode = ENDPOINTS[endpoint_id]
    values, problems = inputs.check(FIELDS, doc)
    extra: dict[str, Any] = {"endpoint_id": endpoint_id}
    webhook = req.query.get("fal_webhook")
    if webhook:
        extra["callback_url"] = webhook
    request_id = new_uuid()
    if problems:
        extra["invalid"] = [_problem_detail(p) for p in problems]
        spec = TaskSpec(model, "", "", "video", mode, sound=True)
        failure = Outcome(reason=problems[0].message, code="422", kind="validation")
        app.commit("fal", request_id, doc, spec, extra=extra, failure=failure)
    else:
        orientation, sound = values["character_orientation"], values["keep_original_sound"]
        spec = TaskSpec(model, values["image_url"], values["video_url"], orientation, mode, sound)
        app.commit("fal", request_id, doc, spec, extra=extra)
    return json_reply(
        200,
        {
            "status": "IN_QUEUE",
            "request_id": request_id,
            "gateway_request_id": request_id,
            **_urls(req.base_url, request_id),
            "logs": None,
            "metrics": {},
            "queue_position": 0,
        },
    )


def _pydantic(kind: str, loc: list[Any], msg: str, value: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "loc": loc,
        "msg": msg,
        "type": kind,
        "url": f"https://docs.fal.ai/errors#{kind}",
    }
    if value is not None:
        item["input"] = value
    return item


def _problem_detail(problem: inputs.Problem) -> dict[str, Any]:
    """A pydantic v2 style error item, as fal's model errors are (type, msg wording)."""
    kind, msg = _PYDANTIC_TYPES[problem.kind]
    expected = problem.expected
    if problem.kind == "enum":
        expected = " or ".join(repr(c) for c in expected.split(", "))
    short = {"boolean": "bool"}.get(expected, expected)
    return _pydantic(
        kind.format(expected=short),
        ["body", problem.field],
        msg.format(expected=expected),
        problem.value,
    )


# ---------------------------------------------------------------------- status, result, cancel


def _task(app: Service, req: Request) -> Task | Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    found = _REQUEST.match(req.path)
    task = app.store.get("fal", found["id"]) if found is not None else None
    return task if task is not None else detail(404, "Request not found")


def status(app: Service, req: Request) -> Reply:
    task = _task(app, req)
    if isinstance(task, Reply):
        return task
    phase = app.store.observe(task, app.latency("fal"))
    logs = _logs(task, phase) if req.query.get("logs", "").lower() in ("1", "true") else None
    doc: dict[str, Any] = {"request_id": task.task_id, **_urls(req.base_url, task.task_id)}
    if phase == "queued":
        return json_reply(202, {**doc, "status": "IN_QUEUE", "queue_position": 0})
    if phase == "running":
        return json_reply(202, {**doc, "status": "IN_PROGRESS", "logs": logs})
    doc.update(status="COMPLETED", logs=logs, metrics=_metrics(task))
    if phase != "succeeded":
        doc.update(error=_reason(task), error_type=_error_type(task))
    return json_reply(200, doc)


def _logs(task: Task, phase: str) -> list[dict[str, Any]]:
    lines = [
        {
            "message": "Generating video",
            "level": "INFO",
            "source": "user",
            "timestamp": _iso(task.created),
        }
    ]
    if phase in TERMINAL and task.finished is not None:
        level = "INFO" if phase == "succeeded" else "ERROR"
        lines.append(
            {
                "message": _reason(task) or "Done",
                "level": level,
                "source": "user",
                "timestamp": _iso(task.finished),
            }
        )
    return lines


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _metrics(task: Task) -> dict[str, Any]:
    if task.finished is None:
        return {}
    return {"inference_time": round(max(0.0, task.finished - task.created), 3)}


def _reason(task: Task) -> str | None:
    outcome = task.outcome
    return None if outcome is None or outcome.rendered is not None else outcome.reason


def _error_type(task: Task) -> str:
    outcome = task.outcome
    if outcome is None:
        return "internal_error"
    if outcome.canceled:
        return "client_cancelled"
    if task.extra.get("invalid"):
        return str(task.extra["invalid"][0]["type"])
    if outcome.kind is not None:
        return outcome.kind
    # A task_fail fault: its code names the type; the default (a numeric code) is moderation.
    return "content_policy_violation" if outcome.code.isdigit() else outcome.code


def result(app: Service, req: Request) -> Reply:
    task = _task(app, req)
    if isinstance(task, Reply):
        return task
    return _result(app, task, app.store.current(task, app.latency("fal")), req.base_url)


def _result(app: Service, task: Task, phase: Phase, base_url: str) -> Reply:
    if phase not in TERMINAL:
        return detail(400, "Request is still in progress")
    if phase == "canceled":
        return request_error(499, "client_cancelled", "Request was cancelled")
    if phase == "failed":
        return _failure(task)
    if task.outcome is None or task.outcome.rendered is None:
        raise RuntimeError(f"sandbox bug: fal request {task.task_id} succeeded without a video")
    rendered = task.outcome.rendered
    return json_reply(
        200,
        {
            "video": {
                "url": app.store.result_url(task, base_url),
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": rendered.size_bytes,
            }
        },
    )


def _failure(task: Task) -> Reply:
    error_type = _error_type(task)
    if error_type in REQUEST_ERRORS:
        return request_error(REQUEST_ERRORS[error_type], error_type, _reason(task) or error_type)
    field = task.outcome.field if task.outcome is not None else None
    loc = ["body", field] if field else ["body"]
    items = task.extra.get("invalid") or [
        _pydantic(error_type, loc, _reason(task) or "generation failed")
    ]
    headers = {"X-Fal-Error-Type": error_type, "X-Fal-Retryable": "false"}
    return json_reply(422, {"detail": items}, headers)


def callback_url(task: Task) -> str | None:
    url = task.extra.get("callback_url")
    return url if isinstance(url, str) and url else None


def callback(app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
    """The webhook body: ``{request_id, gateway_request_id, status: OK | ERROR, payload,
    error}``, the payload being what the result fetch answers (fal's webhooks page)."""
    url = callback_url(task)
    if url is None:
        return None
    reply = _result(app, task, phase, base_url)
    ok = reply.status == 200
    return Callback(url, {
        "request_id": task.task_id, "gateway_request_id": task.task_id,
        "status": "OK" if ok else "ERROR", "payload": json.loads(reply.body),
        "error": None if ok else f"Invalid status code: {reply.status}",
    })  # fmt: skip


def cancel(app: Service, req: Request) -> Reply:
    task = _task(app, req)
    if isinstance(task, Reply):
        return json_reply(task.status, {"status": "NOT_FOUND"}) if task.status == 404 else task
    if app.store.current(task, app.latency("fal")) in TERMINAL or not app.cancel(task):
        return json_reply(400, {"status": "ALREADY_COMPLETED"})
    return json_reply(202, {"status": "CANCELLATION_REQUESTED"})
