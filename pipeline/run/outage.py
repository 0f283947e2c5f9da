"""A provider that cannot be reached: retried quietly for a while, then a stop that names it.

Every call to the provider reports its outcome here: an :class:`~pipeline.errors.UnreachableError`
(refused, DNS, TLS, timeouts, deadlines: no answer at all) opens or extends a streak; any answer,
even an error answer, ends it. A streak that lasts :data:`OUTAGE_LIMIT` seconds with no answer in
between is an outage: the run stops (exit 3) naming the host and the last error, instead of
retrying in silence until every task times out. A shorter streak is shown as a wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from pipeline.errors import UnreachableError

OUTAGE_LIMIT = 60.0
"""Seconds of consecutive failures to reach the provider before the batch stops."""


@dataclass(frozen=True)
class Streak:
    host: str
    since: float
    last_error: str
    failures: int


class Outage:
    """The current streak of unanswered calls, on an injected clock."""

    def __init__(self, clock: Callable[[], float], *, limit: float = OUTAGE_LIMIT) -> None:
        self._clock = clock
        self.limit = limit
        self.streak: Streak | None = None

    def failed(self, exc: UnreachableError) -> None:
        now = self._clock()
        if self.streak is None:
            self.streak = Streak(exc.host or "the provider", now, exc.message, 1)
        else:
            s = self.streak
            self.streak = Streak(exc.host or s.host, s.since, exc.message, s.failures + 1)

    def answered(self) -> None:
        self.streak = None

    def verdict(self) -> str | None:
        """The stop reason once the streak has lasted the limit; None before that."""
        s = self.streak
        if s is None or self._clock() - s.since < self.limit:
            return None
        return (
            f"provider unreachable: no answer from {s.host} for {self._clock() - s.since:.0f} s "
            f"({s.failures} tries; last: {s.last_error}); tasks already paid for are collected "
            "by the next run"
        )


class WatchingTransport(httpx.AsyncBaseTransport):
    """The HTTP transport of a run, reporting to :class:`Outage` whether the provider's own hosts
    answer: every response counts as an answer, every failure to get one (refused, DNS, TLS,
    timeouts) as a failure. Other hosts (result CDNs, input URLs) are not the provider."""

    def __init__(self, inner: httpx.AsyncBaseTransport, outage: Outage, hosts: set[str]) -> None:
        self._inner = inner
        self._outage = outage
        self._hosts = {h.lower() for h in hosts if h}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.lower()
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx.PoolTimeout, httpx.LocalProtocolError):
            raise  # our own pool was busy, our own request unsendable: nothing about the provider
        except httpx.TransportError as exc:
            if host in self._hosts:
                detail = str(exc) or type(exc).__name__
                self._outage.failed(UnreachableError(f"{type(exc).__name__}: {detail}", host=host))
            raise
        if host in self._hosts:
            self._outage.answered()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
