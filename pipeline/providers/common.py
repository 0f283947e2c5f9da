"""What the provider clients do the same way: reading a reply that is no JSON object, checking
the task id a provider hands out, reading how long it says a task ran, asking again for a task's
result URL, polling one task at a time, and saying what a provider lacks.

Each protocol module keeps its own envelope, codes and wording; only logic that is the same for
every provider that needs it lives here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import httpx

from pipeline.errors import AmbiguousError, ConfigError, ProviderError, TransientError
from pipeline.jobs import Handle, TaskStatus
from pipeline.providers.base import Credentials, ProviderConfig
from pipeline.providers.http import DEADLINES, Purpose, Reply, garbage_error, snippet
from pipeline.settings import printable, redact

C_contra = TypeVar("C_contra", contravariant=True)

Poll = Callable[[Handle], Awaitable[TaskStatus]]


class Classify(Protocol[C_contra]):
    """A provider module's ``classify``: the error a business code (or HTTP status) means."""

    def __call__(
        self, code: C_contra, message: str, *, what: str, purpose: Purpose, reply: Reply
    ) -> ProviderError: ...


def require_object(
    reply: Reply,
    what: str,
    purpose: Purpose,
    secrets: Iterable[str],
    *,
    classify: Classify[C_contra],
    no_code: C_contra,
) -> None:
    """Raise unless the body is a JSON object; a bare 4xx status still says what went wrong.

    Such a 4xx goes to the provider's ``classify`` with ``no_code`` (what that classifier takes
    for "no business code"); any other unreadable reply is :func:`garbage_error`.
    """
    if reply.is_json and isinstance(reply.body, dict):
        return
    if 400 <= reply.status < 500:
        message = snippet(reply.text, secrets) or f"HTTP {reply.status}"
        raise classify(no_code, message, what=what, purpose=purpose, reply=reply)
    raise garbage_error(what, reply, purpose, secrets)


#: Longest task id accepted: real ids are 20-40 characters; ours go into URLs, files and logs.
MAX_TASK_ID = 200
#: How much of an unusable id an error message shows (escaped).
_SHOWN_ID = 80


def task_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be used as a task id, or None when it can (pure)."""
    if not value:
        return "it is empty"
    if len(value) > MAX_TASK_ID:
        return f"it is longer than {MAX_TASK_ID} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it holds a lone surrogate"
    if printable(value) != value:
        return "it holds control or bidi characters"
    if value.strip() != value:
        return "it has leading or trailing whitespace"
    return None


def checked_task_id(value: Any, *, what: str, secrets: Iterable[str] = ()) -> str:
    """The task id a provider answered for an ACCEPTED create (or found by a lookup).

    Ints become strings (Kling's ids are numeric). Anything else unusable is an
    :class:`AmbiguousError`: the task may exist and cost money, but an id we cannot store,
    print or send back is not one we can follow, so a human must resolve the job. The message
    shows an escaped, truncated form and the length; the raw value is never kept.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise AmbiguousError(
            f"{what}: the task id in the answer is a {type(value).__name__}, not a string; "
            "the task may exist: resolve the job by hand (motion-pipeline resolve)"
        )
    problem = task_id_problem(value)
    if problem is None:
        return value
    shown = printable(value[:_SHOWN_ID]) + ("..." if len(value) > _SHOWN_ID else "")
    raise AmbiguousError(
        f"{what}: the task id in the answer is unusable ({problem}; {len(value)} characters): "
        f'"{redact(shown, secrets)}"; the task may exist: resolve the job by hand '
        "(motion-pipeline resolve)"
    )


def float_or_none(value: Any) -> float | None:
    """A provider's number (int, float or numeric string) as a float; None when it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ran_seconds(
    measured: Any = None, *, start: Any = None, end: Any = None, unit: float = 1.0
) -> float | None:
    """How long a provider says a task ran, in seconds: its own figure (``measured``) or the
    difference of its creation and end time stamps, all in ``unit`` seconds (1000: ms). None
    when it gives neither as finite numbers."""
    figure = _finite(measured)
    if figure is None:
        began, ended = _finite(start), _finite(end)
        figure = None if began is None or ended is None else ended - began
    return None if figure is None else figure / unit


def _finite(value: Any) -> float | None:
    number = None if isinstance(value, bool) else float_or_none(value)
    return number if number is not None and math.isfinite(number) else None


async def poll_each(poll: Poll, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
    """One query per task, for providers without a batch query; transient misses are left out."""
    found: dict[str, TaskStatus] = {}
    for handle in handles:
        try:
            found[handle.task_id] = await poll(handle)
        except TransientError:
            continue
    return found


async def requery_result_url(poll: Poll, handle: Handle) -> str | None:
    """Re-query the task and take its current result URL (None unless it still succeeded)."""
    again = await poll(handle)
    return again.result_url if again.phase == "succeeded" else None


def no_upload_api(provider: str, path: Path) -> ConfigError:
    """The error for an upload to a provider that has no upload API."""
    return ConfigError(
        f"{provider} has no upload API: {path} must be given as an http(s) URL "
        "until a storage backend exists"
    )


def no_client_id(provider: str, job_id: str) -> AmbiguousError:
    """The error for reconciling a create with a provider that keeps no client id."""
    return AmbiguousError(
        f"{provider}: job {job_id}: the provider has no client id, so an unanswered create "
        "cannot be looked up; resolve it by hand (motion-pipeline resolve)"
    )


class ClientBase:
    """What every provider client holds: its config, keys, the shared HTTP client, a clock and
    the deadline of each kind of call (:data:`~pipeline.providers.http.DEADLINES` unless given;
    tests shorten them)."""

    callback_field: ClassVar[str | None] = None
    """No callbacks unless a provider names its field (Kie ``callBackUrl``...)."""

    def __init__(
        self,
        config: ProviderConfig,
        credentials: Credentials,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        deadlines: Mapping[Purpose, float] | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._client = client
        self._clock = clock
        self._deadlines: dict[Purpose, float] = {**DEADLINES, **(deadlines or {})}
