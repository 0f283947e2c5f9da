"""The sandbox's task durations that vary (``latency.spread``), and the poll times it records:
what bench/poll_schedule.py measures the poller with."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline.sandbox.profile import FaultProfile, Latency
from pipeline.sandbox.render import Rendered
from pipeline.sandbox.store import Outcome, Task, TaskSpec, TaskStore

SPEC = TaskSpec("m", "http://x/i.png", "http://x/v.mp4", "video", "std", True)


def test_spread_draws_a_log_normal_age_per_task_around_seconds() -> None:
    latency = FaultProfile.from_dict({"latency": {"seconds": 60, "spread": 0.4}}).latency
    assert latency == Latency(polls=0, seconds=60.0, spread=0.4)
    rng = random.Random(5)
    ages = sorted(a for a in (latency.draw(rng) for _ in range(400)) if a is not None)
    assert len(ages) == 400
    assert 50 < ages[200] < 70  # the median is ``seconds``
    assert ages[0] < 40 and ages[-1] > 90  # and they do spread
    assert Latency(seconds=12).draw(rng) is None  # no spread: every task takes ``seconds``


def test_spread_is_checked_like_every_other_knob() -> None:
    with pytest.raises(ValueError, match="spread"):
        FaultProfile.from_dict({"latency": {"seconds": 60, "spread": -1}})


def test_a_task_ends_at_its_own_age_and_its_polls_are_recorded() -> None:
    store = TaskStore()
    latency = Latency(seconds=5.0)
    task = Task("kie", "t1", None, {}, SPEC, created=1000.0, age=20.0)
    store.add(task)
    store.finish(task, Outcome(rendered=Rendered(Path("r.mp4"), 3.0, 1, 1, 1)), at=1001.0)
    assert store.observe(task, latency, now=1010.0) != "succeeded"  # past seconds, not its age
    assert store.observe(task, latency, now=1020.5) == "succeeded"
    assert task.polled_at == [1010.0, 1020.5]
    assert store.ended_at(task, latency) == 1020.0
