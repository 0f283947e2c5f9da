"""fal's credential check and the refusals every fal host shares (``{"detail": ...}`` bodies).

fal keys go in ``Authorization: Key <key>``. An account without balance is locked: fal answers
403 with this exact text on submits and uploads (reported verbatim in fal-ai/fal#1147, #1112),
while status queries still work. The 401 wording is composed (inferred).
"""

from __future__ import annotations

from pipeline.sandbox.service import Service
from pipeline.sandbox.wire import Reply, Request, json_reply, same_secret

LOCKED = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)
BAD_KEY = "Invalid Key authorization header"


def detail(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"detail": message}, headers)


def auth_error(app: Service, req: Request) -> Reply | None:
    """401 unless the ``Authorization: Key <key>`` header carries the fal key."""
    key = req.credential("key")
    if key is None:
        return detail(401, "Authorization header with a Key is required")
    if not same_secret(key, app.keys.fal):
        return detail(401, BAD_KEY)
    return None


def locked(app: Service) -> Reply | None:
    """403 when the account has no balance left (``credits: 0`` in the profile)."""
    return detail(403, LOCKED) if app.profile.credits <= 0 else None
