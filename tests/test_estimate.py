"""The estimate sorts jobs the way the runner will treat them (pure, from plan and state)."""

from __future__ import annotations

from pipeline.jobs import State
from pipeline.manifest.model import Budget
from pipeline.plan.estimate import Candidate, Known, estimate


def cand(i: str, key: str = "", seconds: float = 5.0, *, rejected: bool = False) -> Candidate:
    return Candidate(i, key or f"k-{i}", rejected, seconds, seconds * 0.1)


def test_buckets_follow_the_runner() -> None:
    jobs = [
        cand("new"),
        cand("twin", key="k-new"),  # same key as "new": adopted, free
        cand("done"),
        cand("running"),
        cand("failed"),
        cand("late"),
        cand("stuck"),
        cand("bad", rejected=True),
        cand("edited", key="k-edited-2"),
    ]
    known = {
        "done": Known(State.DONE, "k-done"),
        "running": Known(State.RUNNING, "k-running", "t1"),
        "failed": Known(State.FAILED, "k-failed", "t2", "task"),
        "late": Known(State.FAILED, "k-late", "t3", "timeout"),
        "stuck": Known(State.NEEDS_ATTENTION, "k-stuck"),
        "edited": Known(State.DONE, "k-edited"),
    }
    plain = estimate(jobs, known, budget=Budget(), committed=(0, 0))
    buckets = {i: v.bucket for i, v in plain.verdicts.items()}
    assert buckets == {
        "new": "to_pay", "twin": "free", "done": "free", "running": "already_paid",
        "failed": "skipped", "late": "skipped", "stuck": "skipped", "bad": "skipped",
        "edited": "refused",
    }  # fmt: skip
    assert plain.sums["to_pay"].as_dict() == {"jobs": 1, "billed_seconds": 5.0, "cost": 0.5}
    assert not plain.runnable and len(plain.blockers) == 2
    retry = estimate(
        jobs, known, budget=Budget(), committed=(0, 0), retry_failed=True,
        replace=frozenset({"edited"}), skip_invalid=True,
    )  # fmt: skip
    buckets = {i: v.bucket for i, v in retry.verdicts.items()}
    assert buckets["failed"] == "to_pay" and buckets["late"] == "already_paid"
    assert buckets["edited"] == "to_pay" and retry.runnable
    assert retry.sums["to_pay"].jobs == 3


def test_a_matrix_of_shared_keys_pays_once_per_key() -> None:
    jobs = [cand(f"c{i}", key=f"k{i % 100}") for i in range(10_000)]
    est = estimate(jobs, {}, budget=Budget(), committed=(0, 0))
    assert est.sums["to_pay"].jobs == 100 and est.sums["free"].jobs == 9_900
    assert est.sums["to_pay"].billed_seconds == 500.0


def test_budget_says_how_many_jobs_fit() -> None:
    jobs = [cand(f"j{i}") for i in range(5)]
    est = estimate(jobs, {}, budget=Budget(max_seconds=22), committed=(4.0, 0))
    assert est.fit.fits_jobs == 3 and est.fit.exceeded  # 4 + 3 * 5 = 19 <= 22 < 24
    assert estimate(jobs, {}, budget=Budget(max_seconds=25), committed=(0, 0)).fit.exceeded is False
