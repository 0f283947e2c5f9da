r"""Fault rules: which failures the sandbox injects, where and when (one ``faults`` entry each).

A profile (:mod:`.profile`) lists rules under ``faults``; they are tried in file order and the
first rule that fires handles the request. Every key but ``kind`` is optional::

    faults:
      - kind: rate_limit     # what happens (see KINDS below)
        endpoint: create     # create | poll | cancel | upload | download | account | any
                             #   (default any; fal's result fetch is a poll)
        protocol: kie        # kie | acedata | kling | fal | replicate (default: every one)
        times: 2             # fire at most N times (default: unlimited)
        every: 3             # fire on every Nth matching request (3rd, 6th, ...)
        after: 1             # ignore the first N matching requests
        probability: 0.25    # fire with this probability (seeded; combines with every/after)
        retry_after: 5       # rate_limit only: the Retry-After header, in seconds
        status: 503          # override the HTTP status of the error reply
        code: "1303"         # override the provider's own error code
        message: "..."       # override the error message / the task failure reason
        commit: true         # malformed_json on create: was the task created? (default true)
        seconds: 2.5         # slow: how long the reply is held back; trickle: between chunks
        chunk: 4             # trickle: bytes per write (default 4)
        size: 67108864       # huge_body / huge_result: body bytes (default 64 MiB)
        content_length: true # huge_body / huge_result: announce the size (default true; false:
                             #   chunked, so only counting tells the reader it is too big)
        url: "ftp://x/y"     # bad_result_url: the exact result URL text
        task_id: "\\ud800"   # weird_task_id: the id text, written verbatim between the quotes
        repeat: 1            #   of the JSON answer's id field, ``repeat`` times (see below)
        forge: unknown_task  # callback_forged: unknown_task | early_success

KINDS (request level: answered instead of, or around, the normal handler)
    rate_limit           429 with a Retry-After header when ``retry_after`` is set. Kie says it in
                         an HTTP 200 body (code 429); AceData 429 too_many_requests; Kling 429/1302;
                         fal 429 ``{"detail"}``; Replicate 429 "Request was throttled. Your rate
                         limit resets in ~Ns." with Retry-After always (N = retry_after, or 30).
    server_error         5xx. Kie: HTTP 200 body code 500; AceData 500 api_error; Kling 500/5000;
                         fal ``{"detail", "error_type"}`` (``code``: the type, default
                         internal_error) with X-Fal-Error-Type; Replicate a 500 problem.
    bad_key              the protocol's auth failure (Kie 401, AceData 401, Kling 401/1002, fal 401,
                         Replicate 401 Unauthenticated).
    out_of_credits       Kie body code 402; AceData 403 used_up; Kling 429/1102; fal 403 "User is
                         locked. Reason: Exhausted balance..."; Replicate 402 Insufficient credit.
    reset_before_commit  the body is read, then the connection is reset (TCP RST): nothing created.
    reset_after_commit   the request is handled (a create is in the ledger), then the connection is
                         reset before any answer byte is sent.
    malformed_json       the answer is truncated JSON with a 200 status.
    slow                 the normal answer, held back ``seconds``.
    trickle              the normal answer (a result video too, on ``download``): status and
                         headers at once, then the body ``chunk`` bytes every ``seconds``
                         (default 1 s): no single read times out, only a deadline ends it.
    huge_body            (create | poll | upload | account) the request is handled as usual (a
                         create IS made and in the ledger), then answered with a ``size``-byte
                         body generated while it is sent: JSON whitespace, then the normal
                         answer, so a client that reads it all gets a valid reply.
TASK level (creates only, drawn from accepted creates; ``endpoint`` is ignored)
    task_fail            the task runs and fails with ``message`` (a moderation-like reason). fal:
                         COMPLETED, then the result is a 422 model error of type ``code`` (default
                         content_policy_violation), or the request error ``code`` names
                         (runner_server_error...); Replicate: status failed, ``error`` set.
    never_finish         the task stays running forever.
    bad_result_url       the task succeeds, but every status query answers ``url`` as its result
                         URL (default ``http://127.0.0.1:99999/x``; ``ftp://...`` and
                         ``http://[::1`` are other classics).
ANSWER level (creates only, drawn from accepted creates; ``endpoint`` is ignored). The task is
made, billed and in the ledger (``LedgerEntry.answered_id`` records what the client was told);
only the create's answer lies about its id, wherever the id appears in it (fal's and Replicate's
URLs too):
    weird_task_id        the answered id is ``task_id`` repeated ``repeat`` times, written
                         verbatim into the JSON string, so JSON escapes reach the client
                         decoded: ``task_id: ""`` (empty); ``task_id: "x"`` with ``repeat:
                         10000``; ``task_id: "\\ud800"`` (the same text in YAML, JSON and
                         Python source for ``from_dict``: backslash, u, d800), which the body
                         carries as the escape ``\ud800``, a lone surrogate once decoded;
                         ``"\\u001b[2J"``. It must stay a JSON string body (escape ``"``, ``\``).
    duplicate_task_id    the answer carries the task id of the previous accepted create of the
                         same protocol, so two jobs receive one id (counted only on creates that
                         have a predecessor).
DOWNLOAD level
    expired_result       the result URL being fetched expires now: 404 (Kie, AceData, fal,
                         Replicate) or 403 (Kling); a new status query issues a fresh URL.
    redirect_loop        302 to the very URL asked, for ever.
    huge_result          200 with a ``size``-byte body of zeros, streamed (``content_length``
                         false: chunked, no length announced).

CALLBACK level (only tasks whose create named a callback URL; ``endpoint`` is ignored)
    callback_drop        the task's end is never called back (recorded as ``dropped``).
    callback_delay       the callback is sent ``seconds`` late.
    callback_duplicate   the same callback is delivered twice.
    callback_forged      right after the create, a callback nobody should trust: for a task id
                         that does not exist (``forge: unknown_task``), or announcing success for
                         this still-running task with a result URL that answers 404
                         (``forge: early_success``). The real callback still follows.

Counting: every rule counts the requests it matches (endpoint and protocol), whether or not an
earlier rule fired; ``times`` counts only the requests the rule actually handled.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pipeline.sandbox import schema

PROTOCOLS = ("kie", "acedata", "kling", "fal", "replicate")
ENDPOINTS = ("create", "poll", "cancel", "upload", "download", "account", "any")
REQUEST_KINDS = (
    "rate_limit",
    "server_error",
    "bad_key",
    "out_of_credits",
    "reset_before_commit",
    "reset_after_commit",
    "malformed_json",
    "slow",
    "trickle",
    "huge_body",
)
TASK_KINDS = ("task_fail", "never_finish", "bad_result_url")
ANSWER_KINDS = ("weird_task_id", "duplicate_task_id")
DOWNLOAD_KINDS = ("expired_result", "redirect_loop", "huge_result")
CALLBACK_KINDS = ("callback_drop", "callback_delay", "callback_duplicate", "callback_forged")
KINDS = REQUEST_KINDS + TASK_KINDS + ANSWER_KINDS + DOWNLOAD_KINDS + CALLBACK_KINDS
FORGERIES = ("unknown_task", "early_success")

DEFAULT_HUGE_SIZE = 64 * 1024 * 1024
DEFAULT_BAD_URL = "http://127.0.0.1:99999/x"
DEFAULT_TRICKLE_SECONDS = 1.0
DEFAULT_TRICKLE_CHUNK = 4

DEFAULT_FAIL_REASON = (
    "The content you submitted may violate our content policy (moderation check failed)."
)


@dataclass(frozen=True)
class FaultRule:
    """One line of ``faults``: what to inject, where, and when (see the module docstring)."""

    kind: str
    endpoint: str = "any"
    protocol: str | None = None
    times: int | None = None
    every: int | None = None
    after: int = 0
    probability: float | None = None
    retry_after: float | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    commit: bool = True
    seconds: float = 0.0
    chunk: int = DEFAULT_TRICKLE_CHUNK
    size: int = DEFAULT_HUGE_SIZE
    content_length: bool = True
    url: str = DEFAULT_BAD_URL
    task_id: str = ""
    repeat: int = 1
    forge: str = "unknown_task"

    @property
    def answered_id(self) -> str:
        """weird_task_id: the JSON string text the create answer carries as the id."""
        return self.task_id * self.repeat

    def matches(self, protocol: str, endpoint: str) -> bool:
        if self.protocol is not None and self.protocol != protocol:
            return False
        if self.kind in TASK_KINDS or self.kind in ANSWER_KINDS:
            return endpoint == "create"
        if self.kind in DOWNLOAD_KINDS:
            return endpoint == "download"
        if self.kind in CALLBACK_KINDS:
            return endpoint == "callback"
        if self.kind == "huge_body" and endpoint == "download":
            return False  # a result download's huge body is huge_result
        return self.endpoint in ("any", endpoint)


_RULE_KEYS = {f.name for f in fields(FaultRule)}


def rule_from_dict(data: Any, where: str) -> FaultRule:
    raw = schema.mapping(data, where)
    schema.no_unknown(raw, _RULE_KEYS, where)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    endpoint = raw.get("endpoint", "any")
    if endpoint not in ENDPOINTS:
        raise ValueError(
            f"{where}.endpoint: must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}"
        )
    protocol = raw.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(
            f"{where}.protocol: must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    probability = schema.number(raw, "probability", where, float, None)
    if probability is not None and probability > 1:
        raise ValueError(f"{where}.probability: must be between 0 and 1, got {probability!r}")
    every = schema.number(raw, "every", where, int, None)
    if every == 0:
        raise ValueError(f"{where}.every: must be at least 1")
    status = schema.number(raw, "status", where, int, None)
    if status is not None and not 100 <= status <= 599:
        raise ValueError(f"{where}.status: must be an HTTP status, got {status!r}")
    for key in ("code", "message"):
        if key in raw and not isinstance(raw[key], str | int):
            raise ValueError(f"{where}.{key}: must be a string")
    for key in ("commit", "content_length"):
        if key in raw and not isinstance(raw[key], bool):
            raise ValueError(f"{where}.{key}: must be true or false")
    if kind == "huge_body" and endpoint == "download":
        raise ValueError(f"{where}.endpoint: huge_body answers API calls; use huge_result")
    forge = schema.text(raw, "forge", where, "unknown_task")
    if forge not in FORGERIES:
        raise ValueError(f"{where}.forge: must be one of {', '.join(FORGERIES)}, got {forge!r}")
    if kind == "weird_task_id" and "task_id" not in raw:
        raise ValueError(f"{where}.task_id: weird_task_id needs the id text to answer")
    default_seconds = DEFAULT_TRICKLE_SECONDS if kind == "trickle" else 0.0
    return FaultRule(
        kind=kind,
        endpoint=endpoint,
        protocol=protocol,
        times=schema.number(raw, "times", where, int, None),
        every=every,
        after=schema.number(raw, "after", where, int, 0),
        probability=probability,
        retry_after=schema.number(raw, "retry_after", where, float, None),
        status=status,
        code=str(raw["code"]) if "code" in raw else None,
        message=str(raw["message"]) if "message" in raw else None,
        commit=raw.get("commit", True),
        seconds=schema.number(raw, "seconds", where, float, default_seconds),
        chunk=schema.positive(raw, "chunk", where, DEFAULT_TRICKLE_CHUNK),
        size=schema.positive(raw, "size", where, DEFAULT_HUGE_SIZE),
        content_length=raw.get("content_length", True),
        url=schema.text(raw, "url", where, DEFAULT_BAD_URL),
        task_id=schema.json_string_text(raw, "task_id", where),
        repeat=schema.positive(raw, "repeat", where, 1),
        forge=forge,
    )
