"""Retry policy: exact wait sequences with seeded randomness, recorded instead of slept."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from pipeline.run.retry import (
    BreakerState,
    CircuitBreaker,
    PauseGate,
    RateLimiter,
    RealSleeper,
    RecordingSleeper,
    backoff,
    next_slot,
    next_wait,
    poll_delay,
    sleeper_for,
)
from pipeline.settings import Settings
from pipeline.storage.headers import MAX_RETRY_AFTER, parse_retry_after


class Top(random.Random):
    """Always the top of the jitter range: exposes the ceilings themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Bottom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class Middle(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- backoff


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff(a, base=1.0, cap=300.0, rng=Top()) for a in range(11)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff(3, base=0.5, cap=2.0, rng=Top()) == 2.0
    assert backoff(5000, rng=Top()) == 300.0  # no float overflow for absurd attempt numbers
    assert backoff(7, rng=Bottom()) == 0.0  # full jitter reaches down to zero


def test_backoff_with_a_seeded_rng_is_an_exact_sequence() -> None:
    waits = [round(backoff(a, rng=rng), 6) for rng in [random.Random(1)] for a in range(6)]
    assert waits == [0.134364, 1.694867, 3.055098, 2.040552, 7.926961, 14.383714]
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff(-1, rng=random.Random(1))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("86400", MAX_RETRY_AFTER),
        ("Sat, 21 Nov 2026 12:00:30 GMT", 30.0),
        ("Saturday, 21-Nov-26 12:01:00 GMT", 60.0),
        ("Sat Nov 21 12:00:10 2026", 10.0),
        ("Sat, 21 Nov 2026 11:00:00 GMT", 0.0),  # in the past: go now
        ("Sun, 21 Nov 2027 12:00:00 GMT", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("12 34", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_parse_retry_after_accepts_a_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Sat, 21 Nov 2026 12:00:05 GMT", now=naive) == 5.0


def test_retry_after_is_a_floor_for_the_jittered_backoff() -> None:
    assert next_wait(3, 10.0, rng=Bottom()) == 10.0  # jitter drew 0: the floor wins
    assert next_wait(3, 2.0, rng=Top()) == 8.0  # jitter drew more than asked: keep it
    assert next_wait(3, None, rng=Top()) == 8.0
    # The floor is applied after the draw, so the sequence stays the one backoff gives.
    a, b = random.Random(5), random.Random(5)
    assert [next_wait(n, 0.5, rng=a) for n in range(5)] == [
        max(0.5, backoff(n, rng=b)) for n in range(5)
    ]


# --------------------------------------------------------------------------- decisions


def test_pause_gate_only_extends_and_everyone_waits_once() -> None:
    sleeper = RecordingSleeper()
    gate = PauseGate(sleeper)
    gate.pause_for(10.0)
    gate.pause_for(3.0)  # a shorter pause never cuts the longer one short
    assert gate.remaining == 10.0

    async def herd() -> None:
        await asyncio.gather(*(gate.wait() for _ in range(3)))

    asyncio.run(herd())
    assert sleeper.waits == [10.0, 10.0, 10.0]  # one shared pause, not three in a row
    assert sleeper.now == 10.0
    assert gate.remaining == 0.0
    asyncio.run(gate.wait())
    assert sleeper.waits == [10.0, 10.0, 10.0]


def test_pause_gate_wait_follows_an_extension_made_while_sleeping() -> None:
    sleeper = RecordingSleeper()
    gate = PauseGate(sleeper)
    gate.pause_for(4.0)

    async def scenario() -> None:
        waiter = asyncio.create_task(gate.wait())
        await asyncio.sleep(0)  # the waiter is now inside its 4 s sleep
        gate.pause_for(10.0)  # another 429 arrives at t=0
        await waiter

    asyncio.run(scenario())
    assert sleeper.waits == [4.0, 6.0]
    assert sleeper.now == 10.0


# --------------------------------------------------------------------------- breaker


def make_breaker(threshold: int = 3, cooldown: float = 30.0) -> tuple[CircuitBreaker, list[float]]:
    clock = [100.0]
    return CircuitBreaker(threshold=threshold, cooldown=cooldown, clock=lambda: clock[0]), clock


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker, _ = make_breaker()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the streak is broken
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == 30.0


def test_breaker_half_open_lets_one_probe_through() -> None:
    breaker, clock = make_breaker()
    for _ in range(3):
        breaker.record_failure()
    clock[0] += 29.0
    assert not breaker.allow()
    assert breaker.retry_in() == 1.0
    clock[0] += 1.0
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # everyone else waits for it
    breaker.record_failure()  # the probe failed: a full cool-down again
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 30.0
    clock[0] += 30.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    assert breaker.allow() and breaker.allow()


def test_breaker_probe_that_never_reports_expires() -> None:
    breaker, clock = make_breaker(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock[0] += 10.0
    assert breaker.allow()  # probe sent, then cancelled: it never reports
    clock[0] += 9.0
    assert not breaker.allow()
    clock[0] += 1.0
    assert breaker.allow()  # a new probe


def test_breaker_ignores_stragglers_while_open() -> None:
    breaker, clock = make_breaker(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock[0] += 5.0
    breaker.record_failure()  # a call that began before the opening
    assert breaker.retry_in() == 5.0


# --------------------------------------------------------------------------- rate limit


def test_next_slot_exact() -> None:
    def slot(history: list[float], now: float) -> float:
        return next_slot(history, now, requests=3, per_seconds=10.0)

    assert slot([], 5.0) == 5.0
    assert slot([0.0, 1.0], 2.0) == 2.0
    assert slot([0.0, 1.0, 2.0], 3.0) == 10.0
    assert slot([0.0, 1.0, 2.0], 12.0) == 12.0
    assert slot([0.0, 0.0, 0.0], 0.0) == 10.0
    assert slot([0.0, 5.0, 6.0, 10.0], 10.0) == 15.0  # only the last three matter


def windows_ok(times: list[float], requests: int, per: float) -> bool:
    """Brute force: every half-open window [t, t + per) holds at most ``requests`` calls."""
    starts = times + [t - per + 1e-9 for t in times]
    return all(sum(s <= t < s + per for t in times) <= requests for s in starts)


def test_rate_limiter_burst_is_spread_over_windows() -> None:
    sleeper = RecordingSleeper()
    limiter = RateLimiter(3, 10.0, sleeper=sleeper)

    async def burst() -> list[float]:
        return await asyncio.gather(*(limiter.acquire() for _ in range(7)))

    assert asyncio.run(burst()) == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0]
    assert sleeper.waits == [10.0, 10.0, 10.0, 20.0]  # the first three went at once
    assert sleeper.now == 20.0
    # At t=20 the slots at 0 and 10 no longer constrain anything and are forgotten.
    assert asyncio.run(limiter.acquire()) == 20.0
    assert limiter.history == (20.0, 20.0)


@pytest.mark.parametrize("seed", range(5))
def test_rate_limiter_obeys_every_sliding_window(seed: int) -> None:
    rng = random.Random(seed)
    requests, per = rng.randint(1, 5), rng.choice([1.0, 2.5, 10.0])
    sleeper = RecordingSleeper()
    limiter = RateLimiter(requests, per, sleeper=sleeper)
    granted: list[float] = []

    async def caller(gap: float) -> None:
        await sleeper.sleep(gap)
        granted.append(await limiter.acquire())

    async def traffic() -> None:
        for _ in range(8):  # bursts of concurrent callers separated by random gaps
            await asyncio.gather(*(caller(rng.random() * per) for _ in range(rng.randint(1, 6))))

    asyncio.run(traffic())
    assert granted == sorted(granted)
    assert windows_ok(granted, requests, per)
    assert not windows_ok(granted + [granted[-1]] * requests, requests, per)  # the check bites


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(0, 10.0, sleeper=RecordingSleeper())


# --------------------------------------------------------------------------- polling


def test_poll_delay_first_then_growing_and_bounded() -> None:
    def delay(polls: int, elapsed: float, base: float = 15.0) -> float:
        return poll_delay(polls, base_interval=base, elapsed=elapsed, rng=Middle())

    assert delay(0, 0.0) == 15.0
    assert poll_delay(0, base_interval=15.0, elapsed=0.0, rng=Middle(), first_delay=40.0) == 40.0
    assert delay(1, 15.0) == 15.0 * (1 + 15.0 / 300.0)
    assert delay(20, 300.0) == 30.0  # doubled after twenty base intervals
    assert delay(60, 900.0) == 60.0
    assert delay(500, 100_000.0) == 60.0  # bounded at 4x
    assert delay(3, 1.0, base=0.1) == pytest.approx(0.1 * (1 + 1.0 / 2.0))
    assert poll_delay(5, base_interval=10.0, elapsed=0.0, rng=Top()) == 12.0  # +20 %
    assert poll_delay(5, base_interval=10.0, elapsed=0.0, rng=Bottom()) == 8.0  # -20 %


def test_poll_delay_seeded_sequence_stays_in_its_band() -> None:
    rng = random.Random(3)
    elapsed, delays = 0.0, []
    for polls in range(200):
        d = poll_delay(polls, base_interval=1.0, elapsed=elapsed, rng=rng)
        delays.append(d)
        elapsed += d
    assert 0.8 <= delays[0] <= 1.2
    assert all(0.8 <= d <= 4.0 * 1.2 for d in delays)
    assert max(delays[-20:]) > 3.2  # a long task ends up polled about every 4 base intervals


# --------------------------------------------------------------------------- sleepers


def test_settings_switch_selects_the_recording_sleeper() -> None:
    assert isinstance(
        sleeper_for(Settings.from_env({"MOTION_PIPELINE_NO_SLEEP": "1"})), RecordingSleeper
    )
    real = sleeper_for(Settings.from_env({}))
    assert isinstance(real, RealSleeper)
    asyncio.run(real.sleep(-1.0))  # negative waits are no waits
    assert real.monotonic() <= real.monotonic()


def test_recording_sleeper_sequential_waits_add_up() -> None:
    sleeper = RecordingSleeper(start=50.0)

    async def run() -> None:
        await sleeper.sleep(2.0)
        await sleeper.sleep(3.0)

    asyncio.run(run())
    assert sleeper.waits == [2.0, 3.0]
    assert sleeper.now == 55.0
