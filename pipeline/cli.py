"""The ``motion-pipeline`` command: parse arguments, call one core function, map errors to exits.

Exit codes (design.md §2): 0 all done, 1 some job failed / needs attention, 2 invalid manifest
or inputs, 3 batch-wide stop, 4 locked by another run, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pipeline.errors import Diagnostic, ManifestError, PipelineError
from pipeline.jobs import State
from pipeline.manifest import load_manifest
from pipeline.operations import (
    batch_status,
    done_keys,
    output_dir_of,
    report_batch,
    resolve_job,
    run_batch,
)
from pipeline.planning import Plan, make_plan
from pipeline.reporting import choose_reporter
from pipeline.runner import RunOptions
from pipeline.settings import Settings, redact

EXIT_OK = 0
EXIT_INTERRUPTED = 130


def _cmd_validate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    failed = False
    for path in args.manifests:
        try:
            manifest = load_manifest(path)
            plan = make_plan(manifest, settings)
        except ManifestError as exc:
            failed = True
            for diag in exc.diagnostics:
                print(diag, file=sys.stderr)
            continue
        rejected = media_diagnostics(path, plan)
        for diag in rejected:
            print(diag, file=sys.stderr)
        if rejected:
            failed = True
            continue
        jobs = len(manifest.jobs)
        print(f"{path}: ok ({jobs} jobs, provider {manifest.provider.name})", file=out)
    return 2 if failed else EXIT_OK


def media_diagnostics(shown: str, plan: Plan) -> list[Diagnostic]:
    """One diagnostic per job whose media is rejected, at the manifest entry it came from."""
    return sorted(
        Diagnostic(shown, pj.job.line, 1, pj.job.where, f"job {pj.job.id}: {pj.error}")
        for pj in plan.jobs
        if pj.action == "reject"
    )


def _cmd_plan(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    manifest = load_manifest(args.manifest)
    plan = make_plan(manifest, settings, done_keys=done_keys(manifest.output_dir))
    if args.json:
        # Compact and in one write: indent= switches json to its slow pure-Python encoder and
        # json.dump streams hundreds of thousands of tiny writes for a 10,000-job plan.
        out.write(json.dumps(plan.as_dict()) + "\n")
    else:
        _print_plan(plan, out)
    return 2 if any(pj.action == "reject" for pj in plan.jobs) else EXIT_OK


def _print_plan(plan: Plan, out: TextIO) -> None:
    m = plan.manifest
    print(f"{m.name}: {len(plan.jobs)} jobs, {m.provider.name} {m.provider.model}", file=out)
    print(f"output: {m.output_dir}", file=out)
    width = max((len(pj.job.id) for pj in plan.jobs), default=2)
    for pj in plan.jobs:
        s = pj.job.settings
        billed = "-" if pj.billed_seconds is None else f"{pj.billed_seconds:.2f}s"
        cost = "" if pj.estimated_cost is None else f" ~{pj.estimated_cost:.2f}"
        print(
            f"  {pj.job.id:<{width}}  {pj.action:<11} {s.mode:<3} "
            f"{s.character_orientation:<5} {billed:>8}{cost}",
            file=out,
        )
        media = pj.media
        pad = " " * (width + 4)
        if media is not None and media.image_info is not None:
            print(f"{pad}image {media.image_info.summary()}", file=out)
        if media is not None and media.video_info is not None:
            steps = f" -> {', '.join(pj.steps)}" if pj.steps else ""
            print(f"{pad}video {media.video_info.summary()}{steps}", file=out)
        if pj.error:
            print(f"{pad}! {pj.error}", file=out)
    t = plan.totals
    cost = (
        ""
        if t["estimated_cost"] is None
        else f", estimated {t['estimated_cost']:.2f} {t['currency']}"
    )
    actions = ", ".join(f"{k} {v}" for k, v in t["actions"].items())
    print(
        f"total: {t['jobs']} jobs ({actions}), {t['billed_seconds']:.2f} s billed{cost}", file=out
    )
    for mode, entry in t["per_mode"].items():
        mcost = (
            ""
            if entry["estimated_cost"] is None
            else f", {entry['estimated_cost']:.2f} {t['currency']}"
        )
        print(f"  {mode}: {entry['jobs']} jobs, {entry['billed_seconds']:.2f} s{mcost}", file=out)


def _cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    manifest = load_manifest(args.manifest)
    options = RunOptions(
        concurrency=args.concurrency,
        max_jobs=args.max_jobs,
        retry_failed=args.retry_failed,
        replace=frozenset(args.replace or ()),
    )
    reporter = choose_reporter(
        no_progress=args.no_progress, stream=sys.stderr, secrets=settings.secrets()
    )
    summary = run_batch(manifest, settings, options, reporter)
    out_dir = manifest.output_dir
    counts = ", ".join(f"{s.value} {n}" for s, n in summary.counts.items() if n)
    print(
        f"{manifest.name}: {counts or 'no jobs'}; {summary.seconds_billed:.2f} s billed", file=out
    )
    if summary.stop_reason:
        print(f"stopped: {summary.stop_reason}", file=out)
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
        print(f"report:   {report_batch(manifest, settings)}", file=out)
    return summary.exit_code


def _cmd_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    report = batch_status(output_dir_of(args.target, settings))
    if args.json:
        out.write(json.dumps(report.as_dict()) + "\n")  # compact: 100,000 jobs stay fast
    else:
        counts = ", ".join(f"{s.value} {n}" for s, n in report.counts.items() if n)
        print(f"{sum(report.counts.values())} jobs: {counts or 'none'}", file=out)
        for job in report.jobs:
            if job["state"] in ("failed", "needs_attention"):
                task = f" task {job['task_id']}" if job["task_id"] else ""
                print(f"  {job['state']:<15} {job['id']}{task}: {job['error']}", file=out)
    bad = report.counts[State.FAILED] + report.counts[State.NEEDS_ATTENTION]
    return 1 if bad else EXIT_OK


def _cmd_resolve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    manifest = load_manifest(args.manifest, check_files=False)
    message = resolve_job(
        manifest, args.job, adopt=args.adopt, resubmit=args.resubmit, abandon=args.abandon
    )
    print(message, file=out)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    path = report_batch(load_manifest(args.manifest, check_files=False), settings)
    print(f"report: {path}", file=out)
    return EXIT_OK


def _cmd_sandbox(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from pipeline.sandbox import serve  # imported only for this command

    protocols = tuple(args.protocol) if args.protocol else ("kie", "acedata", "kling")
    serve(args.host, args.port, protocols, args.faults, out=out)
    return EXIT_OK


Command = Callable[[argparse.Namespace, Settings, TextIO], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motion-pipeline",
        description="Declarative, resumable batches of Kling motion-control generations.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate", help="check manifests against the schema and the files (no cost)"
    )
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plan", help="expand jobs, probe inputs, show actions and cost (no cost)")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("run", help="run or resume the batch (spends money)")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--concurrency", type=_positive, metavar="N", help="tasks in flight at once")
    p.add_argument("--max-jobs", type=_positive, metavar="N", help="submit at most N new jobs")
    p.add_argument(
        "--retry-failed", action="store_true", help="re-check timed-out tasks, resubmit failed jobs"
    )
    p.add_argument(
        "--replace",
        action="append",
        metavar="JOB",
        help="allow re-generating a paid job whose inputs changed",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain lines)")
    p.add_argument("--report", action="store_true", help="write report.html at the end")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="jobs per state, failures with reasons (no cost)")
    p.add_argument("target", metavar="MANIFEST_OR_OUTPUT_DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("resolve", help="settle a job whose submission is ambiguous")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("job", metavar="JOB")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--adopt", metavar="TASK_ID", help="the provider's task id for this job")
    how.add_argument("--resubmit", action="store_true", help="submit again (pays again)")
    how.add_argument("--abandon", action="store_true", help="give the job up (failed)")
    p.set_defaults(func=_cmd_resolve)

    p = sub.add_parser("report", help="write report.html, a contact sheet of the batch")
    p.add_argument("manifest", metavar="MANIFEST")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("sandbox", help="run the local fake provider (no cost)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--protocol", action="append", choices=["kie", "acedata", "kling"])
    p.add_argument("--faults", metavar="FILE", help="fault/latency profile (YAML or JSON)")
    p.set_defaults(func=_cmd_sandbox)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings or Settings.from_env()
    func: Command = args.func
    try:
        return func(args, settings, sys.stdout)
    except ManifestError as exc:
        for diag in exc.diagnostics:
            print(diag, file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"motion-pipeline: {redact(str(exc), settings.secrets())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("motion-pipeline: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_main() -> Any:  # pragma: no cover - console-script shim
    sys.exit(main())
