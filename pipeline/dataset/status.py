"""``status``: what the state of an output directory says, without changing anything.

Read-only: the state is opened read-only (a run may hold the lock meanwhile) and every done
job's video is checked on disk, so a result deleted or changed by hand is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.dataset import layout as outdir
from pipeline.errors import StateError
from pipeline.jobs import State
from pipeline.plan.money import Money, paid_columns
from pipeline.settings import Settings
from pipeline.state.database import state_path
from pipeline.state.rows import STATE_BY_VALUE
from pipeline.state.store import StateStore

if TYPE_CHECKING:
    from pipeline.manifest.model import Budget


def done_keys(output_dir: Path) -> list[str]:
    """Keys already generated in ``output_dir`` (for ``plan``'s ``done`` action)."""
    if not state_path(output_dir).exists():
        return []
    with StateStore.open(output_dir, readonly=True) as store:
        return [row.key for row in store.rows([State.DONE])]


def status_target(target: str) -> tuple[Path, str, Budget | None]:
    """``status`` of a manifest or an output directory: where, and the money's terms (no
    budget for a directory: its money is counted in seconds, unpriced)."""
    path = Path(target)
    if path.is_dir():
        return path, "USD", None
    # The manifest machinery (YAML, the schema, the providers) only when a manifest is named:
    # `status DIR` of a 100,000-job batch must stay under a second.
    from pipeline.manifest.load import load_manifest

    manifest = load_manifest(path, check_files=False)
    return manifest.output_dir, manifest.budget.currency, manifest.budget


def output_dir_of(target: str, settings: Settings) -> Path:
    """``status``/``report`` accept the manifest or its output directory."""
    from pipeline.manifest.load import load_manifest

    path = Path(target)
    if path.is_dir():
        return path
    return load_manifest(path, check_files=False).output_dir


@dataclass(frozen=True)
class StatusReport:
    counts: dict[State, int]
    jobs: list[dict[str, Any]]
    paid: Money = field(default_factory=Money)
    """What the batch has paid (every job that reached submission), at the budget's prices."""

    def as_dict(self) -> dict[str, Any]:
        return {"counts": {s.value: n for s, n in self.counts.items()}, "jobs": self.jobs}


def batch_status(output_dir: Path, budget: Budget | None = None) -> StatusReport:
    """Counts, each job's line and the money, from one read of the state (100,000 jobs: no
    per-row objects), and every done job's video checked on disk."""
    if not state_path(output_dir).exists():
        raise StateError(f"no state in {output_dir}: nothing has run there yet")
    with StateStore.open(output_dir, readonly=True) as store:
        # A done job whose video is gone or changed is reported (run collects it again).
        check = outdir.check_results(output_dir, store.outputs())
        rows = store.status_rows()
    problems = {d.job_id: d.why for d in check.damaged}
    counts = dict.fromkeys(State, 0)
    jobs: list[dict[str, Any]] = []
    money: list[tuple[State, str | None, float | None, str | None]] = []
    for job_id, value, task_id, error, output, _kind, billed, mode in rows:
        state = STATE_BY_VALUE[value]
        counts[state] += 1
        jobs.append({"id": job_id, "state": value, "task_id": task_id, "error": error,
                     "output": output, "output_problem": problems.get(job_id)})  # fmt: skip
        money.append((state, task_id, billed, mode))
    return StatusReport(counts, jobs, paid_columns(money, budget))
