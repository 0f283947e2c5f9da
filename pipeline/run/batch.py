"""The core functions behind ``run``, ``status`` and ``resolve``: one per command.

Order matters for money: the run lock is taken before any HTTP request (a second ``run`` exits 4
at once), keys are checked and every input is planned before anything is sent (exit 2 spends
nothing), and a job whose key changed after it was paid for is refused unless replaced.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.dataset import layout as outdir
from pipeline.dataset.lockfile import write_lock
from pipeline.dataset.metadata import write_sidecar
from pipeline.errors import (
    ConfigError,
    InputError,
)
from pipeline.jobs import FailKind, State
from pipeline.manifest.model import Manifest
from pipeline.media.tools import find_tools
from pipeline.plan.build import Plan, PlannedJob, make_plan
from pipeline.plan.selection import Problem, problems
from pipeline.plan.summary import summarize
from pipeline.progress.events import BatchFinished, BatchStarted, Notice, Reporter
from pipeline.run.disk import DiskGuard
from pipeline.run.engine import Engine
from pipeline.run.log import close_run_log, open_run_log
from pipeline.run.options import RunOptions
from pipeline.run.session import credentials_for, run_secrets
from pipeline.run.summary import RunSummary
from pipeline.settings import Settings
from pipeline.state.lock import RunLock
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore


def job_spec(pj: PlannedJob) -> dict[str, Any]:
    """What the state keeps about a job: enough for status, resolve and report."""
    job = pj.job
    return {
        "image": str(job.image),
        "video": str(job.video),
        "image_sha256": pj.image_sha256,
        "video_sha256": pj.video_sha256,
        "settings": job.settings.as_dict(),
        "provider": job.provider,
        "model": job.model,
        "steps": list(pj.steps),
        "billed_seconds": pj.billed_seconds,
        "line": job.line,
    }


def run_batch(
    manifest: Manifest, settings: Settings, options: RunOptions, reporter: Reporter
) -> RunSummary:
    output_dir = manifest.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    with RunLock.acquire(output_dir):
        credentials = credentials_for(manifest.provider, settings)
        secrets = run_secrets(manifest, credentials, settings)  # checks the AWS chain: exit 2
        tools = find_tools(settings)
        plan = make_plan(manifest, settings, tools=tools, prepare=True)
        rejected = _rejected(plan, skip=options.skip_invalid)
        found = outdir.claim(output_dir, manifest.name)
        with StateStore.open(output_dir) as store:
            restored = outdir.apply(store, found, manifest.name)
            # The same estimate `plan` shows, from the state as it is: also expands --replace.
            expected = summarize(
                plan,
                store.brief(),
                retry_failed=options.retry_failed,
                replace=options.replace,
                skip_invalid=options.skip_invalid,
            )
            options = replace(options, replace=expected.replaced)
            _sync(store, plan, options)
            _fail_rejected(store, plan, rejected)
            write_lock(plan)  # what regenerates or audits the dataset, before anything is sent
            notes = _check_results(store, output_dir, {pj.job.id for pj in plan.jobs})
            if restored:
                notes.insert(
                    0, f"the state was lost: rebuilt {restored} job(s) from metadata.jsonl"
                )
            log = open_run_log(output_dir, secrets)
            try:
                reporter.emit(BatchStarted(total=len(plan.jobs), counts=store.counts()))
                for note in notes:
                    reporter.emit(Notice(note, "warning"))
                    log.warning("%s", note)
                for problem in rejected:
                    text = f"skipped, inputs rejected: {problem.describe()}"
                    reporter.emit(Notice(text, "warning"))
                    log.warning("%s", text)
                currency = manifest.budget.currency
                will_pay = f"this run will pay: {expected.to_pay.describe(currency)}"
                if expected.estimate.fit.exceeded:
                    will_pay += (
                        f"; only {expected.estimate.fit.fits_jobs} of "
                        f"{expected.to_pay.jobs} fit the budget"
                    )
                reporter.emit(Notice(will_pay, "info"))
                log.info("%s", will_pay)
                log.info(
                    "run %s: %d jobs, provider %s",
                    manifest.name,
                    len(plan.jobs),
                    manifest.provider.name,
                )
                disk = DiskGuard(
                    output_dir, floor=settings.min_free_bytes, reserve=settings.reserve_bytes
                )
                disk.allocate()
                engine = Engine(
                    manifest, plan, store, settings, options, reporter, credentials, tools, log,
                    disk,
                )  # fmt: skip
                try:
                    summary = asyncio.run(engine.run())
                finally:
                    disk.remove()
                summary = replace(summary, to_pay=expected.to_pay)
                if rejected and summary.exit_code == 0:
                    summary = replace(summary, exit_code=1)  # --skip-invalid: not every job ran
                reporter.emit(
                    BatchFinished(
                        counts=summary.counts,
                        seconds_billed=summary.seconds_billed,
                        wall_seconds=summary.wall_seconds,
                    )
                )
                stopped = f" (stopped: {summary.stop_reason})" if summary.stop_reason else ""
                log.info(
                    "run finished: exit %d%s; this run paid %s; the batch %s",
                    summary.exit_code, stopped, summary.paid_now.describe(currency),
                    summary.batch_paid.describe(currency),
                )  # fmt: skip
            finally:
                close_run_log(log)
                reporter.close()
    return summary


def _rejected(plan: Plan, *, skip: bool) -> list[Problem]:
    """The plan's rejections; without ``--skip-invalid`` they stop the run before anything."""
    found = problems(plan)
    if found and not skip:
        count = sum(len(p.jobs) for p in found)
        lines = [f"{p.where} (line {p.line}): {p.describe()}" for p in found]
        raise InputError(
            f"{count} job(s) have unusable inputs; nothing was submitted (`run --skip-invalid` "
            "runs the others):\n  " + "\n  ".join(lines)
        )
    return found


