"""What every Replicate endpoint shares: token auth, RFC 7807 error bodies, ids and timestamps.

replicate-python sends ``Authorization: Token <token>`` (``replicate/client.py``), Replicate's
docs ``Bearer <token>``: both are accepted. Errors are problem details ``{title, detail,
status}`` (``replicate/exceptions.py`` reads exactly these); the 429 body is the documented
``{"detail": "Request was throttled. Your rate limit resets in ~30s."}`` with ``Retry-After``.
The 401 and 402 wordings are from memory of real answers (unverified).
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.service import Service
from pipeline.sandbox.wire import Reply, Request, json_reply, same_secret

NO_CREDIT = (
    "You have insufficient credit to run this model. Go to https://replicate.com/account/billing"
    "#billing to purchase credit. Once you purchase credit, please wait a few minutes before "
    "retrying."
)


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"title": title, "detail": detail, "status": status}, headers)


def throttled(seconds: float | None) -> Reply:
    wait = max(1, round(seconds if seconds is not None else 30))
    return json_reply(
        429,
        {"detail": f"Request was throttled. Your rate limit resets in ~{wait}s."},
        {"Retry-After": str(wait)},
    )


def fault_reply(rule: FaultRule, req: Request) -> Reply:
    if rule.kind == "rate_limit":
        reply = throttled(rule.retry_after)
        if rule.message:
            reply = json_reply(429, {"detail": rule.message}, reply.headers)
        return reply if rule.status is None else Reply(rule.status, reply.body, reply.headers)
    defaults = {
        "server_error": (500, "Internal Server Error", "An unexpected error occurred"),
        "bad_key": (401, "Unauthenticated", "You did not pass a valid authentication token"),
        "out_of_credits": (402, "Insufficient credit", NO_CREDIT),
    }
    status, title, detail = defaults[rule.kind]
    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
    return problem(rule.status or status, title, rule.message or detail, headers)


def auth_error(app: Service, req: Request) -> Reply | None:
    token = req.credential("bearer", "token")
    if token is None or not same_secret(token, app.keys.replicate):
        return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
    return None


def new_id() -> str:
    """An id shaped like Replicate's: 26 lower-case base32 characters."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def iso(epoch: float | None) -> str | None:
    """Replicate's timestamps: ISO 8601 UTC with microseconds and a ``Z``."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
