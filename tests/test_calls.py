"""Calls.repeat, the one retry primitive of a run: exact waits with seeded randomness, recorded
instead of slept; the shared 429 pause, the breaker and the create rate limit."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest

from pipeline.errors import AmbiguousError, RateLimitedError, RefusedError, TransientError
from pipeline.run.calls import RATE_LIMITED_TRIES, Calls
from pipeline.run.halt import Halt
from pipeline.run.retry import (
    BreakerState,
    CircuitBreaker,
    PauseGate,
    RateLimiter,
    RecordingSleeper,
)


class Top(random.Random):
    """Always the top of the jitter range: exposes the ceilings themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Bottom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def scripted(*outcomes: object) -> tuple[Callable[[], Awaitable[object]], list[int]]:
    calls: list[int] = []
    queue = list(outcomes)

    async def call() -> object:
        calls.append(1)
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return call, calls


def make_calls(
    sleeper: RecordingSleeper,
    rng: random.Random,
    *,
    breaker: CircuitBreaker | None = None,
    limiter: RateLimiter | None = None,
    halt: Halt | None = None,
    log: logging.Logger | None = None,
) -> Calls:
    return Calls(
        sleeper=sleeper,
        rng=rng,
        gate=PauseGate(sleeper),
        breaker=breaker or CircuitBreaker(threshold=5, cooldown=30.0, clock=sleeper.monotonic),
        limiter=limiter or RateLimiter(1000, 1.0, sleeper=sleeper),
        halt=halt or Halt(lambda _reason: None),
        log=log or logging.getLogger("test_calls"),
        secrets=("sk-live-secret",),
    )


def test_repeat_waits_the_jittered_backoff_sequence() -> None:
    sleeper = RecordingSleeper()
    call, calls = scripted(TransientError("503"), TransientError("reset"), "ok")
    result = asyncio.run(make_calls(sleeper, random.Random(1)).repeat(call, what="poll", tries=5))
    assert result == "ok" and len(calls) == 3
    assert [round(w, 6) for w in sleeper.waits] == [0.134364, 1.694867]


def test_repeat_gives_up_after_its_tries_and_passes_final_errors_through() -> None:
    sleeper = RecordingSleeper()
    calls_ = make_calls(sleeper, Top())
    call, calls = scripted(*(TransientError(f"503 #{n}") for n in range(3)))
    with pytest.raises(TransientError, match="503 #2"):
        asyncio.run(calls_.repeat(call, what="poll", tries=3))
    assert len(calls) == 3 and sleeper.waits == [1.0, 2.0]
    for final in (RefusedError("image too small"), AmbiguousError("reset after send")):
        call, calls = scripted(final, "never")
        with pytest.raises(type(final)):
            asyncio.run(calls_.repeat(call, what="create", creates=True))
        assert len(calls) == 1 and sleeper.waits == [1.0, 2.0]


def test_repeat_stops_retrying_once_the_batch_is_stopping() -> None:
    sleeper = RecordingSleeper()
    halt = Halt(lambda _reason: None)
    halt.stop_new("disk full", 3)
    call, calls = scripted(TransientError("503"), "ok")
    with pytest.raises(TransientError):
        asyncio.run(make_calls(sleeper, Top(), halt=halt).repeat(call, what="upload"))
    assert len(calls) == 1 and sleeper.waits == []


def test_a_429_pauses_every_caller_through_the_gate() -> None:
    sleeper = RecordingSleeper()
    calls_ = make_calls(sleeper, Bottom())
    first, first_calls = scripted(RateLimitedError("429", retry_after=7.0), "ok")
    other, other_calls = scripted("ok too")

    async def scenario() -> tuple[object, object, float]:
        task = asyncio.create_task(calls_.repeat(first, what="create", creates=True))
        await asyncio.sleep(0)  # its first try got the 429; it now waits at the gate
        paused = calls_.gate.remaining
        other_result = await calls_.repeat(other, what="poll")  # meanwhile, waits too
        return await task, other_result, paused

    assert asyncio.run(scenario()) == ("ok", "ok too", 7.0)
    assert (len(first_calls), len(other_calls)) == (2, 1)
    assert sleeper.waits == [7.0, 7.0]  # both waited out the same pause...
    assert sleeper.now == 7.0  # ...which ended once, at t=7


def test_429s_do_not_use_up_the_tries_but_are_bounded_too() -> None:
    sleeper = RecordingSleeper()
    limited = [RateLimitedError("429", retry_after=1.0) for _ in range(5)]
    call, calls = scripted(*limited, "ok")
    assert asyncio.run(make_calls(sleeper, Bottom()).repeat(call, what="poll", tries=2)) == "ok"
    assert len(calls) == 6
    endless = [RateLimitedError("429", retry_after=0.5) for _ in range(RATE_LIMITED_TRIES)]
    call, calls = scripted(*endless)
    with pytest.raises(RateLimitedError):
        asyncio.run(make_calls(sleeper, Bottom()).repeat(call, what="poll"))
    assert len(calls) == RATE_LIMITED_TRIES


def test_a_create_rests_while_the_breaker_is_open() -> None:
    sleeper = RecordingSleeper()
    breaker = CircuitBreaker(threshold=2, cooldown=30.0, clock=sleeper.monotonic)
    call, calls = scripted(TransientError("502"), TransientError("503"), "ok")
    calls_ = make_calls(sleeper, Top(), breaker=breaker)
    result = asyncio.run(calls_.repeat(call, what="create", tries=5, creates=True))
    assert result == "ok" and len(calls) == 3
    # backoff 1, backoff 2 (breaker opens), then the rest of the 30 s cool-down before the probe.
    assert sleeper.waits == [1.0, 2.0, 28.0]
    assert breaker.state is BreakerState.CLOSED


def test_polls_do_not_feed_the_breaker() -> None:
    sleeper = RecordingSleeper()
    breaker = CircuitBreaker(threshold=2, cooldown=30.0, clock=sleeper.monotonic)
    call, _ = scripted(TransientError("502"), TransientError("503"), "ok")
    asyncio.run(make_calls(sleeper, Top(), breaker=breaker).repeat(call, what="poll"))
    assert breaker.state is BreakerState.CLOSED and sleeper.waits == [1.0, 2.0]


def test_each_create_try_takes_a_rate_limit_slot() -> None:
    sleeper = RecordingSleeper()
    limiter = RateLimiter(1, 10.0, sleeper=sleeper)
    call, _ = scripted(TransientError("503"), "ok")
    asyncio.run(make_calls(sleeper, Top(), limiter=limiter).repeat(call, what="create",
                                                                   creates=True))  # fmt: skip
    assert sleeper.waits == [1.0, 9.0]  # backoff 1 s, then the slot 10 s after the first try


def test_each_retry_is_one_log_line_with_its_cause_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeper = RecordingSleeper()
    call, _ = scripted(TransientError("503 for key sk-live-secret", http_status=503), "ok")
    with caplog.at_level(logging.WARNING, logger="test_calls"):
        asyncio.run(make_calls(sleeper, Top()).repeat(call, what="job a1: poll"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("job a1: poll: try 1 failed, again in 1.0 s")
    assert "503" in lines[0] and "sk-live-secret" not in lines[0]
