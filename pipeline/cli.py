"""The ``motion-pipeline`` command: parse arguments, call one core function, map errors to exits.

The arguments, help texts and exit codes shown to users are in :mod:`pipeline.cli_args`. Exit
codes (design.md §2): 0 all done, 1 some job failed / needs attention, 2 invalid manifest or
inputs, 3 batch-wide stop, 4 locked by another run, 130 interrupted.

Everything printed here that did not come from us (provider reasons, task ids, quoted manifest
text) passes :func:`pipeline.settings.printable`: a terminal control in it is shown, not obeyed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pipeline import api, cli_args
from pipeline.errors import ConfigError, Diagnostic, ManifestError, PipelineError
from pipeline.jobs import State
from pipeline.settings import Settings, printable, redact

# Each command imports the machinery it uses (manifest schema, providers, httpx, the engine)
# when it runs: `motion-pipeline --help` and `import pipeline.cli` stay fast.
if TYPE_CHECKING:
    from pipeline.plan.build import Plan
    from pipeline.plan.estimate import Bucket
    from pipeline.plan.summary import PlanSummary

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool that SIGPIPE ended: `cat`, `grep`, `git`


def _cmd_validate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.manifest.load import load_manifest
    from pipeline.plan.build import make_plan

    failed = False
    for path in args.manifests:
        try:
            manifest = load_manifest(path)
            plan = make_plan(manifest, settings)
        except ManifestError as exc:
            failed = True
            for diag in exc.diagnostics:
                print(printable(str(diag)), file=sys.stderr)
            continue
        rejected = media_diagnostics(path, plan)
        for diag in rejected:
            print(printable(str(diag)), file=sys.stderr)
        if rejected:
            failed = True
            continue
        jobs = len(manifest.jobs)
        print(f"{path}: ok ({jobs} jobs, provider {manifest.provider.name})", file=out)
    return EXIT_INVALID if failed else EXIT_OK


def media_diagnostics(shown: str, plan: Plan) -> list[Diagnostic]:
    """One diagnostic per job whose media is rejected, at the manifest entry it came from."""
    from pipeline.plan.selection import problems

    # One line per distinct problem: a bad clip in a 100x100 matrix is one problem, 100 jobs.
    return sorted(Diagnostic(shown, p.line, 1, p.where, p.describe()) for p in problems(plan))


def _cmd_plan(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    summary = api.plan(
        args.manifest,
        retry_failed=args.retry_failed,
        replace=args.replace or (),
        skip_invalid=args.skip_invalid,
        settings=settings,
    )
    if args.json:
        # Compact, one job at a time, in a few large writes: indent= switches json to its slow
        # pure-Python encoder, json.dump makes hundreds of thousands of tiny writes, and the
        # whole document as dicts is hundreds of MB for 100,000 jobs.
        buffer: list[str] = []
        for chunk in summary.json_chunks():
            buffer.append(chunk)
            if len(buffer) >= 1000:
                out.write("".join(buffer))
                buffer.clear()
        out.write("".join(buffer) + "\n")
    else:
        _print_plan(summary, out)
    return EXIT_OK if summary.estimate.runnable else EXIT_INVALID


def _print_plan(summary: PlanSummary, out: TextIO) -> None:
    from pipeline.plan.listing import job_lines
    from pipeline.plan.selection import problems

    plan, est = summary.plan, summary.estimate
    m = plan.manifest
    currency = m.budget.currency
    print(f"{m.name}: {len(plan.jobs)} jobs, {m.provider.name} {m.provider.model}", file=out)
    print(f"output: {m.output_dir}", file=out)
    for piece in job_lines(summary):  # 100,000 jobs: their lines in pieces, input facts once
        out.write(piece)
    for problem in problems(plan):
        print(f"rejected: {printable(problem.describe())}", file=out)
    print(f"this run would pay: {summary.to_pay.describe(currency)}", file=out)
    labels: tuple[tuple[Bucket, str], ...] = (
        ("already_paid", "already paid, collected only"),
        ("free", "free (done, or the same generation as another job)"),
        ("skipped", "skipped"),
        ("refused", "refused (changed after paying: rename or --replace)"),
    )
    for bucket, label in labels:
        tally = est.sums[bucket]
        if tally.jobs:
            seconds = f", {tally.billed_seconds:.2f} s" if bucket == "already_paid" else ""
            plural = "s" if tally.jobs != 1 else ""
            print(f"  {label}: {tally.jobs} job{plural}{seconds}", file=out)
    budget = m.budget
    if budget.max_seconds is not None or budget.max_cost is not None:
        caps = ", ".join(
            c
            for c in (
                f"max_seconds {budget.max_seconds:g}" if budget.max_seconds is not None else "",
                f"max_cost {budget.max_cost:g} {currency}" if budget.max_cost is not None else "",
            )
            if c
        )
        fit = est.fit
        said = f"budget ({caps}): already committed {summary.paid.describe(currency)}"
        if fit.exceeded:
            said += f"; OVER BUDGET: {fit.fits_jobs} of {summary.to_pay.jobs} jobs to pay fit"
        print(said, file=out)
    for blocker in est.blockers:
        print(f"run would refuse: {printable(blocker)}", file=out)


def _cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.manifest.load import load_manifest
    from pipeline.progress.choose import choose_reporter
    from pipeline.run.batch import run_batch
    from pipeline.run.options import RunOptions

    manifest = load_manifest(args.manifest)
    options = RunOptions(
        concurrency=args.concurrency,
        max_jobs=args.max_jobs,
        retry_failed=args.retry_failed,
        replace=frozenset(args.replace or ()),
        skip_invalid=args.skip_invalid,
    )
    reporter = choose_reporter(
        no_progress=args.no_progress, stream=sys.stderr, secrets=settings.secrets()
    )
    summary = run_batch(manifest, settings, options, reporter)
    out_dir = manifest.output_dir
    currency = summary.currency
    counts = ", ".join(f"{s.value} {n}" for s, n in summary.counts.items() if n)
    print(f"{manifest.name}: {counts or 'no jobs'}", file=out)
    print(f"this run paid: {summary.paid_now.describe(currency)}", file=out)
    print(f"the batch has paid: {summary.batch_paid.describe(currency)}", file=out)
    if summary.stop_reason:
        print(f"stopped: {printable(summary.stop_reason)}", file=out)
    if summary.submitted:
        per_job = summary.http_requests / summary.submitted
        line = f"requests: {summary.http_requests} HTTP, {per_job:.2f} per submitted job"
        if summary.occupancy is not None:
            line += f"; provider slots {summary.occupancy:.1%} busy while jobs waited"
        print(line, file=out)
    print(f"videos:   {out_dir / 'videos'}", file=out)
    print(f"metadata: {out_dir / 'metadata.jsonl'}", file=out)
    print(
        f"state:    {out_dir / 'state.sqlite'}  (motion-pipeline status {args.manifest})", file=out
    )
    if args.report and summary.exit_code != EXIT_INTERRUPTED:
        from pipeline.dataset.report import report_batch  # only with --report

        print(f"report:   {report_batch(manifest, settings)}", file=out)
    return summary.exit_code


def _cmd_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.dataset.status import StatusReport, batch_status, status_target

    _output_dir, nothing_yet = _status_target(args.target)
    if nothing_yet:
        if args.json:  # the document a script expects, and the sentence for the person
            empty = StatusReport(dict.fromkeys(State, 0))
            out.write(json.dumps(empty.as_dict()) + "\n")
        print(nothing_yet, file=sys.stderr if args.json else out)
        return EXIT_OK
    if args.json:
        # api.status's document, written as it is made: 100,000 jobs in < 1 s (no dict per job).
        output_dir, currency, budget = status_target(args.target)
        read = batch_status(output_dir, budget)
        for chunk in read.json_chunks(currency):
            out.write(chunk)
        out.write("\n")
        return 1 if read.needs_care else EXIT_OK
    report = api.status(args.target, settings=settings)
    counts = ", ".join(f"{s.value} {n}" for s, n in report.counts.items() if n)
    print(f"{sum(report.counts.values())} jobs: {counts or 'none'}", file=out)
    print(f"paid: {report.paid.describe(report.currency)}", file=out)
    for job in report.jobs:
        if job["state"] in ("failed", "needs_attention"):
            task = f" task {job['task_id']}" if job["task_id"] else ""
            # Reasons and task ids are the provider's text: one line, controls escaped.
            line = f"  {job['state']:<15} {job['id']}{task}: {job['error']}"
            print(printable(redact(line, settings.secrets())), file=out)
    damaged = [j for j in report.jobs if j.get("output_problem")]
    for job in damaged:
        line = (f"  {'done, video ' + job['output_problem']:<15} {job['id']}: {job['output']} "
                "(`run` collects it again from its task)")  # fmt: skip
        print(printable(line), file=out)
    kept = [j for j in report.jobs if "~" in j["id"]]
    if kept:
        print(f"replaced jobs whose paid task is kept ({len(kept)}):", file=out)
        for job in kept:
            where = job["output"] or "collected by the next run"
            print(printable(f"  {job['id']:<15} {job['state']:<12} {where}"), file=out)
    bad = report.counts[State.FAILED] + report.counts[State.NEEDS_ATTENTION]
    damaged_outputs = any(j.get("output_problem") for j in report.jobs)
    return 1 if bad or damaged_outputs else EXIT_OK


def _status_target(target: str) -> tuple[Path, str]:
    """The output directory to read, and a sentence instead when nothing has run there yet."""
    from pipeline.state.database import state_path

    path = Path(target)
    if _probe(path, Path.is_dir):
        if _probe(state_path(path), Path.exists):
            return path, ""
        from pipeline.state.lock import lock_path  # only now: the usual case has a state

        if _probe(lock_path(path), Path.exists):  # a run began here and stopped before any job
            return path, f"nothing has run in {path} yet"
        raise ConfigError(
            f"{path} is not an output directory of motion-pipeline (it holds no state.sqlite); "
            "give the manifest or its output directory"
        )
    from pipeline.manifest.load import load_manifest  # a manifest was named: now, not before

    output_dir = load_manifest(path, check_files=False).output_dir
    if _probe(state_path(output_dir), Path.exists):
        return output_dir, ""
    return output_dir, f"nothing has run for {target} yet (output dir {output_dir})"


def _probe(path: Path, test: Callable[[Path], bool]) -> bool:
    """``test(path)``, with a directory we may not enter reported as the user's to fix."""
    try:
        return test(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _cmd_resolve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.manifest.load import load_manifest
    from pipeline.run.resolve import resolve_job

    manifest = load_manifest(args.manifest, check_files=False)
    message = resolve_job(
        manifest, args.job, adopt=args.adopt, resubmit=args.resubmit, abandon=args.abandon
    )
    print(message, file=out)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.dataset.report import report_batch
    from pipeline.manifest.load import load_manifest

    path = report_batch(load_manifest(args.manifest, check_files=False), settings)
    print(f"report: {path}", file=out)
    return EXIT_OK


def _cmd_sandbox(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.sandbox import serve  # imported only for this command

    protocols = (
        tuple(args.protocol) if args.protocol else ("kie", "acedata", "kling", "fal", "replicate")
    )
    serve(args.host, args.port, protocols, args.faults, out=out, instant=args.instant)
    return EXIT_OK


Command = Callable[[argparse.Namespace, Settings, TextIO], int]

COMMANDS: dict[str, Command] = {
    "validate": _cmd_validate,
    "plan": _cmd_plan,
    "run": _cmd_run,
    "status": _cmd_status,
    "resolve": _cmd_resolve,
    "report": _cmd_report,
    "sandbox": _cmd_sandbox,
}


def build_parser() -> argparse.ArgumentParser:
    return cli_args.build_parser(dict(COMMANDS))


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings or Settings.from_env()
    func: Command = args.func
    try:
        code = func(args, settings, sys.stdout)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could no longer be handled
        return code
    except ManifestError as exc:
        for diag in exc.diagnostics:
            print(printable(str(diag)), file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        _say(str(exc), settings)
        return exc.exit_code
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, as the tools beside us in the pipe do. Later
        # writes (the interpreter's own flush at exit included) go nowhere instead of raising.
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        # What the core did not turn into one of our errors: the system refused a file (a
        # permission, a read-only or full disk, a port taken). Named, without a traceback; a
        # run may have sent requests already, so it says "stopped" (3), the others "fix it" (2).
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}", settings)
        return EXIT_STOPPED if args.command == "run" else EXIT_INVALID
    except KeyboardInterrupt:
        print("motion-pipeline: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _say(message: str, settings: Settings) -> None:
    """An error for the user on stderr: redacted, controls escaped, our own newlines kept."""
    text = printable(redact(message, settings.secrets()), keep_newlines=True)
    print(f"motion-pipeline: {text}", file=sys.stderr)


def _drop_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (an embedding caller's stream)
        pass


def run_main() -> Any:  # pragma: no cover - console-script shim
    sys.exit(main())
