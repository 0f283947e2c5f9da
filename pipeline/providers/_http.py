"""One HTTP exchange with a provider, with transport faults already classified.

The question every provider call must answer is "did the server possibly act on this request?".
A create that certainly never reached the server may be retried; one that may have reached it
must not be sent again blindly (that is how a batch pays twice). So the same transport fault maps
to different errors by *purpose*:

============================  ==========================  =======================
fault                          create                      query / upload
============================  ==========================  =======================
connect refused / timeout      TransientError              TransientError
pool timeout (never sent)      TransientError              TransientError
write/read timeout, reset,     AmbiguousError              TransientError
closed mid-response
unparseable body               AmbiguousError              TransientError
============================  ==========================  =======================

HTTP statuses and body codes are the provider modules' business: they receive a :class:`Reply`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from pipeline.errors import AmbiguousError, ConfigError, ProviderError, TransientError
from pipeline.retry import parse_retry_after
from pipeline.settings import redact

Purpose = Literal["create", "query"]

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
    flat = " ".join(text.split())
    if len(flat) > _SNIPPET:
        flat = flat[:_SNIPPET] + "..."
    return redact(flat, secrets)


def parse_body(text: str) -> Any:
    """The JSON value of a body, or None when it is empty or not JSON."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def garbage_error(
    what: str, reply: Reply, purpose: Purpose, secrets: Iterable[str]
) -> ProviderError:
    """A finished response whose body cannot be understood."""
    message = f"{what}: unreadable response (HTTP {reply.status}): {snippet(reply.text, secrets)!r}"
    if purpose == "create":
        return AmbiguousError(message, http_status=reply.status)
    return TransientError(message, http_status=reply.status)


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    purpose: Purpose,
    secrets: Iterable[str],
    now: Callable[[], float] = time.time,
    **kwargs: Any,
) -> Reply:
    """Send one request and read the whole response, classifying transport faults.

    ``what`` names the call in messages (e.g. ``"kie create for job alice"``); it must not
    carry secrets. Keyword arguments go to :meth:`httpx.AsyncClient.request`.
    """
    secrets = list(secrets)
    try:
        response = await client.request(method, url, **kwargs)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ConfigError(f"{what}: bad provider URL {url!r}: {exc}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # Nothing was sent: no connection, so the server cannot have acted.
        raise TransientError(f"{what}: could not connect: {_describe(exc, secrets)}") from None
    except httpx.RequestError as exc:
        # Read/write timeouts, resets, a peer closing mid-response, undecodable bodies: the
        # request may have been read and acted on.
        message = f"{what}: connection failed after sending: {_describe(exc, secrets)}"
        if purpose == "create":
            raise AmbiguousError(message) from None
        raise TransientError(message) from None
    text = response.text
    return Reply(
        status=response.status_code,
        body=parse_body(text),
        text=text,
        retry_after=parse_retry_after(response.headers.get("retry-after"), now=now()),
        headers=dict(response.headers),
    )


def _describe(exc: Exception, secrets: Iterable[str]) -> str:
    detail = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {detail}", secrets)
