"""The batch's spending cap: seconds and cost committed to creates, checked and reserved at once.

Every job that reached submission counts (``submitting``, ``running``, ``downloading``,
``done``, ``needs_attention``, and ``failed`` with a task id): its create may have been billed.
:meth:`Spending.reserve` checks the cap and books the job in one synchronous step, with no
``await`` between the two, so jobs running concurrently on the event loop cannot all pass the
check before any of them is counted (how a concurrent batch once billed well over its cap).
A reservation whose create certainly did not happen is given back with :meth:`release`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.manifest.model import Budget


@dataclass(frozen=True)
class Refusal:
    """Why one more job does not fit: for the stop message (exit 3)."""

    job_id: str
    text: str


class Spending:
    """Seconds and cost booked against the manifest's budget, batch-wide (earlier runs included)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.seconds = 0.0
        """Billed seconds of every job that reached submission, this run and earlier ones."""
        self.cost = 0.0
        self._booked: dict[str, tuple[float, float]] = {}
        self._mine: set[str] = set()
        """Jobs this run booked (not earlier runs'): what this run paid."""

    def count(self, job_id: str, seconds: float, cost: float) -> None:
        """Book a job an earlier run submitted (no check: it is already spent or on its way)."""
        self.release(job_id)
        self._booked[job_id] = (seconds, cost)
        self.seconds += seconds
        self.cost += cost

    def reserve(self, job_id: str, seconds: float, cost: float) -> Refusal | None:
        """Book a job's seconds and cost if both fit under the caps; else say why not."""
        budget = self.budget
        if budget.max_seconds is not None and self.seconds + seconds > budget.max_seconds + 1e-9:
            left = max(0.0, budget.max_seconds - self.seconds)
            return Refusal(
                job_id,
                f"budget reached: {self.seconds:.2f} of {budget.max_seconds:g} s committed, "
                f"{left:.2f} s left, job {job_id} needs {seconds:.2f} s",
            )
        if budget.max_cost is not None and self.cost + cost > budget.max_cost + 1e-9:
            left = max(0.0, budget.max_cost - self.cost)
            unit = budget.currency
            return Refusal(
                job_id,
                f"budget reached: {self.cost:.2f} of {budget.max_cost:g} {unit} committed, "
                f"{left:.2f} {unit} left, job {job_id} needs {cost:.2f} {unit}",
            )
        self._booked[job_id] = (seconds, cost)
        self._mine.add(job_id)
        self.seconds += seconds
        self.cost += cost
        return None

    def release(self, job_id: str) -> None:
        """The job's create certainly did not happen: give its reservation back (idempotent)."""
        seconds, cost = self._booked.pop(job_id, (0.0, 0.0))
        self._mine.discard(job_id)
        self.seconds -= seconds
        self.cost -= cost

    def booked(self, job_id: str) -> bool:
        return job_id in self._booked

    def this_run(self) -> tuple[int, float, float]:
        """Creates this run sent (or may have: ambiguous ones count), their seconds and cost."""
        booked = [self._booked[j] for j in self._mine]
        return len(booked), sum(s for s, _ in booked), sum(c for _, c in booked)
