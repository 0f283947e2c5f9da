"""The arguments of ``motion-pipeline``: commands, help texts, exit codes, argument types.

Kept apart from :mod:`pipeline.cli` (which runs the commands) so that what a user reads in
``--help`` is in one place. Every command's help lists the exit codes it can return; the
numbers and their meaning are the contract in design.md §2.

Argument types raise :class:`argparse.ArgumentTypeError` with a sentence, never a bare
``ValueError``: argparse would then print the function's name (``invalid _positive value``).
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Callable

from pipeline.__version__ import __version__
from pipeline.settings import printable

#: What each exit code means, for the top-level help (commands say what it means for them).
EXIT_CODES = {
    0: "every job succeeded (now or in an earlier run)",
    1: "some job failed, timed out or needs attention",
    2: "invalid manifest, inputs or arguments, or a missing key (nothing was submitted)",
    3: "stopped by a batch-wide condition (key rejected, out of credits, budget, disk full)",
    4: "another run holds the lock of the output directory",
    130: "interrupted (the state is consistent: run again to continue)",
    141: "the reader of the output went away (a closed pipe, as in `| head`)",
}

Handler = Callable[..., int]


def _exits(*lines: tuple[int, str]) -> str:
    """An epilog listing exit codes; a newline in a text continues it under the text."""
    rows = [f"  {code:<4} " + text.replace("\n", "\n" + " " * 7) for code, text in lines]
    return "exit codes:\n" + "\n".join(rows)


_INTERRUPTED = (130, "interrupted (Ctrl-C, SIGTERM)")

# --------------------------------------------------------------------------- argument types

_DIGITS = re.compile(r"\s*[0-9]{1,9}\s*")  # ASCII only: int() also reads other scripts' digits
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_TASK_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")


def _shown(text: str) -> str:
    return f"'{printable(text)}'"


def whole_number(text: str) -> int:
    """A whole number of at least 1 (``--concurrency``, ``--max-jobs``)."""
    value = int(text) if _DIGITS.fullmatch(text) else 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of at least 1, got {_shown(text)}"
        )
    return value


def port_number(text: str) -> int:
    """A TCP port; 0 lets the system choose a free one."""
    value = int(text) if _DIGITS.fullmatch(text) else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 0 to 65535 (0: any free port), got {_shown(text)}"
        )
    return value


def job_id(text: str) -> str:
    """A job id as the manifest allows it (it names output files)."""
    if not _JOB_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            "must be a job id (1 to 100 of A-Z a-z 0-9 . _ -, not starting with '.'), "
            f"got {_shown(text)}"
        )
    return text


def task_id(text: str) -> str:
    """A provider's task id: not empty, no spaces or control characters."""
    if not _TASK_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            "must be the provider's task id (no spaces, at most 200 characters), "
            f"got {_shown(text)}"
        )
    return text


# --------------------------------------------------------------------------- the parser


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    exits: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, width=79),
        epilog=exits,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=handler)
    return p


