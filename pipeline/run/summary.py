"""What a run did: counts, its exit code, and its money apart from the batch's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.jobs import State
from pipeline.plan.money import Money, paid

if TYPE_CHECKING:
    from pipeline.manifest.model import Budget
    from pipeline.plan.build import PlannedJob
    from pipeline.run.options import RunOptions
    from pipeline.state.store import StateStore


@dataclass
class RunSummary:
    counts: dict[State, int]
    exit_code: int
    stop_reason: str | None = None
    seconds_billed: float = 0.0
    """Seconds billed for the manifest's done jobs (this run and earlier ones)."""
    wall_seconds: float = 0.0
    http_requests: int = 0
    submitted: int = 0
    occupancy: float | None = None
    """Share of provider slots in use while jobs were waiting for one (None: never saturated)."""
    paid_now: Money = field(default_factory=Money)
    """What this run paid: its creates (ambiguous ones included), their seconds and cost."""
    batch_paid: Money = field(default_factory=Money)
    """What the batch has paid, this run and every earlier one."""
    to_pay: Money = field(default_factory=Money)
    """What this run expected to pay when it started (the plan's estimate)."""
    currency: str = "USD"
    extra: dict[str, Any] = field(default_factory=dict)


def exit_code(counts: dict[State, int], *, stopped: int, unfinished: bool) -> int:
    """The contract's exit code: the stop's, else 1 when a job failed, needs attention or is
    left unfinished, else 0."""
    if stopped:
        return stopped
    if counts[State.FAILED] or counts[State.NEEDS_ATTENTION] or unfinished:
        return 1
    return 0


def committed(
    store: StateStore, planned: Mapping[str, PlannedJob], budget: Budget
) -> Iterator[tuple[str, float, float]]:
    """(job, seconds, cost) of every job earlier runs submitted: spent, or on its way."""
    for row in store.brief():
        if row.state is State.PENDING or (row.state is State.FAILED and not row.task_id):
            continue
        seconds = row.billed_seconds or 0.0
        pj = planned.get(row.id)
        mode = pj.job.settings.mode if pj else row.mode or "std"
        yield row.id, seconds, budget.cost(mode, seconds) or 0.0


def summarize_run(
    store: StateStore,
    planned: Mapping[str, PlannedJob],
    budget: Budget,
    options: RunOptions,
    *,
    stopped: int,
    stop_reason: str | None,
    wall_seconds: float,
    http_requests: int,
    submitted: int,
    occupancy: float | None,
    this_run: tuple[int, float, float],
) -> RunSummary:
    """The run's summary from the state it leaves: counts, exit code, its money and the batch's."""
    counts = store.counts()
    brief = store.brief()
    seconds = sum((r.billed_seconds or 0.0) for r in brief
                  if r.state is State.DONE and r.id in planned)  # fmt: skip
    creates, now_seconds, now_cost = this_run
    priced = bool(budget.price_per_second)
    return RunSummary(
        counts=counts,
        exit_code=exit_code(
            counts, stopped=stopped, unfinished=_unfinished(store, planned, options)
        ),
        stop_reason=stop_reason,
        seconds_billed=seconds,
        wall_seconds=wall_seconds,
        http_requests=http_requests,
        submitted=submitted,
        occupancy=occupancy,
        paid_now=Money(creates, now_seconds, now_cost if priced else None),
        batch_paid=paid(brief, budget),
        currency=budget.currency,
    )


def _unfinished(store: StateStore, planned: Mapping[str, PlannedJob], options: RunOptions) -> bool:
    """A job is not done yet, though nothing stopped the run (exit 1, not 0)."""
    in_flight = [State.SUBMITTING, State.RUNNING, State.DOWNLOADING]
    if store.summaries(in_flight):  # a paid task left to collect, orphans included
        return True
    if options.max_jobs is not None:  # --max-jobs leaves the rest pending on purpose
        return False
    return any(s.id in planned for s in store.summaries([State.PENDING]))
