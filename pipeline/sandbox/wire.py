"""HTTP values the protocol modules exchange with the server: Request in, Reply out (pure)."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request; header names are lower-case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    base_url: str = ""
    """The sandbox's own base URL, for URLs put into answers."""

    @classmethod
    def parse(
        cls, method: str, target: str, headers: Mapping[str, str], body: bytes, base_url: str
    ) -> Request:
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return cls(method, parts.path, query, {k.lower(): v for k, v in headers.items()}, body,
                   base_url)  # fmt: skip

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer ...`` header; None when absent or empty."""
        return self.credential("bearer")

    def credential(self, *schemes: str) -> str | None:
        """The token of an ``Authorization: <scheme> ...`` header for one of ``schemes``
        (case-insensitive); None when absent, empty or of another scheme."""
        value = self.headers.get("authorization", "").strip()
        scheme, _, token = value.partition(" ")
        if scheme.lower() not in schemes or not token.strip():
            return None
        return token.strip()

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Pace:
    """Send the body ``chunk`` bytes at a time, ``seconds`` apart (the trickle fault)."""

    chunk: int
    seconds: float


@dataclass(frozen=True)
class Reply:
    """An answer: status, headers, body bytes, or a file to stream; ``reset`` sends a TCP RST.

    ``stream`` makes the body while it is sent (a huge body is never built in memory); its
    ``length`` is announced as Content-Length, or the body goes out chunked when None.
    ``pace`` slows whichever body this is down to a trickle.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None
    reset: bool = False
    stream: Callable[[], Iterator[bytes]] | None = None
    length: int | None = None
    pace: Pace | None = None


@dataclass(frozen=True)
class Callback:
    """A callback to POST: where, the JSON body, and extra headers (signatures, ids)."""

    url: str
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


def json_reply(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Reply(status, body, {"Content-Type": "application/json", **(headers or {})})


def malformed(reply: Reply) -> Reply:
    """The same answer cut in the middle: what a proxy that dropped the tail would deliver."""
    body = reply.body or b'{"code":200,"msg":"success","data":{}}'
    return Reply(200, body[: max(1, len(body) // 2)], {"Content-Type": "application/json"})


def same_secret(given: str, expected: str | None) -> bool:
    """Constant-time credential check; ``expected`` None accepts any non-empty value."""
    if not given:
        return False
    return expected is None or hmac.compare_digest(given.encode(), expected.encode())


class InputProblem(Exception):
    """An input URL the service could not use; the message is the task's failure reason."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """Parse a multipart/form-data body into parts by field name; ValueError when malformed."""
    boundary = _param(content_type, "boundary")
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise ValueError("Content-Type must be multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise ValueError("multipart body has no parts")
    parts: dict[str, Part] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without headers")
        headers = _part_headers(head)
        disposition = headers.get("content-disposition", "")
        name = _param(disposition, "name")
        if name is None:
            raise ValueError("multipart part without a name")
        data = data.removesuffix(b"\r\n")
        parts[name] = Part(name, _param(disposition, "filename"), headers.get("content-type"), data)
    return parts


def _part_headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return headers


def _param(header: str, name: str) -> str | None:
    for item in header.split(";")[1:]:
        key, sep, value = item.strip().partition("=")
        if sep and key.strip().lower() == name:
            return value.strip().strip('"')
    return None