def _selection(p: argparse.ArgumentParser) -> None:
    """The flags that decide which jobs a run pays for: the same for `plan` and `run`."""
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-check timed-out tasks first, then resubmit failed jobs (pays again for those)",
    )
    p.add_argument(
        "--replace",
        action="append",
        metavar="JOB",
        help="allow re-generating paid jobs whose inputs or settings changed: a job id or a "
        "glob pattern such as 'alice-*' or '*' (repeatable; a pattern that matches no job is "
        "an error); the old result is kept in videos/replaced/",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run the jobs whose inputs are fine and list the rejected ones (exit 1 at the "
        "end); without it one rejected input stops the batch before anything is sent",
    )


def build_parser(handlers: dict[str, Handler]) -> argparse.ArgumentParser:
    """The parser; ``handlers`` maps each command name to the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="motion-pipeline",
        description="Declarative, resumable batches of Kling motion-control generations.",
        epilog="\n\n".join(
            [
                _exits(*EXIT_CODES.items()),
                "`motion-pipeline COMMAND --help` explains a command, its arguments and the exit "
                "codes it returns.",
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"motion-pipeline {__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    manifest_help = "the manifest (YAML); relative paths in it are relative to its directory"

    p = _command(
        sub,
        "validate",
        "check manifests against the schema and the files (no cost)",
        "Check each manifest: schema, semantics, input files and media rules. Every problem is "
        "printed as FILE:LINE:COL: JSON.PATH: message. Needs no API key; sends nothing.",
        _exits(
            (0, "every manifest is valid"),
            (2, "some manifest is invalid, or bad arguments"),
            _INTERRUPTED,
        ),
        handlers["validate"],
    )
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="one or more manifests")

    p = _command(
        sub,
        "plan",
        "expand jobs, probe inputs, show actions and cost (no cost)",
        "Expand the jobs, probe and prepare every input, and show per job its action (ok, "
        "trim, convert, strip-audio, reject, or done) and what `run` with the same flags would "
        "do with it now: pay, collect (already paid), nothing (done, or the same generation as "
        "another job), skip or refuse; then what this run would pay (jobs, billed seconds, "
        "cost) and how many jobs fit the budget. Needs no API key; sends nothing.",
        _exits(
            (0, "every job can run (or is done)"),
            (2, "the manifest is invalid, some job's inputs are rejected, or bad arguments"),
            _INTERRUPTED,
        ),
        handlers["plan"],
    )
    p.add_argument("manifest", metavar="MANIFEST", help=manifest_help)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    _selection(p)

    p = _command(
        sub,
        "run",
        "run or resume the batch (spends money)",
        "Run the batch, or resume it: jobs already done are not paid again, tasks still "
        "generating are collected. Progress goes to stderr: a bar on a terminal; elsewhere one "
        "line per job state change plus a status line every 30 s. The summary goes to stdout.",
        _exits(
            (0, "every job succeeded (now or in an earlier run)"),
            (1, "some job failed, timed out or needs attention (see `status`)"),
            (2, "invalid manifest, inputs or arguments, or a missing key: nothing was\nsubmitted"),
            (
                3,
                "stopped by a batch-wide condition (key rejected, out of credits, budget,\n"
                "disk full); tasks already paid for were collected",
            ),
            (4, "another run holds the lock of the output directory"),
            (130, "interrupted (Ctrl-C, SIGTERM): the state is consistent, run again\nto continue"),
        ),
        handlers["run"],
    )
    p.add_argument("manifest", metavar="MANIFEST", help=manifest_help)
    p.add_argument(
        "--concurrency",
        type=whole_number,
        metavar="N",
        help="tasks in flight at the provider at once (default: the manifest's)",
    )
    p.add_argument(
        "--max-jobs", type=whole_number, metavar="N", help="submit at most N new jobs in this run"
    )
    _selection(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar on a terminal: plain lines as in a log",
    )
    p.add_argument("--report", action="store_true", help="write report.html at the end")

    p = _command(
        sub,
        "status",
        "jobs per state, failures with reasons (no cost)",
        "Show the jobs per state and every failed or needs-attention job with its reason. "
        "Reads the state only (also while a run is going); sends nothing.",
        _exits(
            (0, "no job failed or needs attention (or nothing has run yet)"),
            (1, "some job failed or needs attention, or the state is damaged"),
            (2, "not a manifest or an output directory, unreadable, or bad arguments"),
            _INTERRUPTED,
        ),
        handlers["status"],
    )
    p.add_argument(
        "target",
        metavar="MANIFEST_OR_OUTPUT_DIR",
        help="the manifest, or its output directory (the one holding state.sqlite)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"counts": {STATE: N}, "jobs": [{id, state, task_id, error, output}]}',
    )

    p = _command(
        sub,
        "resolve",
        "settle a job whose submission is ambiguous",
        "Settle a failed or needs-attention job, typically one whose create may or may not have "
        "reached the provider: check the provider's dashboard first.",
        _exits(
            (0, "the job was settled; the next run acts on it"),
            (1, "the state is damaged"),
            (
                2,
                "invalid manifest, unknown job, a job that is neither failed nor\n"
                "needs_attention, or bad arguments",
            ),
            (4, "a run holds the lock of the output directory"),
            _INTERRUPTED,
        ),
        handlers["resolve"],
    )
    p.add_argument("manifest", metavar="MANIFEST", help=manifest_help)
    p.add_argument("job", metavar="JOB", type=job_id, help="the job id, as `status` shows it")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--adopt",
        metavar="TASK_ID",
        type=task_id,
        help="the provider's task id for this job; the next run polls and downloads it",
    )
    how.add_argument(
        "--resubmit", action="store_true", help="back to pending: the next run submits it again"
    )
    how.add_argument("--abandon", action="store_true", help="give the job up (failed)")

    p = _command(
        sub,
        "report",
        "write report.html, a contact sheet of the batch (no cost)",
        "Write report.html in the output directory: per job the image, a driving frame and "
        "frames of the result, with settings, seconds billed and failures.",
        _exits(
            (0, "report written"),
            (1, "nothing has run yet, or the state is damaged"),
            (2, "invalid manifest, or bad arguments"),
            _INTERRUPTED,
        ),
        handlers["report"],
    )
    p.add_argument("manifest", metavar="MANIFEST", help=manifest_help)

    p = _command(
        sub,
        "sandbox",
        "run the local fake provider (no cost)",
        "Serve the Kie, AceData, Kling, fal.ai and Replicate protocols on HOST:PORT until Ctrl-C, "
        "with latency and faults from a profile. Point a manifest's base_url (and upload_url) at "
        "the printed address.",
        _exits(
            (0, "stopped with Ctrl-C or SIGTERM"),
            (2, "bad arguments, an unreadable fault profile, or the port is taken"),
        ),
        handlers["sandbox"],
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=port_number, default=8787, help="port to listen on (default 8787; 0: any)"
    )
    p.add_argument(
        "--protocol",
        action="append",
        choices=["kie", "acedata", "kling", "fal", "replicate"],
        help="serve only this protocol (repeatable; default: all five)",
    )
    p.add_argument(
        "--faults", metavar="FILE", help="latency and fault profile (YAML or JSON); default: none"
    )
    p.add_argument(
        "--instant",
        action="store_true",
        help="benchmarks: no media checks or renders; every task succeeds on its first poll "
        "with one canned clip (same as 'instant: true' in the profile)",
    )
    return parser
