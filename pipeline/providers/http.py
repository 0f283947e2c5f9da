"""One HTTP exchange with a provider: bounded in size and time, transport faults classified.

The question every provider call must answer is "did the server possibly act on this request?".
A create that certainly never reached the server may be retried; one that may have reached it
must not be sent again blindly (that is how a batch pays twice). So the same transport fault maps
to different errors by *purpose*:

======================================  ================  =====================
fault                                   create            query / upload
======================================  ================  =====================
bad base_url, request not encodable     ConfigError       ConfigError
(a header with CR/LF/NUL included)
never sent: refused, DNS, TLS, connect  UnreachableError  UnreachableError
or pool timeout, deadline before send
sent, no answer: write/read timeout,    AmbiguousError    UnreachableError
reset, closed before the status line
deadline after sending (slow server)    AmbiguousError    UnreachableError
answer cut off, over the size cap,      AmbiguousError    BadReplyError
undecodable, not JSON
======================================  ================  =====================

Every error above names the call (``what``); :class:`UnreachableError` also names the host
(no credentials), so a sustained outage can be reported by name. Nothing but the errors of
:mod:`pipeline.errors` leaves :func:`exchange`.

Bounds, because a provider (or whatever answers in its name) may be hostile or broken: the body
is streamed and abandoned once it passes ``max_bytes`` (compressed bodies are decoded with that
bound too, see :mod:`pipeline.storage.bodies`), and the whole exchange, from connect to the
last body byte, has one deadline: httpx's timeouts are per read, so a server that trickles a
byte a second would otherwise hold a poll forever.

HTTP statuses and body codes are the provider modules' business: they receive a :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from pipeline.errors import (
    AmbiguousError,
    BadReplyError,
    ConfigError,
    ProviderError,
    UnreachableError,
)
from pipeline.settings import DEFAULTS, redact
from pipeline.storage.bodies import ACCEPT_ENCODING, BodyError, BodyTooLarge, BoundedDecoder
from pipeline.storage.headers import parse_retry_after
from pipeline.storage.urls import display_url, host_of, url_problem

Purpose = Literal["create", "query", "upload"]

#: Largest API answer read: a provider's JSON is a few KiB; anything near this is a runaway.
MAX_REPLY_BYTES = 4 * 1024 * 1024
#: Seconds from connect to the last body byte, by purpose (uploads carry up to 100 MB).
DEADLINES: Mapping[Purpose, float] = {
    "create": DEFAULTS.create_deadline,
    "query": DEFAULTS.query_deadline,
    "upload": DEFAULTS.upload_deadline,
}

#: How much of a body goes into an error message: enough to diagnose, not a whole HTML page.
_SNIPPET = 200


@dataclass(frozen=True)
class Reply:
    """An HTTP response the server finished sending; ``body`` is None when it was not JSON."""

    status: int
    body: Any
    text: str = ""
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_json(self) -> bool:
        return self.body is not None


def snippet(text: str, secrets: Iterable[str]) -> str:
    """A short, redacted excerpt of a body for an error message."""
    flat = " ".join(text[: _SNIPPET * 4].split())
    if len(flat) > _SNIPPET:
        flat = flat[:_SNIPPET] + "..."
    return redact(flat, secrets)


def parse_body(text: str) -> Any:
    """The JSON value of a body, or None when it is empty or not JSON."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested a million deep
        return None


def garbage_error(
    what: str, reply: Reply, purpose: Purpose, secrets: Iterable[str]
) -> ProviderError:
    """A finished response whose body cannot be understood."""
    message = f"{what}: unreadable response (HTTP {reply.status}): {snippet(reply.text, secrets)!r}"
    if purpose == "create":
        return AmbiguousError(message, http_status=reply.status)
    return BadReplyError(message, http_status=reply.status)


