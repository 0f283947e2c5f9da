"""The polling policy (pipeline.run.schedule) as the pure function it is: times are numbers, no
clock, no sleeps. A small simulation drives it over scripted task durations to check what it is
for: few polls per task, each task's end seen soon after it happens."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pipeline.run.schedule import (
    Durations,
    Estimate,
    Kind,
    Policy,
    ended_after,
    fraction,
    next_poll,
)

POLICY = Policy(interval=1.0, max_gap=60.0, timeout=3600.0)


def simulate(policy: Policy, durations: list[float], *, waves: int = 1) -> list[tuple[int, float]]:
    """Polls and end->poll lateness per task: tasks run one after another per slot, each new
    task planned with what the finished ones taught (as the poller does)."""
    learned = Durations()
    kind = Kind("std", 5)
    out: list[tuple[int, float]] = []
    for _ in range(waves):
        for duration in durations:
            start, now, polls, last_running = 0.0, 0.0, [], None
            while True:
                due = next_poll(policy, now=now, submitted_at=start, polls=polls,
                                estimate=learned.estimate(kind))  # fmt: skip
                assert due >= now
                polls.append(due)
                now = due
                if now - start >= duration:
                    break
                last_running = now
            learned.learn(kind, ended_after(submitted_at=start, last_running=last_running,
                                            done_at=now, resolution=policy.resolution(now - start)))  # fmt: skip
            out.append((len(polls), now - (start + duration)))
    return out


# --------------------------------------------------------------------------- the bounds


def test_the_first_poll_never_comes_before_the_finest_interval() -> None:
    assert next_poll(POLICY, now=10.0, submitted_at=10.0) == 11.0
    est = Estimate.of([0.2, 0.3])  # tasks that end at once: still not before one interval
    assert next_poll(POLICY, now=10.0, submitted_at=10.0, estimate=est) == 11.0


def test_two_polls_of_a_task_are_never_closer_than_the_interval() -> None:
    est = Estimate.of([12.0])
    due = next_poll(POLICY, now=12.2, submitted_at=0.0, polls=[12.1], estimate=est)
    assert due == pytest.approx(13.1)  # just overdue, it wants 12.3: not before 12.1 + 1


def test_no_gap_is_longer_than_max_gap() -> None:
    est = Estimate.of([3000.0])
    assert next_poll(POLICY, now=0.0, submitted_at=0.0, estimate=est) == 60.0
    assert next_poll(POLICY, now=500.0, submitted_at=0.0, polls=[500.0], estimate=est) == 560.0


def test_a_task_is_polled_when_it_reaches_task_timeout() -> None:
    policy = Policy(interval=1.0, max_gap=60.0, timeout=100.0)
    est = Estimate.of([500.0])
    # Far from its estimate, but the timeout comes first: the poll lands on it, so it fires.
    assert next_poll(policy, now=80.0, submitted_at=0.0, polls=[80.0], estimate=est) == 100.0
    # Within one interval of it, the finest interval still holds.
    assert next_poll(policy, now=99.5, submitted_at=0.0, polls=[99.5], estimate=est) == 100.5


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        Policy(interval=0.0, max_gap=10.0, timeout=10.0)
    with pytest.raises(ValueError, match="max gap"):
        Policy(interval=5.0, max_gap=1.0, timeout=10.0)
    with pytest.raises(ValueError, match="quantile"):
        Policy(interval=1.0, max_gap=10.0, timeout=10.0, quantile=1.0)


# --------------------------------------------------------------------------- the targets


def test_before_anything_ended_the_gap_grows_with_age() -> None:
    gaps, now, polls = [], 0.0, []
    for _ in range(8):
        due = next_poll(POLICY, now=now, submitted_at=0.0, polls=polls)
        gaps.append(due - now)
        polls.append(due)
        now = due
    assert gaps[0] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(gaps))
    assert gaps[-1] > 4 * gaps[0]


def test_a_learned_end_is_where_the_next_poll_goes_a_moment_late() -> None:
    est = Estimate.of([12.0, 12.0, 12.0])
    # Half an interval after the end: a poll a moment late finds the task done at once.
    assert next_poll(POLICY, now=0.0, submitted_at=0.0, estimate=est) == 12.5
    on_time = Policy(interval=1.0, max_gap=60.0, timeout=3600.0, lag=0.0)
    assert next_poll(on_time, now=0.0, submitted_at=0.0, estimate=est) == 12.0


def test_the_next_poll_aims_low_among_the_ends_still_ahead() -> None:
    est = Estimate.of([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0])
    # Before any end is due: a jump to the lower quartile of them (and the lag).
    assert next_poll(POLICY, now=0.0, submitted_at=0.0, estimate=est) == 30.5
    # Among them: gaps of at most a tenth of the task's age.
    assert next_poll(POLICY, now=30.0, submitted_at=0.0, polls=[30.0], estimate=est) == 33.0
    median = Policy(interval=1.0, max_gap=60.0, timeout=3600.0, quantile=0.5, precision=1.0)
    assert next_poll(median, now=30.0, submitted_at=0.0, polls=[30.0], estimate=est) == 60.0


def test_past_every_learned_end_the_task_backs_off_with_how_late_it_is() -> None:
    est = Estimate.of([10.0])
    soon = next_poll(POLICY, now=10.5, submitted_at=0.0, polls=[10.5], estimate=est)
    late = next_poll(POLICY, now=50.0, submitted_at=0.0, polls=[50.0], estimate=est)
    assert soon == 11.5  # just overdue: the finest interval
    assert late == 70.0  # 40 s overdue: a 20 s gap


def test_provider_progress_beats_the_batch_history() -> None:
    est = Estimate.of([100.0])
    # 20 s in and half done: it should end at 40 s, not at the batch's 100 s.
    assert next_poll(POLICY, now=20.0, submitted_at=0.0, polls=[20.0], estimate=est,
                     progress=0.5) == 40.0  # fmt: skip
    assert next_poll(POLICY, now=20.0, submitted_at=0.0, polls=[20.0], progress=1.0) == 21.0


def test_progress_in_percent_or_nonsense() -> None:
    assert fraction(50) == 0.5 and fraction(0.25) == 0.25 and fraction(250) == 1.0
    assert fraction(None) is None and fraction(0) is None and fraction(math.nan) is None


def test_fixed_durations_cost_about_two_polls_and_are_seen_within_an_interval() -> None:
    results = simulate(POLICY, [12.0] * 20, waves=5)
    steady = results[20:]  # after the first wave, which had nothing to learn from
    assert sum(p for p, _ in steady) / len(steady) <= 2.5
    assert max(late for _, late in steady) <= POLICY.interval + 1e-9
    # The very first task had nothing to go on: more polls, but bounded.
    assert results[0][0] <= 10


def test_log_normal_durations_are_seen_sooner_than_a_fixed_rhythm_would_at_fewer_polls() -> None:
    rng = random.Random(3)
    durations = [60.0 * math.exp(rng.gauss(0.0, 0.4)) for _ in range(60)]
    results = simulate(POLICY, durations, waves=3)[60:]
    polls = sum(p for p, _ in results) / len(results)
    lateness = sorted(late for _, late in results)
    assert polls < 10  # a 1 s rhythm would spend ~60 polls per task
    assert lateness[len(lateness) // 2] < 10


def test_the_estimate_does_not_drift_when_every_end_is_seen_right_away() -> None:
    # Ends learned from a task seen ended at its first poll are taken within one interval
    # before that poll, so a batch of 12 s tasks keeps aiming at 12 s, not ever later.
    results = simulate(POLICY, [12.0] * 50, waves=8)
    assert max(late for _, late in results[-50:]) <= POLICY.interval + 1e-9


# --------------------------------------------------------------------------- what is learned


def test_ended_after_takes_the_middle_of_the_bracket() -> None:
    assert ended_after(submitted_at=100.0, last_running=110.0, done_at=111.0,
                       resolution=1.0) == 10.5  # fmt: skip
    # Seen ended at the first poll: within one interval before it.
    assert ended_after(submitted_at=0.0, last_running=None, done_at=12.0, resolution=1.0) == 11.5
    # A poll a callback asked for: the end is the poll.
    assert ended_after(submitted_at=0.0, last_running=3.0, done_at=12.0, resolution=0.0) == 12.0
    # A long gap since the last running answer: the middle of it.
    assert ended_after(submitted_at=0.0, last_running=2.0, done_at=30.0, resolution=1.0) == 16.0


def test_the_providers_own_run_time_wins_inside_the_bracket_the_polls_saw() -> None:
    # Kie said 10.2 s: better than the middle (10.5) of the 10..11 bracket.
    assert ended_after(submitted_at=100.0, last_running=110.0, done_at=111.0, resolution=1.0,
                       reported=10.2) == pytest.approx(10.2)  # fmt: skip
    # Seen ended at the first poll: no need to guess within a resolution.
    assert ended_after(submitted_at=0.0, last_running=None, done_at=12.0, resolution=1.0,
                       reported=7.0) == 7.0  # fmt: skip
    # A figure the polls contradict (clock skew, a hostile reply) is held to what they saw.
    assert ended_after(submitted_at=0.0, last_running=10.0, done_at=11.0, resolution=1.0,
                       reported=3.0) == 10.0  # fmt: skip
    assert ended_after(submitted_at=0.0, last_running=10.0, done_at=11.0, resolution=1.0,
                       reported=1e12) == 11.0  # fmt: skip
    assert ended_after(submitted_at=0.0, last_running=None, done_at=11.0, resolution=1.0,
                       reported=-5.0) == 0.0  # fmt: skip


def test_durations_by_kind_and_borrowed_scaled_by_billed_seconds() -> None:
    learned = Durations()
    assert learned.estimate(Kind("std", 5)) is None
    learned.learn(Kind.of("std", 5.2), 50.0)
    assert learned.estimate(Kind("std", 5)) == Estimate((50.0,))
    # Another kind has nothing of its own: it borrows, scaled by billed seconds.
    assert learned.estimate(Kind("pro", 10)) == Estimate((100.0,))
    learned.learn(Kind("pro", 10), 80.0)
    assert learned.estimate(Kind("pro", 10)) == Estimate((80.0,))


def test_durations_keep_only_the_latest_ends() -> None:
    learned = Durations(keep=3)
    for seconds in (1.0, 2.0, 3.0, 4.0, 5.0):
        learned.learn(Kind("std", 5), seconds)
    assert learned.estimate(Kind("std", 5)) == Estimate((3.0, 4.0, 5.0))
    assert learned.learned == 5
