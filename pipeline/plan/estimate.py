"""What ``run`` would pay now: every job of a plan sorted into what it would cost this run.

A pure function of the plan, what the state says about each job, and the selection a run would
be given (``--retry-failed``, ``--replace``, ``--skip-invalid``); ``plan`` shows it and ``run``
announces it before its first create. The rules mirror the runner's:

=================  ======================================================================
to_pay             a create this run would send (new, pending, replaced, retried)
already_paid       a task to collect only (submitting, running, downloading; a failed task
                   that ``--retry-failed`` asks about again)
free               done already, or the same generation (key) as another job: adopted
skipped            rejected inputs, failed without ``--retry-failed``, needs attention, or
                   waiting for a same-key job that needs attention
refused            paid, and its inputs or settings changed since: the run stops (exit 2)
                   unless ``--replace`` names it
=================  ======================================================================

Seconds and cost are the provider's bill: the prepared clip's seconds (after trims).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pipeline.jobs import RECHECK, State
from pipeline.manifest.model import Budget

Bucket = Literal["to_pay", "already_paid", "free", "skipped", "refused"]
BUCKETS: tuple[Bucket, ...] = ("to_pay", "already_paid", "free", "skipped", "refused")
_IN_FLIGHT = frozenset({State.SUBMITTING, State.RUNNING, State.DOWNLOADING})


@dataclass(frozen=True)
class Known:
    """What the state says about one job (absent: never seen, so pending)."""

    state: State
    key: str
    task_id: str | None = None
    fail_kind: str | None = None


class Candidate(NamedTuple):
    """One planned job, as the estimate needs it (a NamedTuple: there is one per job, and a
    frozen dataclass's __init__ costs several times more)."""

    id: str
    key: str
    rejected: bool
    seconds: float
    cost: float | None


@dataclass(frozen=True)
class Verdict:
    bucket: Bucket
    why: str


@dataclass
class Sum:
    jobs: int = 0
    billed_seconds: float = 0.0
    cost: float | None = 0.0

    def add(self, seconds: float, cost: float | None) -> None:
        self.jobs += 1
        self.billed_seconds += seconds
        self.cost = None if cost is None or self.cost is None else self.cost + cost

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "billed_seconds": round(self.billed_seconds, 3),
            "cost": None if self.cost is None else round(self.cost, 4),
        }


@dataclass(frozen=True)
class Fit:
    """How much of what is to pay fits the budget, given what is already committed."""

    committed_seconds: float
    committed_cost: float
    fits_jobs: int
    exceeded: bool

    def as_dict(self, budget: Budget) -> dict[str, Any]:
        return {
            "max_seconds": budget.max_seconds,
            "max_cost": budget.max_cost,
            "committed_seconds": round(self.committed_seconds, 3),
            "committed_cost": round(self.committed_cost, 4),
            "fits_jobs": self.fits_jobs,
            "exceeded": self.exceeded,
        }


@dataclass(frozen=True)
class Estimate:
    verdicts: Mapping[str, Verdict]
    sums: Mapping[Bucket, Sum]
    fit: Fit
    runnable: bool
    """False when ``run`` would refuse the batch (rejected inputs without --skip-invalid, or a
    paid job changed without --replace)."""
    blockers: tuple[str, ...] = field(default=())

    def as_dict(self, budget: Budget) -> dict[str, Any]:
        out: dict[str, Any] = {b: self.sums[b].as_dict() for b in BUCKETS}
        out["budget"] = self.fit.as_dict(budget)
        out["runnable"] = self.runnable
        out["blockers"] = list(self.blockers)
        return out