class _Progress:
    """How far one exchange got: what decides whether a create may have been acted on."""

    def __init__(self) -> None:
        self.sent = False
        """The request headers started going out (httpcore's trace)."""
        self.status: int | None = None
        """The status line arrived."""
        self.received = 0

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event.endswith("send_request_headers.started"):
            self.sent = True


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    purpose: Purpose,
    secrets: Iterable[str],
    now: Callable[[], float] = time.time,
    max_bytes: int = MAX_REPLY_BYTES,
    deadline: float | None = None,
    **kwargs: Any,
) -> Reply:
    """Send one request and read the whole response, classifying transport faults.

    ``what`` names the call in messages (e.g. ``"kie create for job alice"``); it must not
    carry secrets. ``deadline`` (seconds, default :data:`DEADLINES` by purpose) bounds connect,
    send and the full read together. Keyword arguments go to
    :meth:`httpx.AsyncClient.build_request`.
    """
    secrets = list(secrets)
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{what}: bad provider URL {display_url(url)}: {problem}")
    progress = _Progress()
    headers = {"Accept-Encoding": ACCEPT_ENCODING, **(kwargs.pop("headers", None) or {})}
    extensions = {**(kwargs.pop("extensions", None) or {}), "trace": progress.trace}
    try:
        request = client.build_request(
            method, url, headers=headers, extensions=extensions, **kwargs
        )
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        # A header value that is not ASCII, a JSON option that cannot be encoded (a YAML date).
        raise ConfigError(f"{what}: cannot encode the request: {_describe(exc, secrets)}") from None
    limit = DEADLINES[purpose] if deadline is None else deadline
    try:
        async with asyncio.timeout(limit):
            # A redirect is an answer to classify, never a second request (a create must
            # not be re-sent somewhere we did not choose).
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                progress.status = response.status_code
                raw = await _read(response, max_bytes, progress)
            finally:
                await response.aclose()
    except TimeoutError:
        raise _fault(f"no complete answer within {limit:g} s", what, url, purpose, progress,
                     deadline_hit=True) from None  # fmt: skip
    except BodyTooLarge:
        raise _unusable(f"answer is over the {max_bytes} byte limit", what, purpose,
                        progress) from None  # fmt: skip
    except BodyError as exc:
        raise _unusable(f"answer cannot be decoded: {exc}", what, purpose, progress) from None
    except httpx.LocalProtocolError as exc:
        if not progress.sent:  # refused before a byte left: a header no request can carry
            raise ConfigError(
                f"{what}: cannot encode the request: {_describe(exc, secrets)}"
            ) from None
        raise _fault(_describe(exc, secrets), what, url, purpose, progress) from None
    except httpx.HTTPError as exc:
        raise _fault(_describe(exc, secrets), what, url, purpose, progress) from None
    except Exception as exc:  # the transport stack's own surprises
        # anyio and the socket layer can raise outside httpx's tree on hostile input (an
        # ExceptionGroup, an OverflowError); a batch must not die of it. Classified as a
        # transport fault, with its type named so the message is still diagnosable.
        raise _fault(_describe(exc, secrets), what, url, purpose, progress) from None
    text, decoded = _text(raw, response)
    return Reply(
        status=response.status_code,
        body=parse_body(text) if decoded else None,
        text=text,
        retry_after=parse_retry_after(response.headers.get("retry-after"), now=now()),
        headers=dict(response.headers),
    )


async def _read(response: httpx.Response, max_bytes: int, progress: _Progress) -> bytearray:
    """The decoded body, abandoned as soon as it passes ``max_bytes``."""
    encoding = response.headers.get("content-encoding")
    declared = _content_length(response)
    if declared is not None and declared > max_bytes and encoding in (None, "identity"):
        raise BodyTooLarge(f"Content-Length {declared}")
    decoder = BoundedDecoder(encoding, max_bytes)
    body = bytearray()
    async for raw in response.aiter_raw():
        progress.received += len(raw)
        body += decoder.feed(raw)
    body += decoder.finish()
    return body


def _content_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _text(raw: bytearray, response: httpx.Response) -> tuple[str, bool]:
    """The body as text, and whether it decoded cleanly (if not, it is no JSON we trust)."""
    charset = response.charset_encoding or "utf-8-sig"  # tolerate a BOM on JSON
    try:
        return raw.decode(charset), True
    except (UnicodeDecodeError, LookupError):
        return raw.decode("utf-8", "replace"), False


def _fault(
    detail: str,
    what: str,
    url: str,
    purpose: Purpose,
    progress: _Progress,
    *,
    deadline_hit: bool = False,
) -> ProviderError:
    """A transport fault or the deadline, by what had happened when it struck."""
    host = host_of(url)
    if not progress.sent:
        # Nothing left this machine: the server cannot have acted, whatever the purpose.
        return UnreachableError(f"{what}: could not connect to {host}: {detail}", host=host)
    if purpose == "create":
        return AmbiguousError(f"{what}: connection failed after sending: {detail}")
    if progress.status is None or deadline_hit:
        return UnreachableError(f"{what}: no answer from {host}: {detail}", host=host)
    return BadReplyError(
        f"{what}: answer (HTTP {progress.status}) cut off after {progress.received} bytes: "
        f"{detail}",
        http_status=progress.status,
    )


def _unusable(detail: str, what: str, purpose: Purpose, progress: _Progress) -> ProviderError:
    message = f"{what}: {detail} (HTTP {progress.status})"
    if purpose == "create":
        return AmbiguousError(message, http_status=progress.status)
    return BadReplyError(message, http_status=progress.status)


def _describe(exc: BaseException, secrets: Iterable[str]) -> str:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return redact(f"{type(exc).__name__}: {detail}", secrets)
