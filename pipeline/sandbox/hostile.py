"""The sandbox misbehaving on purpose: answers bent by a fault rule (pure: Reply in, Reply out).

The faults are documented in :mod:`.faults`. Bodies that are huge are generated while they are
sent (:attr:`Reply.stream`), never built in memory, so a 64 MiB answer costs the sandbox nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.wire import Pace, Reply, Request

_BLOCK = 64 * 1024


def trickled(reply: Reply, rule: FaultRule) -> Reply:
    """The same answer, its body sent ``rule.chunk`` bytes every ``rule.seconds``."""
    return dataclasses.replace(reply, pace=Pace(rule.chunk, rule.seconds))


def huge(reply: Reply, rule: FaultRule) -> Reply:
    """The same answer after ``rule.size`` minus its length bytes of JSON whitespace.

    Leading whitespace keeps it valid JSON: only a reader that stops at a cap is protected.
    """
    answer = reply.body
    padding = max(0, rule.size - len(answer))

    def stream() -> Iterator[bytes]:
        yield from _repeat(b" ", padding)
        yield answer

    length = padding + len(answer) if rule.content_length else None
    return dataclasses.replace(reply, body=b"", file=None, stream=stream, length=length)


def huge_result(rule: FaultRule) -> Reply:
    """A "video" of ``rule.size`` zero bytes, announced or (chunked) not."""
    length = rule.size if rule.content_length else None
    return Reply(200, headers={"Content-Type": "video/mp4"},
                 stream=lambda: _repeat(b"\0", rule.size), length=length)  # fmt: skip


def redirect_to_self(req: Request) -> Reply:
    """302 to the very URL asked: a client that follows blindly never gets out."""
    return Reply(302, b"", {"Location": f"{req.base_url}{req.path}", "Content-Type": "text/plain"})


def trickled_file(path: Path, rule: FaultRule) -> Reply:
    return Reply(200, headers={"Content-Type": "video/mp4"}, file=path,
                 pace=Pace(rule.chunk, rule.seconds))  # fmt: skip


def with_task_id(reply: Reply, task_id: str, text: str) -> Reply:
    """The create's answer with the task id replaced by ``text``, verbatim, wherever it is.

    ``text`` is the inside of a JSON string (escapes allowed, see weird_task_id), so it can go
    into the id field and into the URLs built from the id (fal's ``status_url``, Replicate's
    ``urls.get``) alike. The sandbox's ids are unique tokens of letters, digits, ``-`` and ``_``,
    so the replacement touches nothing else.
    """
    needle = json.dumps(task_id)[1:-1].encode()
    return dataclasses.replace(reply, body=reply.body.replace(needle, text.encode()))


def download_fault(rule: FaultRule) -> Reply:
    """A request-level fault on a result download (rate limit, server error, reset...)."""
    if rule.kind in ("reset_before_commit", "reset_after_commit"):
        return Reply(reset=True)
    defaults = {"rate_limit": 429, "server_error": 503, "bad_key": 403, "out_of_credits": 403}
    status = rule.status or defaults.get(rule.kind, 500)
    headers = {"Content-Type": "text/plain"}
    if rule.retry_after is not None:
        headers["Retry-After"] = f"{rule.retry_after:g}"
    return Reply(status, (rule.message or rule.kind).encode(), headers)


def _repeat(byte: bytes, total: int) -> Iterator[bytes]:
    block = byte * _BLOCK
    while total > 0:
        yield block[: min(total, _BLOCK)]
        total -= _BLOCK