def estimate(
    jobs: Iterable[Candidate],
    known: Mapping[str, Known],
    *,
    budget: Budget,
    committed: tuple[float, float],
    retry_failed: bool = False,
    replace: frozenset[str] = frozenset(),
    skip_invalid: bool = False,
) -> Estimate:
    """Sort every job into a bucket, in manifest order (the order the run submits in)."""
    verdicts: dict[str, Verdict] = {}
    sums = {b: Sum() for b in BUCKETS}
    paying_keys: dict[str, str] = {}  # key -> the job of this run that pays for it
    done_keys: dict[str, str] = {}
    stuck_keys: dict[str, str] = {}
    for job_id, row in known.items():
        if row.state is State.DONE:
            done_keys.setdefault(row.key, job_id)
        elif row.state in _IN_FLIGHT:
            paying_keys.setdefault(row.key, job_id)
        elif row.state is State.NEEDS_ATTENTION:
            stuck_keys.setdefault(row.key, job_id)
    blockers: list[str] = []
    seconds_left, cost_left = _left(budget, committed)
    fits = 0
    over = False
    for job in jobs:
        verdict = _one(job, known.get(job.id), retry_failed=retry_failed,
                       replaced=job.id in replace)  # fmt: skip
        if verdict.bucket == "to_pay":
            twin = done_keys.get(job.key) or paying_keys.get(job.key)
            if twin is not None and twin != job.id:
                verdict = Verdict("free", f"the same generation as job {twin}")
            elif job.key in stuck_keys and stuck_keys[job.key] != job.id:
                verdict = Verdict(
                    "skipped", f"waits: job {stuck_keys[job.key]}, the same generation, needs "
                    "attention",
                )  # fmt: skip
            else:
                paying_keys[job.key] = job.id
        if verdict.bucket == "skipped" and job.rejected and not skip_invalid:
            blockers.append(f"job {job.id}: inputs rejected")
        if verdict.bucket == "refused":
            blockers.append(f"job {job.id}: {verdict.why}")
        verdicts[job.id] = verdict
        seconds = job.seconds if verdict.bucket in ("to_pay", "already_paid") else 0.0
        cost = job.cost if verdict.bucket in ("to_pay", "already_paid") else 0.0
        sums[verdict.bucket].add(seconds, cost)
        if verdict.bucket == "to_pay" and not over:
            seconds_left -= seconds
            cost_left -= cost or 0.0
            if seconds_left < -1e-9 or cost_left < -1e-9:
                over = True
            else:
                fits += 1
    fit = Fit(committed[0], committed[1], fits, over)
    return Estimate(verdicts, sums, fit, not blockers, tuple(blockers))


# The verdicts whose reason is fixed, made once: a 100,000-job plan shares them.
_REJECTED = Verdict("skipped", "inputs rejected")
_NEW = Verdict("to_pay", "new")
_PENDING = Verdict("to_pay", "pending")
_CHANGED = Verdict("to_pay", "inputs or settings changed")
_CHANGED_REPLACED = Verdict("to_pay", "inputs or settings changed (--replace)")
_DONE = Verdict("free", "done")
_STUCK = Verdict("skipped", "needs attention (resolve it first)")
_FAILED = Verdict("skipped", "failed (--retry-failed to try again)")
_RECHECKED = Verdict("already_paid", "its task is asked about again before paying again")
_RETRIED = Verdict("to_pay", "failed, retried (--retry-failed)")


def _one(job: Candidate, row: Known | None, *, retry_failed: bool, replaced: bool) -> Verdict:
    if job.rejected:
        return _REJECTED
    if row is None:
        return _NEW
    if row.state is State.PENDING:
        return _PENDING
    changed = row.key != job.key
    if changed:
        unpaid = row.state is State.FAILED and not row.task_id
        if unpaid or replaced:
            return _CHANGED_REPLACED if replaced else _CHANGED
        return Verdict("refused", f"changed after it was paid (state {row.state.value}); "
                                  "rename it or pass --replace")  # fmt: skip
    if row.state is State.DONE:
        return _DONE
    if row.state in _IN_FLIGHT:
        return Verdict("already_paid", f"{row.state.value}: collected, not paid again")
    if row.state is State.NEEDS_ATTENTION:
        return _STUCK
    # failed
    if not retry_failed:
        return _FAILED
    if row.task_id and row.fail_kind in RECHECK:
        return _RECHECKED
    return _RETRIED


def _left(budget: Budget, committed: tuple[float, float]) -> tuple[float, float]:
    inf = float("inf")
    seconds = inf if budget.max_seconds is None else budget.max_seconds - committed[0]
    cost = inf if budget.max_cost is None else budget.max_cost - committed[1]
    return seconds, cost
