"""The Python API: ``plan``, ``run`` and ``status`` for scripts and notebooks.

Each returns a typed summary with the same figures ``--json`` prints, and reads the state the
way the CLI does (a done job is free, a running one is collected, not paid again)::

    import pipeline

    estimate = pipeline.plan("manifests/demo.yaml")
    print(estimate.to_pay.billed_seconds, estimate.to_pay.cost)
    summary = pipeline.run("manifests/demo.yaml", concurrency=8)
    print(summary.exit_code, summary.paid_now.describe("USD"))
    print(pipeline.status("manifests/demo.yaml").counts)

Errors are the exceptions of :mod:`pipeline.errors` (``ConfigError`` for what the CLI exits 2
with, ``BatchStopped`` and the like for 3); a summary's ``exit_code`` is the CLI's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pipeline.jobs import State
from pipeline.settings import Settings

if TYPE_CHECKING:  # the machinery is imported by the function that needs it (a fast start-up)
    from pipeline.manifest.model import Manifest
    from pipeline.plan.money import Money
    from pipeline.plan.summary import PlanSummary
    from pipeline.progress.events import Reporter
    from pipeline.state.rows import BriefRow

ManifestLike: TypeAlias = "str | Path | Manifest"


def plan(
    manifest: ManifestLike,
    *,
    retry_failed: bool = False,
    replace: Iterable[str] = (),
    skip_invalid: bool = False,
    settings: Settings | None = None,
) -> PlanSummary:
    """Plan ``manifest`` against its state: what a ``run`` with these flags would pay now."""
    from pipeline.plan.build import make_plan
    from pipeline.plan.summary import summarize

    settings = settings or Settings.from_env()
    loaded = _loaded(manifest)
    made = make_plan(loaded, settings, prepare=True)
    return summarize(made, _brief(loaded.output_dir), retry_failed=retry_failed,
                     replace=replace, skip_invalid=skip_invalid)  # fmt: skip


def _brief(output_dir: Path) -> list[BriefRow]:
    from pipeline.state.database import state_path
    from pipeline.state.store import StateStore

    if not state_path(output_dir).exists():
        return []
    with StateStore.open(output_dir, readonly=True) as store:
        return store.brief()


def _loaded(manifest: ManifestLike, *, check_files: bool = True) -> Manifest:
    from pipeline.manifest.load import load_manifest
    from pipeline.manifest.model import Manifest

    if isinstance(manifest, Manifest):
        return manifest
    return load_manifest(manifest, check_files=check_files)


def run(
    manifest: ManifestLike,
    *,
    concurrency: int | None = None,
    max_jobs: int | None = None,
    retry_failed: bool = False,
    replace: Iterable[str] = (),
    skip_invalid: bool = False,
    settings: Settings | None = None,
    reporter: Reporter | None = None,
) -> Any:
    """Run or resume the batch; returns the :class:`pipeline.run.engine.RunSummary` (its
    ``exit_code`` is the CLI's). Spends money."""
    from pipeline.progress.events import NullReporter
    from pipeline.run.batch import run_batch  # the engine is loaded only to run
    from pipeline.run.options import RunOptions

    options = RunOptions(
        concurrency=concurrency,
        max_jobs=max_jobs,
        retry_failed=retry_failed,
        replace=frozenset(replace),
        skip_invalid=skip_invalid,
    )
    return run_batch(_loaded(manifest), settings or Settings.from_env(), options,
                     reporter or NullReporter())  # fmt: skip


@dataclass(frozen=True)
class StatusSummary:
    """Jobs per state, each job's state and reason, and the batch's money."""

    counts: dict[State, int]
    jobs: list[dict[str, Any]]
    paid: Money
    currency: str
    ran: bool
    """False when nothing has run for this manifest yet."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {s.value: n for s, n in self.counts.items()},
            "jobs": self.jobs,
            "paid": self.paid.as_dict(),
            "currency": self.currency,
        }


def status(target: str | Path, *, settings: Settings | None = None) -> StatusSummary:
    """The state of a batch, from its manifest or its output directory."""
    from pipeline.dataset.status import batch_status, status_target
    from pipeline.plan.money import Money
    from pipeline.state.database import state_path

    output_dir, currency, budget = status_target(str(target))
    if not state_path(output_dir).exists():
        return StatusSummary(dict.fromkeys(State, 0), [], Money(), currency, ran=False)
    report = batch_status(output_dir, budget)
    return StatusSummary(report.counts, report.jobs, report.paid, currency, ran=True)


def resolve(
    manifest: ManifestLike,
    job_id: str,
    *,
    adopt: str | None = None,
    resubmit: bool = False,
    abandon: bool = False,
    settings: Settings | None = None,
) -> str:
    """Settle a job that needs attention (exactly one of ``adopt``, ``resubmit``, ``abandon``);
    returns what was done, in words."""
    from pipeline.errors import ConfigError
    from pipeline.run.resolve import resolve_job

    if sum((adopt is not None, resubmit, abandon)) != 1:
        raise ConfigError("resolve takes exactly one of adopt=TASK_ID, resubmit=True, abandon=True")
    loaded = _loaded(manifest, check_files=False)
    return resolve_job(loaded, job_id, adopt=adopt, resubmit=resubmit, abandon=abandon,
                       settings=settings or Settings.from_env())  # fmt: skip


def report(manifest: ManifestLike, *, settings: Settings | None = None) -> Path:
    """Write ``report.html`` for the batch; returns its path."""
    from pipeline.dataset.report import report_batch

    loaded = _loaded(manifest, check_files=False)
    return report_batch(loaded, settings or Settings.from_env())
