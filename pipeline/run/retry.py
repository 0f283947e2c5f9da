"""When to try again and how long to wait: pure policy plus small async helpers.

The decisions are pure functions of their arguments (attempt number, Retry-After header, an
injected ``random.Random``, an injected clock), so tests assert exact wait sequences with a seeded
generator. Waiting goes through a :class:`Sleeper`: the real one awaits ``asyncio.sleep``; the
:class:`RecordingSleeper` (selected by ``Settings.no_sleep``, env ``MOTION_PIPELINE_NO_SLEEP=1``)
records each wait, returns at once and advances a fake clock that :class:`PauseGate`,
:class:`RateLimiter` and :class:`CircuitBreaker` read.

- :func:`backoff` — full-jitter exponential backoff; :func:`next_wait` — Retry-After as a floor.
- :class:`PauseGate` — one shared pause after a 429 instead of a herd of retries.
- :class:`CircuitBreaker` — stop calling a provider that keeps answering 5xx, probe after a rest.
- :class:`RateLimiter` — creates obey ``rate_limit`` in every sliding window.
- :func:`poll_delay` — adaptive, jittered polling interval.

The loop that applies them to a call is :meth:`pipeline.run.calls.Calls.repeat`, the one retry
primitive of a run.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from pipeline.settings import Settings

# --------------------------------------------------------------------------- sleeping


class Sleeper(Protocol):
    """Where waits go: a clock and a sleep that agree with each other."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealSleeper:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class RecordingSleeper:
    """Records every requested wait and returns at once, advancing a fake clock instead.

    Waits that start in the same event-loop turn overlap, as real concurrent sleeps would: the
    clock moves to the latest end, not to the sum.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.waits.append(seconds)
        started = self.now
        await asyncio.sleep(0)  # still a suspension point, so other tasks run
        self.now = max(self.now, started + seconds)


def sleeper_for(settings: Settings) -> Sleeper:
    return RecordingSleeper() if settings.no_sleep else RealSleeper()


# --------------------------------------------------------------------------- causes


def cause(exc: BaseException) -> str:
    """Why a call failed, for the log: error class, HTTP status, provider code, Retry-After."""
    parts = [type(exc).__name__]
    status = getattr(exc, "http_status", None)
    if status:
        parts.append(f"HTTP {status}")
    code = getattr(exc, "code", None)
    if code and str(code) != str(status):
        parts.append(f"code {code}")
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        parts.append(f"Retry-After {retry_after:g} s")
    return ", ".join(parts) + f": {exc}"


# --------------------------------------------------------------------------- waits


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)).

    ``attempt`` counts failures so far, from 0. Full jitter spreads a crowd of retries evenly
    over the window instead of letting them collide again at its end.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = cap if attempt >= 64 else min(cap, base * 2.0**attempt)  # 2**1024 overflows
    return rng.uniform(0.0, ceiling)


def next_wait(
    attempt: int,
    retry_after: float | None,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    rng: random.Random,
) -> float:
    """The jittered backoff, but never less than what the server asked for (Retry-After)."""
    jittered = backoff(attempt, base=base, cap=cap, rng=rng)  # always drawn: stable sequences
    return jittered if retry_after is None else max(jittered, retry_after)


def poll_delay(
    polls_so_far: int,
    *,
    base_interval: float,
    elapsed: float,
    rng: random.Random,
    first_delay: float | None = None,
    max_factor: float = 4.0,
    growth: float = 20.0,
) -> float:
    """Seconds until the next poll of a task that has been running for ``elapsed`` seconds.

    The first poll comes after ``first_delay`` (default ``base_interval``): a task is never done
    at once. After that the interval grows linearly with the task's age, doubling after
    ``growth`` base intervals and bounded at ``max_factor`` times the base, so long tasks cost
    few polls. Every delay is jittered by ±20 % so tasks created together do not poll together.
    """
    if polls_so_far == 0:
        interval = base_interval if first_delay is None else first_delay
    else:
        factor = min(max_factor, 1.0 + max(0.0, elapsed) / (growth * base_interval))
        interval = base_interval * factor
    return interval * rng.uniform(0.8, 1.2)


# --------------------------------------------------------------------------- shared pause


class PauseGate:
    """One pause shared by every caller: after a 429 all creates wait, then resume together.

    :meth:`pause_for` only ever extends the pause, so a short Retry-After arriving after a long
    one cannot cut the long one short.
    """

    def __init__(self, sleeper: Sleeper) -> None:
        self._sleeper = sleeper
        self._resume_at = -math.inf

    def pause_for(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, self._sleeper.monotonic() + max(0.0, seconds))

    @property
    def remaining(self) -> float:
        return max(0.0, self._resume_at - self._sleeper.monotonic())

    async def wait(self) -> None:
        # Loop: the pause may be extended while we sleep.
        while (left := self.remaining) > 0:
            await self._sleeper.sleep(left)


# --------------------------------------------------------------------------- circuit breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures, rests ``cooldown`` seconds, then lets one
    probe through (half-open): success closes it, failure opens it for another cool-down.

    A pure state machine over an injected clock; a probe that never reports back (cancelled)
    expires after a cool-down so the breaker cannot stick half-open.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 60.0,
        clock: Callable[[], float],
        on_change: Callable[[BreakerState], None] = lambda _state: None,
    ):
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._on_change = on_change
        self.cooldown = cooldown
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._since = -math.inf  # when it opened, or when the current probe started

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open state, True for exactly one probe."""
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if now < self._since + self.cooldown:
            return False
        self._state = BreakerState.HALF_OPEN
        self._since = now
        return True

    def retry_in(self) -> float:
        """Seconds until :meth:`allow` could next say yes (0 when closed)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self._since + self.cooldown - self._clock())

    def record_success(self) -> None:
        was = self._state
        self._state = BreakerState.CLOSED
        self._failures = 0
        if was is not BreakerState.CLOSED:
            self._on_change(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.threshold
        ):
            self._state = BreakerState.OPEN
            self._since = self._clock()
            self._on_change(BreakerState.OPEN)
        # Already open: a straggler that started before the opening does not extend the rest.


# --------------------------------------------------------------------------- rate limit


def next_slot(history: Sequence[float], now: float, *, requests: int, per_seconds: float) -> float:
    """The earliest time >= ``now`` at which one more call keeps every window of
    ``per_seconds`` at or under ``requests`` calls.

    ``history`` holds the times of earlier calls (and reservations), sorted. A window is
    half-open, ``[t, t + per_seconds)``, so a call exactly ``per_seconds`` after another is in
    the next window.
    """
    if len(history) < requests:
        return now
    return max(now, history[-requests] + per_seconds)


class RateLimiter:
    """``requests`` calls per ``per_seconds``, in every sliding window, served first come first
    served: each caller reserves the next free slot, then sleeps until it."""

    def __init__(self, requests: int, per_seconds: float, *, sleeper: Sleeper) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError(f"rate limit must be >= 1 per > 0 s, got {requests}/{per_seconds}")
        self.requests = requests
        self.per_seconds = per_seconds
        self._sleeper = sleeper
        self._history: list[float] = []

    @property
    def history(self) -> tuple[float, ...]:
        return tuple(self._history)

    def next_free(self, now: float) -> float:
        """When a call reserved now would go out (``now`` when the window has room)."""
        live = [t for t in self._history if t > now - self.per_seconds]
        return next_slot(live, now, requests=self.requests, per_seconds=self.per_seconds)

    async def acquire(self) -> float:
        """Wait for the next free slot; returns the slot's time on the sleeper's clock."""
        now = self._sleeper.monotonic()
        # Slots older than one window cannot constrain any future slot: forget them.
        stale = 0
        while stale < len(self._history) and self._history[stale] <= now - self.per_seconds:
            stale += 1
        del self._history[:stale]
        slot = next_slot(self._history, now, requests=self.requests, per_seconds=self.per_seconds)
        # Reserved before sleeping, and kept even if the caller is cancelled: removing it could
        # let a later reservation land out of order and overfill a window. A lost slot is cheap.
        self._history.append(slot)
        if slot > now:
            await self._sleeper.sleep(slot - now)
        return slot
