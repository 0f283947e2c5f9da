"""The one retry primitive of a run: every HTTP call of a stage goes through :meth:`Calls.repeat`.

It waits out the shared 429 pause, the circuit breaker and the create rate limit where asked,
retries a :class:`~pipeline.errors.TransientError` with full-jitter backoff (Retry-After as a
floor), gives up after its tries or when the batch is stopping, and writes one log line per
retry with its cause. What a failure *means* (an ambiguous create, a refusal, an expired URL) is
the stage's business: those errors pass through untouched (``final``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pipeline.errors import RateLimitedError, TransientError
from pipeline.providers.base import RateLimit
from pipeline.run.halt import Halt
from pipeline.run.retry import (
    BreakerState,
    CircuitBreaker,
    PauseGate,
    RateLimiter,
    Sleeper,
    cause,
    next_wait,
    sleeper_for,
)
from pipeline.settings import DEFAULTS, Settings, redact

T = TypeVar("T")

RATE_LIMITED_TRIES = 50
"""429 answers in a row one call rides out (each one pauses every caller) before it gives up."""


class Calls:
    @classmethod
    def for_run(
        cls,
        settings: Settings,
        rate: RateLimit,
        halt: Halt,
        log: logging.Logger,
        secrets: Sequence[str],
        notice: Callable[[str], None],
    ) -> Calls:
        """The run's calls: one breaker, one 429 pause and one create rate limit for all of
        them; the breaker's changes are told to the user through ``notice``."""
        sleeper = sleeper_for(settings)
        breaker = CircuitBreaker(
            threshold=DEFAULTS.breaker_threshold,
            cooldown=DEFAULTS.breaker_cooldown,
            clock=sleeper.monotonic,
            on_change=lambda state: notice(_BREAKER_WORDS[state.value]),
        )
        return cls(
            sleeper=sleeper,
            rng=random.Random(),  # noqa: S311 - jitter for waits, not a secret
            gate=PauseGate(sleeper),
            breaker=breaker,
            limiter=RateLimiter(rate.requests, rate.per_seconds, sleeper=sleeper),
            halt=halt,
            log=log,
            secrets=secrets,
        )

    def __init__(
        self,
        *,
        sleeper: Sleeper,
        rng: random.Random,
        gate: PauseGate,
        breaker: CircuitBreaker,
        limiter: RateLimiter,
        halt: Halt,
        log: logging.Logger,
        secrets: Sequence[str],
    ) -> None:
        self.sleeper = sleeper
        self.rng = rng
        self.gate = gate
        self.breaker = breaker
        self.limiter = limiter
        self.halt = halt
        self.log = log
        self._secrets = tuple(secrets)

    async def repeat(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        what: str,
        tries: int = DEFAULTS.call_tries,
        cap: float = 60.0,
        creates: bool = False,
        final: tuple[type[BaseException], ...] = (),
    ) -> T:
        """``call()`` until it returns; its last TransientError after ``tries`` (or once the
        batch is stopping). ``creates``: a create request, which also waits for the circuit
        breaker and the rate limit and tells the breaker how it went."""
        attempt = 0
        limited = 0
        while True:
            if creates:
                while not self.breaker.allow():
                    is_open = self.breaker.state is BreakerState.OPEN
                    rest = self.breaker.retry_in() if is_open else 0.05
                    await self.sleeper.sleep(max(rest, 0.05))
                await self.limiter.acquire()
            await self.gate.wait()
            try:
                result = await call()
            except final:
                raise
            except RateLimitedError as exc:
                if creates:
                    self.breaker.record_success()  # it answered: busy, not broken
                limited += 1
                wait = next_wait(limited - 1, exc.retry_after, base=1.0, cap=cap, rng=self.rng)
                if limited >= RATE_LIMITED_TRIES or self.halt.stopping:
                    self._say("%s: gave up after %d rate-limited answers (%s)", what, limited, exc)
                    raise
                self._say("%s: rate limited, every call pauses %.1f s (%s)", what, wait, exc)
                self.gate.pause_for(wait)
                continue
            except TransientError as exc:
                if creates:
                    self.breaker.record_failure()
                if attempt + 1 >= tries or self.halt.stopping:
                    self._say("%s: gave up after %d tries (%s)", what, attempt + 1, exc)
                    raise
                wait = next_wait(attempt, exc.retry_after, base=1.0, cap=cap, rng=self.rng)
                self._say("%s: try %d failed, again in %.1f s (%s)", what, attempt + 1, wait, exc)
                await self.sleeper.sleep(wait)
                attempt += 1
                continue
            if creates:
                self.breaker.record_success()
            return result

    def _say(self, template: str, what: str, number: float, *rest: float | BaseException) -> None:
        """One retry log line; its last argument is the error, written as its cause (class,
        HTTP status, provider code, Retry-After) and redacted."""
        *values, exc = rest
        text = redact(cause(exc), self._secrets) if isinstance(exc, BaseException) else str(exc)
        self.log.warning(template, what, number, *values, text)


_BREAKER_WORDS = {
    "open": "circuit breaker open: the provider keeps failing, calls rest "
    f"{DEFAULTS.breaker_cooldown:g} s",
    "half_open": "circuit breaker half open: one call tries the provider again",
    "closed": "circuit breaker closed: the provider answers again",
}
