"""The core functions behind ``run``, ``status`` and ``resolve``: one per command.

Order matters for money: the run lock is taken before any HTTP request (a second ``run`` exits 4
at once), keys are checked and every input is planned before anything is sent (exit 2 spends
nothing), and a job whose key changed after it was paid for is refused unless replaced.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.dataset import layout as outdir
from pipeline.dataset.lockfile import write_lock
from pipeline.dataset.metadata import write_sidecar
from pipeline.errors import (
    BadReplyError,
    BatchStopped,
    ConfigError,
    InputError,
    RefusedError,
    StateError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, State
from pipeline.manifest.load import load_manifest
from pipeline.manifest.model import Budget, Manifest
from pipeline.media.tools import find_tools
from pipeline.plan.build import Plan, PlannedJob, make_plan
from pipeline.plan.selection import Problem, problems
from pipeline.plan.summary import summarize
from pipeline.progress.events import BatchFinished, BatchStarted, Notice, Reporter
from pipeline.providers.base import ProviderConfig
from pipeline.run.disk import DiskGuard
from pipeline.run.engine import Engine
from pipeline.run.log import close_run_log, open_run_log
from pipeline.run.options import RunOptions
from pipeline.run.session import credentials_for, endpoint, provider_client, run_secrets
from pipeline.run.summary import RunSummary
from pipeline.settings import Settings
from pipeline.state.database import state_path
from pipeline.state.lock import RunLock
from pipeline.state.rows import DuplicateTaskError, JobRecord
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


def done_keys(output_dir: Path) -> list[str]:
    """Keys already generated in ``output_dir`` (for ``plan``'s ``done`` action)."""
    if not state_path(output_dir).exists():
        return []
    with StateStore.open(output_dir, readonly=True) as store:
        return [row.key for row in store.rows([State.DONE])]


def status_target(target: str) -> tuple[Path, str, Budget]:
    """``status`` of a manifest or an output directory: where, and the money's terms."""
    path = Path(target)
    if path.is_dir():
        return path, "USD", Budget()
    manifest = load_manifest(path, check_files=False)
    return manifest.output_dir, manifest.budget.currency, manifest.budget


def output_dir_of(target: str, settings: Settings) -> Path:
    """``status``/``report`` accept the manifest or its output directory."""
    path = Path(target)
    if path.is_dir():
        return path
    return load_manifest(path, check_files=False).output_dir


@dataclass(frozen=True)
class StatusReport:
    counts: dict[State, int]
    jobs: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"counts": {s.value: n for s, n in self.counts.items()}, "jobs": self.jobs}


def batch_status(output_dir: Path) -> StatusReport:
    if not state_path(output_dir).exists():
        raise StateError(f"no state in {output_dir}: nothing has run there yet")
    with StateStore.open(output_dir, readonly=True) as store:
        counts = store.counts()
        # A done job whose video is gone or changed is reported (run collects it again).
        check = outdir.check_results(output_dir, store.outputs())
        problems = {d.job_id: d.why for d in check.damaged}
        jobs = [
            {
                "id": s.id,
                "state": s.state.value,
                "task_id": s.task_id,
                "error": s.error,
                "output": s.output,
                "output_problem": problems.get(s.id),
            }
            for s in store.summaries()
        ]
    return StatusReport(counts, jobs)


# --------------------------------------------------------------------------- resolve


def resolve_job(
    manifest: Manifest,
    job_id: str,
    *,
    adopt: str | None,
    resubmit: bool,
    abandon: bool,
    settings: Settings | None = None,
) -> str:
    """Settle a job that needs attention; returns what was done, for the user.

    ``--adopt`` first asks the provider about the task id (a typo must not be adopted: the run
    would poll a task that does not exist, and ``--retry-failed`` would then pay again).
    ``--abandon`` also gives up a job stuck collecting (running, downloading): its task is paid
    and is given up knowingly. ``--resubmit`` pays again, so it only takes settled jobs.
    """
    if adopt is not None:
        adopt = adopt.strip()
        if not adopt:
            raise ConfigError("--adopt needs the provider's task id (it was empty)")
    output_dir = manifest.output_dir
    if not state_path(output_dir).exists():
        raise ConfigError(f"nothing has run for {manifest.path} yet: there is no job to resolve")
    with RunLock.acquire(output_dir), StateStore.open(output_dir) as store:
        try:
            row = store.get(job_id)
        except StateError:
            raise ConfigError(f"job {job_id!r} is not in the state of {output_dir}") from None
        allowed = _ADOPTABLE if adopt is not None else _RESUBMITTABLE if resubmit else _ABANDONABLE
        if row.state not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise ConfigError(f"job {job_id} is {row.state.value}: this resolve takes {names} jobs")
        if adopt is not None:
            _ask_about(manifest, adopt, settings or Settings.from_env())
            try:
                store.transition(
                    job_id, State.RUNNING, task_id=adopt, error=None,
                    detail={"op": "resolve", "adopt": adopt},
                )  # fmt: skip
            except DuplicateTaskError as exc:
                raise ConfigError(f"cannot adopt task {adopt}: {exc}") from None
            return f"job {job_id}: adopted task {adopt}; the next run polls and downloads it"
        if resubmit:
            store.transition(
                job_id, State.PENDING, error=None, detail={"op": "resolve", "resubmit": True}
            )
            return f"job {job_id}: back to pending; the next run submits it again (and pays again)"
        store.transition(
            job_id,
            State.FAILED,
            error="abandoned by the user",
            fail_kind=FailKind.ABANDONED.value,
            detail={"op": "resolve", "abandon": True},
        )
        paid = f" (task {row.task_id} is given up)" if row.task_id else ""
        return f"job {job_id}: abandoned (failed){paid}"


