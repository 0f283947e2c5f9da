"""The batch's money in one set of terms for ``plan``, ``run`` and ``status``: jobs (creates),
billed seconds and cost, from the state alone.

A job counts as paid once it reached submission (``submitting`` and after, ``failed`` with a task
id): its create may have been billed. The budget counts the same jobs (:mod:`pipeline.run.budget`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.jobs import State

if TYPE_CHECKING:  # status imports this module: it must not pull in the manifest or httpx
    from pipeline.manifest.model import Budget
    from pipeline.state.rows import BriefRow


@dataclass(frozen=True)
class Money:
    jobs: int = 0
    billed_seconds: float = 0.0
    cost: float | None = 0.0
    """None when some job's mode has no price in the budget."""

    def plus(self, seconds: float, cost: float | None) -> Money:
        total = None if cost is None or self.cost is None else self.cost + cost
        return Money(self.jobs + 1, self.billed_seconds + seconds, total)

    def minus(self, other: Money) -> Money:
        cost = None if self.cost is None or other.cost is None else self.cost - other.cost
        return Money(self.jobs - other.jobs, self.billed_seconds - other.billed_seconds, cost)

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "billed_seconds": round(self.billed_seconds, 3),
            "cost": None if self.cost is None else round(self.cost, 4),
        }

    def describe(self, currency: str) -> str:
        """``3 creates, 10.50 s billed, 0.74 USD``."""
        cost = "" if self.cost is None else f", {self.cost:.2f} {currency}"
        noun = "create" if self.jobs == 1 else "creates"
        return f"{self.jobs} {noun}, {self.billed_seconds:.2f} s billed{cost}"


def reached_submission(state: State, task_id: str | None, billed_seconds: float | None) -> bool:
    """Reached submission (its create may be billed); a twin adopted for free (0 s) did not."""
    if state is State.PENDING or (state is State.FAILED and not task_id):
        return False
    return billed_seconds != 0.0


def paid(rows: Iterable[BriefRow], budget: Budget | None) -> Money:
    """Every job of the batch that reached submission (earlier runs included)."""
    return paid_columns(((r.state, r.task_id, r.billed_seconds, r.mode) for r in rows), budget)


def paid_columns(
    rows: Iterable[tuple[State, str | None, float | None, str | None]], budget: Budget | None
) -> Money:
    """:func:`paid` over bare ``(state, task_id, billed_seconds, mode)`` columns (``status``
    reads 100,000 of them without building rows); no budget: the seconds, unpriced."""
    jobs, seconds_paid, cost = 0, 0.0, 0.0
    priced = True
    for state, task_id, billed, mode in rows:
        if not reached_submission(state, task_id, billed):
            continue
        seconds = billed or 0.0
        jobs += 1
        seconds_paid += seconds
        price = None if budget is None else budget.cost(mode or "std", seconds)
        if price is None:
            priced = False
        else:
            cost += price
    return Money(jobs, seconds_paid, cost if priced else None)
