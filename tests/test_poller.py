"""The poller: one slow answer delays only its own task; unreadable answers and crashes end in a
clear outcome, never a job waiting forever. The provider here is an in-process fake whose polls
are driven by the test through events (no HTTP: the scheduling is what is tested)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from pipeline.errors import BadReplyError, TransientError
from pipeline.jobs import Handle, TaskStatus
from pipeline.run.poll import task_age
from pipeline.run.poller import MAX_BAD_REPLIES, Poller, PollerCrashed, TaskTimeout, UnreadableTask
from pipeline.run.retry import CircuitBreaker, RealSleeper, RecordingSleeper
from pipeline.run.schedule import Kind

DEADLINE = 20.0  # bound on each test's waits, not a timing assertion


class FakeProvider:
    """Answers polls from a script per task; a task listed in ``hold`` answers only when
    released. Records every poll it was asked."""

    name: ClassVar[str] = "fake"
    has_batch_poll: ClassVar[bool] = False

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.asked: list[str] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.polled = asyncio.Event()

    async def poll(self, handle: Handle) -> TaskStatus:
        self.asked.append(handle.task_id)
        self.polled.set()
        gate = self.hold.get(handle.task_id)
        if gate is not None:
            await gate.wait()
        steps = self.script[handle.task_id]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, BaseException):
            raise step
        return TaskStatus(handle.task_id, step, result_url="http://x/r.mp4")

    async def poll_many(self, handles: Sequence[Handle]) -> dict[str, TaskStatus]:
        raise NotImplementedError


def poller(provider: Any, *, task_timeout: float = 60.0) -> Poller:
    return Poller(
        provider,
        interval=0.1,
        task_timeout=task_timeout,
        sleeper=RealSleeper(),
        rng=random.Random(1),
        breaker=CircuitBreaker(threshold=1000, cooldown=1.0, clock=RealSleeper().monotonic),
        backoff_cap=0.3,
    )


async def serving(p: Poller, *waits: Any) -> list[Any]:
    runner = asyncio.create_task(p.run())
    try:
        async with asyncio.timeout(DEADLINE):
            return await asyncio.gather(*waits, return_exceptions=True)
    finally:
        runner.cancel()


def test_a_poll_that_hangs_does_not_delay_the_other_tasks() -> None:
    async def main() -> None:
        fake = FakeProvider({"slow": ["succeeded"], "fast": ["running", "running", "succeeded"]})
        fake.hold["slow"] = asyncio.Event()
        p = poller(fake)
        runner = asyncio.create_task(p.run())
        try:
            async with asyncio.timeout(DEADLINE):
                slow = asyncio.ensure_future(p.wait(Handle("fake", "slow")))
                fast = await p.wait(Handle("fake", "fast"))
                assert fast.phase == "succeeded"
                assert not slow.done()  # its poll is still hanging; the other went on anyway
                assert fake.asked.count("fast") == 3 and fake.asked.count("slow") == 1
                fake.hold["slow"].set()
                assert (await slow).phase == "succeeded"
        finally:
            runner.cancel()

    asyncio.run(main())


def test_unreadable_answers_fail_the_task_after_a_streak() -> None:
    async def main() -> None:
        fake = FakeProvider(
            {
                "bad": [BadReplyError("garbage")],
                "bug": [KeyError("a parser bug")],
                "ok": [BadReplyError("once"), "running", "succeeded"],
            }
        )
        p = poller(fake)
        bad, bug, ok = await serving(p, *(p.wait(Handle("fake", t)) for t in ("bad", "bug", "ok")))
        assert isinstance(bad, UnreadableTask) and "garbage" in str(bad)
        assert isinstance(bug, UnreadableTask) and "KeyError" in str(bug)
        assert fake.asked.count("bad") == MAX_BAD_REPLIES
        assert ok.phase == "succeeded"

    asyncio.run(main())


def test_transport_errors_are_ridden_out_until_task_timeout() -> None:
    async def main() -> None:
        fake = FakeProvider({"t": [TransientError("refused")]})
        # Backoff is capped at 0.3 s; the timeout leaves a loaded event loop room for a second ask.
        p = poller(fake, task_timeout=1.5)
        (result,) = await serving(p, p.wait(Handle("fake", "t")))
        assert isinstance(result, TaskTimeout)
        assert len(fake.asked) >= 2  # asked again, not failed on the first transport error

    asyncio.run(main())


def test_recorded_waits_do_not_age_a_task_the_world_is_still_running() -> None:
    # MOTION_PIPELINE_NO_SLEEP makes every wait instant and moves a fake clock; the provider
    # still renders in real time. The fake clock passes an hour of backed-off polls in well
    # under a second, so a task_timeout read on it failed tasks that were merely still running
    # (CI, on a loaded machine). A task's age is the world's: read on the real clock.
    async def main() -> None:
        fake = FakeProvider({"t": ["running"] * 300 + ["succeeded"]})
        sleeper = RecordingSleeper()
        p = Poller(
            fake,
            interval=0.1,
            task_timeout=3600.0,
            sleeper=sleeper,
            rng=random.Random(1),
            breaker=CircuitBreaker(threshold=1000, cooldown=1.0, clock=sleeper.monotonic),
        )
        (result,) = await serving(p, p.wait(Handle("fake", "t")))
        assert sleeper.monotonic() > 3600.0  # the recorded waits did pass the timeout
        assert isinstance(result, TaskStatus) and result.phase == "succeeded", result

    asyncio.run(main())


def test_a_crashed_scheduler_fails_every_waiting_job() -> None:
    async def main() -> None:
        fake = FakeProvider({"a": ["running"], "b": ["running"]})
        p = poller(fake)

        def broken(*_a: Any, **_k: Any) -> bool:
            raise RuntimeError("scheduler bug")

        runner = asyncio.create_task(p.run())
        async with asyncio.timeout(DEADLINE):
            waits = [asyncio.ensure_future(p.wait(Handle("fake", t))) for t in ("a", "b")]
            while len(fake.asked) < 2:
                fake.polled.clear()
                await fake.polled.wait()
            p.breaker.allow = broken  # type: ignore[method-assign]
            results = await asyncio.gather(*waits, return_exceptions=True)
            with pytest.raises(RuntimeError, match="scheduler bug"):
                await runner
        assert all(isinstance(r, PollerCrashed) for r in results), results

    asyncio.run(main())


def test_a_callback_that_comes_before_its_job_waits_is_not_lost() -> None:
    # A task can end, and its callback arrive, before the create's answer is committed and
    # its job starts waiting; with callbacks on, the fallback would poll it only minutes later.
    async def main() -> None:
        fake = FakeProvider({"early": ["succeeded"], "late": ["succeeded"]})
        p = Poller(
            fake,
            interval=0.1,
            task_timeout=3600.0,
            sleeper=RealSleeper(),
            rng=random.Random(1),
            breaker=CircuitBreaker(threshold=1000, cooldown=1.0, clock=RealSleeper().monotonic),
            fallback=600.0,
        )
        assert p.hint("early") is False  # no job follows it yet: remembered, not polled
        assert fake.asked == []
        runner = asyncio.create_task(p.run())
        try:
            async with asyncio.timeout(DEADLINE):  # the fallback alone would take 600 s
                assert (await p.wait(Handle("fake", "early"))).phase == "succeeded"
            late = asyncio.ensure_future(p.wait(Handle("fake", "late")))
            await asyncio.sleep(0.3)  # no hint for it: it waits for the fallback (not polled)
            assert fake.asked == ["early"] and not late.done()
            late.cancel()
        finally:
            runner.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("age", [3600.0, 0.0])
def test_a_resumed_task_is_asked_at_once_and_teaches_only_what_was_seen(age: float) -> None:
    # Resumed an hour after its create: it may have ended in the gap between the runs, so it
    # is asked at once, not on a schedule; when it did end unseen, its end teaches the batch
    # nothing (an hour is not how long it took). Age 0 (the state's submission time unreadable,
    # or in the future after a clock was set back) is still a task nobody watched.
    async def main() -> None:
        kind = Kind("std", 5)
        seen = FakeProvider({"t": ["succeeded"]})
        p = poller(seen)
        (result,) = await serving(p, p.wait(Handle("fake", "t"), kind=kind, age=age))
        assert result.phase == "succeeded" and seen.asked == ["t"]
        assert p.durations.estimate(kind) is None

    asyncio.run(main())


def test_a_resumed_task_teaches_the_run_time_its_provider_reports() -> None:
    class Reporting(FakeProvider):
        async def poll(self, handle: Handle) -> TaskStatus:
            status = await super().poll(handle)
            return dataclasses.replace(status, ran_seconds=42.0)

    async def main() -> None:
        kind = Kind("std", 5)
        p = poller(Reporting({"t": ["succeeded"]}))
        await serving(p, p.wait(Handle("fake", "t"), kind=kind, age=3600.0))
        estimate = p.durations.estimate(kind)
        assert estimate is not None and estimate.ends == (42.0,)

    asyncio.run(main())


def test_a_resumed_task_times_out_counting_from_its_create() -> None:
    async def main() -> None:
        fake = FakeProvider({"old": ["running"], "new": ["running", "succeeded"]})
        p = poller(fake, task_timeout=600.0)
        old, new = await serving(
            p,
            p.wait(Handle("fake", "old"), age=601.0),
            p.wait(Handle("fake", "new")),
        )
        assert isinstance(old, TaskTimeout) and fake.asked.count("old") == 1
        assert isinstance(new, TaskStatus) and new.phase == "succeeded"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("stored", "age"),
    [
        (None, 0.0),
        ("", 0.0),
        ("not a time", 0.0),
        ("2026-12-02T10:00:00.000+00:00", 90.0),
        ("2026-12-02T11:00:00.000+01:00", 90.0),  # the same instant, another offset
        ("2026-12-02T10:00:00", 90.0),  # no offset: the state's times are UTC
        ("2026-12-02T10:05:00.000+00:00", 0.0),  # in the future (a clock set back)
    ],
)
def test_a_task_age_from_the_state(stored: str | None, age: float) -> None:
    now = datetime(2026, 12, 2, 10, 1, 30, tzinfo=UTC)
    assert task_age(stored, now) == pytest.approx(age)
