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
from pipeline.manifest import load_manifest
from pipeline.planning import Plan, make_plan
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
    plan = make_plan(load_manifest(args.manifest), settings)
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
        if pj.error:
            print(f"  {'':<{width}}  ! {pj.error}", file=out)
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
    return parser


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
