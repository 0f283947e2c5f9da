"""Once a second, in real time (also when tests record their waits): is the provider gone, what
does the batch as a whole wait for, and a tick for the progress display (its status line)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipeline.progress.events import Reporter, Waiting
from pipeline.providers.base import RateLimit
from pipeline.run.calls import Calls
from pipeline.run.halt import Halt
from pipeline.run.outage import Outage
from pipeline.run.retry import BreakerState

TICK = 1.0
"""Seconds between the run's periodic checks."""


class Ticker:
    def __init__(
        self,
        *,
        calls: Calls,
        outage: Outage,
        halt: Halt,
        reporter: Reporter,
        rate: RateLimit,
        creates_in_flight: Callable[[], int],
    ) -> None:
        self.calls = calls
        self.outage = outage
        self.halt = halt
        self.reporter = reporter
        self.rate = rate
        self._in_flight = creates_in_flight

    async def run(self) -> None:
        shown = Waiting()
        while True:
            await asyncio.sleep(TICK)
            verdict = self.outage.verdict()
            if verdict is not None and not self.halt.aborted:
                self.calls.log.error("%s", verdict)
                self.halt.abort(verdict, 3)
            waiting = self.waiting_for()
            if waiting != shown:
                shown = waiting
                self.reporter.emit(waiting)
                if waiting.reason:
                    self.calls.log.info("waiting: %s", waiting.reason)
            self.reporter.tick(time.time())

    def waiting_for(self) -> Waiting:
        """What the batch waits for now, most pressing first (``until`` in Unix time)."""
        calls = self.calls
        mono, wall = calls.sleeper.monotonic(), time.time()
        streak = self.outage.streak
        if streak is not None:
            gives_up = wall + max(0.0, streak.since + self.outage.limit - time.monotonic())
            return Waiting(f"provider unreachable ({streak.host}): retrying, {streak.last_error}",
                           gives_up)  # fmt: skip
        if calls.gate.remaining > 0:
            return Waiting(
                "429 pause: the provider asked to slow down", wall + calls.gate.remaining
            )
        if calls.breaker.state is not BreakerState.CLOSED:
            return Waiting("circuit breaker open: the provider keeps failing",
                           wall + calls.breaker.retry_in())  # fmt: skip
        slot = calls.limiter.next_free(mono)
        if slot > mono + 0.5:
            return Waiting(f"rate limit: {self.rate.requests} creates per "
                           f"{self.rate.per_seconds:g} s", wall + slot - mono)  # fmt: skip
        if self.halt.reason is not None and self._in_flight() == 0:
            return Waiting(f"no new submissions ({self.halt.reason}): collecting paid tasks")
        return Waiting()