def _fail_rejected(store: StateStore, plan: Plan, rejected: list[Problem]) -> None:
    """``--skip-invalid``: each rejected job fails with its reason (a fixed input re-plans it)."""
    if not rejected:
        return
    reasons = {
        pj.job.id: pj.error or "inputs rejected" for pj in plan.jobs if pj.action == "reject"
    }
    with store.batch():
        for row in store.rows([State.PENDING, State.FAILED]):
            if row.id in reasons and row.state is State.PENDING:
                store.transition(row.id, State.FAILED, error=reasons[row.id],
                                 fail_kind=FailKind.INPUT.value)  # fmt: skip


def _sync(store: StateStore, plan: Plan, options: RunOptions) -> None:
    # Records are made as they are inserted: 100,000 spec dicts at once would double the peak.
    result = store.sync_jobs(JobRecord(pj.job.id, pj.key, job_spec(pj)) for pj in plan.jobs)
    by_id = {pj.job.id: pj for pj in plan.jobs} if result.changed else {}
    refused = []
    for change in result.changed:
        unpaid = change.state in (State.PENDING, State.FAILED) and not change.task_id
        if unpaid or change.job_id in options.replace:
            pj = by_id[change.job_id]
            if change.state in _PAID_IN_FLIGHT or change.state is State.DONE:
                # Its task (or its result) stays, under job~N, and is still collected into
                # videos/replaced/: replacing a job never throws a paid task away.
                retired = store.retire_job(change.job_id, reason="replaced by --replace")
                if change.state is State.DONE:
                    _retire_result(store, retired)
            record = JobRecord(pj.job.id, pj.key, job_spec(pj))
            store.replace_job(record, reason="inputs or settings changed")
        else:
            refused.append(
                f"job {change.job_id}: its inputs or settings changed after it was submitted "
                f"(state {change.state.value}, task {change.task_id or '-'}); rename the job "
                f"to keep both, or pass --replace {change.job_id}"
            )
    if refused:
        raise ConfigError("a paid result would be overwritten:\n  " + "\n  ".join(refused))


def _check_results(store: StateStore, output_dir: Path, jobs: set[str]) -> list[str]:
    """Done jobs of the manifest whose video is gone or changed are collected again."""
    check = outdir.check_results(output_dir, [r for r in store.outputs() if r.id in jobs])
    notes = []
    with store.batch():
        for job_id, mtime in check.stamps.items():
            store.set_fields(job_id, result=outdir.with_stamp(store.get(job_id).result, mtime))
        for damage in check.damaged:
            row = store.get(damage.job_id)
            changed = damage.why == "changed" and row.output
            moved = outdir.set_aside(output_dir, row.output) if changed and row.output else None
            kept = f" (the changed file is kept as {moved})" if moved else ""
            if row.task_id:
                why = f"its result video is {damage.why}{kept}: collecting task {row.task_id} again"
                store.transition(
                    row.id, State.RUNNING, output=None, output_sha256=None, result_url=None,
                    error=why, detail={"op": "recollect", "why": damage.why},
                )  # fmt: skip
            else:
                why = f"its result video is {damage.why}{kept} and no task id is known to fetch it"
                store.transition(row.id, State.NEEDS_ATTENTION, error=why)
            notes.append(f"job {row.id}: {why}")
    return notes


#: States in which a job holds (or may hold) a task the provider is generating for it.
_PAID_IN_FLIGHT = frozenset({State.SUBMITTING, State.RUNNING, State.DOWNLOADING,
                             State.NEEDS_ATTENTION})  # fmt: skip


def _retire_result(store: StateStore, retired: str) -> None:
    """Move a replaced job's video to ``videos/replaced/`` with its metadata beside it."""
    row = store.get(retired)
    if not row.output:
        return
    output_dir = store.path.parent
    moved = outdir.set_aside(output_dir, row.output, tag="replaced")
    relative = str(moved.relative_to(output_dir)) if moved else None
    row = store.set_fields(retired, output=relative)
    if moved is not None:
        write_sidecar(row, output_dir)


# --------------------------------------------------------------------------- status