_ADOPTABLE = frozenset({State.NEEDS_ATTENTION, State.FAILED})
_RESUBMITTABLE = frozenset({State.NEEDS_ATTENTION, State.FAILED})
_ABANDONABLE = frozenset(
    {State.NEEDS_ATTENTION, State.FAILED, State.SUBMITTING, State.RUNNING, State.DOWNLOADING}
)


def _ask_about(manifest: Manifest, task_id: str, settings: Settings) -> None:
    """Refuse a task id the provider does not know (exit 2), or cannot be asked about (exit 3)."""
    credentials = credentials_for(manifest.provider, settings)
    tools = find_tools(settings)

    async def ask(config: ProviderConfig) -> None:
        async with provider_client(config, credentials) as provider:
            await provider.poll(Handle(config.name, task_id))

    with endpoint(manifest, tools) as config:
        try:
            asyncio.run(ask(config))
        except (RefusedError, BadReplyError) as exc:
            raise ConfigError(
                f"{config.name} does not know task {task_id!r} ({exc}); nothing was changed"
            ) from None
        except TransientError as exc:
            raise BatchStopped(
                f"cannot ask {config.name} about task {task_id!r} ({exc}); nothing was changed, "
                "try again later"
            ) from None


# --------------------------------------------------------------------------- report


def report_batch(manifest: Manifest, settings: Settings) -> Path:
    """Write ``report.html`` for the manifest's output directory from its state."""
    from pipeline.dataset.report import write_report  # only this command
    from pipeline.dataset.report_data import ReportJob, ReportTotals

    output_dir = manifest.output_dir
    if not state_path(output_dir).exists():
        raise StateError(f"no state in {output_dir}: run the batch first")
    budget = manifest.budget
    jobs: list[ReportJob] = []
    seconds = 0.0
    cost: float | None = 0.0
    first: str | None = None
    last: str | None = None
    with StateStore.open(output_dir, readonly=True) as store:
        counts = store.counts()
        for row in store.rows():
            spec = row.spec
            settings_doc = spec.get("settings", {})
            output = output_dir / row.output if row.output else None
            if row.state is State.DONE:
                billed = row.billed_seconds or 0.0
                seconds += billed
                price = budget.cost(settings_doc.get("mode", "std"), billed)
                cost = None if price is None or cost is None else cost + price
            if row.submitted_at:
                first = min(first or row.submitted_at, row.submitted_at)
            if row.finished_at:
                last = max(last or row.finished_at, row.finished_at)
            jobs.append(
                ReportJob(
                    id=row.id,
                    state=row.state,
                    image=spec.get("image", ""),
                    video=spec.get("video", ""),
                    image_path=_local(spec.get("image", "")),
                    video_path=_local(spec.get("video", "")),
                    output_path=output if output and output.is_file() else None,
                    settings=settings_doc,
                    billed_seconds=row.billed_seconds,
                    duration=row.duration,
                    provider=spec.get("provider", manifest.provider.name),
                    model=spec.get("model", manifest.provider.model),
                    task_id=row.task_id,
                    error=row.error,
                    applied=_applied(row.inputs),
                )
            )
    totals = ReportTotals(
        done=counts[State.DONE],
        failed=counts[State.FAILED],
        needs_attention=counts[State.NEEDS_ATTENTION],
        other=sum(counts.values())
        - counts[State.DONE]
        - counts[State.FAILED]
        - counts[State.NEEDS_ATTENTION],
        seconds_billed=round(seconds, 3),
        estimated_cost=None if cost is None or not budget.price_per_second else round(cost, 4),
        currency=budget.currency,
        wall_time_seconds=_span(first, last),
    )
    return write_report(output_dir, jobs, totals, tools=find_tools(settings), title=manifest.name)


def _applied(inputs: str | None) -> dict[str, Any] | None:
    """The video recipe a job was sent with (state ``inputs``), for the report."""
    if not inputs:
        return None
    try:
        doc = json.loads(inputs)
    except ValueError:
        return None
    recipe = doc.get("video_recipe") if isinstance(doc, dict) else None
    return recipe if isinstance(recipe, dict) else None


def _local(text: str) -> Path | None:
    if not text or text.startswith(("http://", "https://")):
        return None
    return Path(text)


def _span(first: str | None, last: str | None) -> float | None:
    from datetime import datetime

    if not first or not last:
        return None
    try:
        return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    except ValueError:
        return None
