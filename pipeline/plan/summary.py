"""A plan read against the state: what a run with a given selection would do and pay now.

``plan`` prints it, ``run`` announces it before its first create, and the Python API returns it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.plan.build import Plan, PlannedJob
from pipeline.plan.document import JobEncoder
from pipeline.plan.estimate import Candidate, Estimate, Known, estimate
from pipeline.plan.money import Money, paid
from pipeline.plan.selection import expand_replace
from pipeline.state.rows import BriefRow


@dataclass(frozen=True)
class PlanSummary:
    """What ``run`` with the same selection would do now, and what it would pay."""

    plan: Plan
    estimate: Estimate
    paid: Money
    """What the batch has already paid (earlier runs)."""
    replaced: frozenset[str] = frozenset()
    """The job ids ``--replace`` named (patterns expanded)."""

    @property
    def to_pay(self) -> Money:
        s = self.estimate.sums["to_pay"]
        return Money(s.jobs, s.billed_seconds, s.cost)

    def as_dict(self) -> dict[str, Any]:
        doc = self.plan.as_dict()
        doc["jobs"] = [self._job(pj) for pj in self.plan.jobs]
        doc["totals"] = self._totals()
        return doc

    def json_chunks(self) -> Iterator[str]:
        """``json.dumps(self.as_dict())``, piece by piece: a 100,000-job plan is written one
        job at a time instead of being held whole as dicts (hundreds of MB)."""
        doc = self.plan.as_dict(jobs=False)
        doc["jobs"] = []
        doc["totals"] = self._totals()
        head, _, tail = json.dumps(doc).partition('"jobs": []')
        yield head + '"jobs": ['
        encode, verdicts = JobEncoder().encode, self.estimate.verdicts
        for i, pj in enumerate(self.plan.jobs):
            yield (", " if i else "") + encode(pj, verdicts[pj.job.id])
        yield "]" + tail

    def _job(self, pj: PlannedJob) -> dict[str, Any]:
        job = pj.as_dict()
        verdict = self.estimate.verdicts[job["id"]]
        job["estimate"] = verdict.bucket
        job["why"] = verdict.why
        return job

    def _totals(self) -> dict[str, Any]:
        totals = dict(self.plan.totals)
        totals.update(self.estimate.as_dict(self.plan.manifest.budget))
        totals["paid_before"] = self.paid.as_dict()
        # What this run would pay, under the names scripts already read.
        totals["billed_seconds"] = totals["to_pay"]["billed_seconds"]
        totals["estimated_cost"] = totals["to_pay"]["cost"]
        return totals


def summarize(
    made: Plan,
    rows: list[BriefRow],
    *,
    retry_failed: bool,
    replace: Iterable[str],
    skip_invalid: bool,
) -> PlanSummary:
    """The estimate of a plan given the state's rows (the run calls this too)."""
    ids = [pj.job.id for pj in made.jobs]
    chosen = expand_replace(replace, ids)
    known = {r.id: Known(r.state, r.key, r.task_id, r.fail_kind) for r in rows}
    before = paid(rows, made.manifest.budget)
    candidates = (
        Candidate(
            pj.job.id, pj.key, pj.action == "reject", pj.billed_seconds or 0.0, pj.estimated_cost
        )
        for pj in made.jobs
    )
    found = estimate(
        candidates,
        known,
        budget=made.manifest.budget,
        committed=(before.billed_seconds, before.cost or 0.0),
        retry_failed=retry_failed,
        replace=chosen,
        skip_invalid=skip_invalid,
    )
    return PlanSummary(made, found, before, chosen)
