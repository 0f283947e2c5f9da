"""What a user finds out from the command itself: --version, --help of every command (each
argument explained, the exit codes listed), and argument errors in words, not internal names.
All through ``python -m pipeline`` as a subprocess.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from batchkit import (
    cli,
    cli_env,
    command,
    job_entries,
    make_media,
    provider_block,
    sandbox,
    write_manifest,
)

import pipeline
from pipeline.cli import build_parser
from pipeline.cli_args import EXIT_CODES
from pipeline.errors import Diagnostic

COMMANDS = ["validate", "plan", "run", "status", "resolve", "report", "sandbox"]

#: The exit codes each command can return (design.md §2), as its --help must list them.
EXITS = {
    "validate": {0, 2, 130},
    "plan": {0, 2, 130},
    "run": {0, 1, 2, 3, 4, 130},
    "status": {0, 1, 2, 130},
    "resolve": {0, 1, 2, 4, 130},
    "report": {0, 1, 2, 130},
    "sandbox": {0, 2},
}


def mp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # COLUMNS: argparse wraps help to the terminal; the tests read it as an 80-column one.
    return subprocess.run(
        command(*args),
        env=cli_env(COLUMNS="80"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def listed_exit_codes(help_text: str) -> set[int]:
    section = help_text.split("exit codes:\n", 1)[1]
    return {int(m) for m in re.findall(r"^  (\d+) ", section, flags=re.MULTILINE)}


def test_version_comes_from_the_installed_package() -> None:
    proc = mp("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"motion-pipeline {version('motion-pipeline')}\n"
    # pyproject.toml takes the version from pipeline/__version__.py: one source, so the
    # installed metadata and the constant the CLI and lock files print cannot drift apart.
    assert pipeline.__version__ == version("motion-pipeline")


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    proc = mp("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^    {name} +\S", proc.stdout, flags=re.MULTILINE), name
    assert listed_exit_codes(proc.stdout) == set(EXIT_CODES) == {0, 1, 2, 3, 4, 130, 141}
    assert "--version" in proc.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_explains_arguments_and_exit_codes(name: str) -> None:
    proc = mp(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert listed_exit_codes(proc.stdout) == EXITS[name]
    # Every argument of the command has a help text, and it is shown.
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[name]
    for action in sub._actions:
        assert action.help, f"{name}: {action.dest} has no help"
        shown = action.option_strings[-1] if action.option_strings else action.metavar
        assert str(shown) in proc.stdout
    # Readable in a plain terminal (argparse cannot wrap a usage line inside a group).
    assert max(len(line) for line in proc.stdout.splitlines() if not line.startswith("usage")) <= 80


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "m.yaml", "--concurrency", "0"],
            "argument --concurrency: must be a whole number of at least 1, got '0'",
        ),
        (
            ["run", "m.yaml", "--concurrency", "two"],
            "argument --concurrency: must be a whole number of at least 1, got 'two'",
        ),
        (
            ["run", "m.yaml", "--max-jobs", "1.5"],
            "argument --max-jobs: must be a whole number of at least 1, got '1.5'",
        ),
        (
            ["run", "m.yaml", "--max-jobs", "-3"],
            "argument --max-jobs: must be a whole number of at least 1, got '-3'",
        ),
        (["resolve", "m.yaml", ".hidden", "--abandon"], "argument JOB: must be a job id"),
        (
            ["resolve", "m.yaml", "a", "--adopt", ""],
            "argument --adopt: must be the provider's task id (no spaces, at most 200 characters), got ''",
        ),
        (["resolve", "m.yaml", "a", "--adopt", "t\x1b[2J"], "got 't\\x1b[2J'"),
        (
            ["resolve", "m.yaml", "a"],
            "one of the arguments --adopt --resubmit --abandon is required",
        ),
        (
            ["sandbox", "--port", "http"],
            "argument --port: must be a port number from 0 to 65535 (0: any free port), got 'http'",
        ),
        (["sandbox", "--port", "65536"], "argument --port: must be a port number from 0 to 65535"),
        (["sandbox", "--protocol", "evolink"], "argument --protocol: invalid choice: 'evolink'"),
        (["plan"], "the following arguments are required: MANIFEST"),
        ([], "the following arguments are required: COMMAND"),
        (["launch"], "argument COMMAND: invalid choice: 'launch'"),
    ],
)
def test_argument_errors_are_sentences(args: list[str], message: str) -> None:
    proc = mp(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.startswith("usage: motion-pipeline")
    # No internal names: argparse shows a type function's name when it raises ValueError.
    assert not re.search(r"invalid \w+ value", proc.stderr)
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr


def test_a_diagnostic_without_a_position_names_only_the_file() -> None:
    assert str(Diagnostic("m.yaml", 0, 0, "$", "manifest file not found")) == (
        "m.yaml: manifest file not found"
    )
    assert str(Diagnostic("m.yaml", 0, 0, "$.jobs", "x")) == "m.yaml: $.jobs: x"
    assert (
        str(Diagnostic("m.yaml", 3, 5, "$.jobs[0]", "x", "y"))
        == "m.yaml:3:5: $.jobs[0]: x (hint: y)"
    )
    assert str(Diagnostic("m.yaml", 1, 1, "$", "not a mapping")) == "m.yaml:1:1: $: not a mapping"


@pytest.mark.parametrize("name", ["validate", "plan", "run", "status", "report"])
def test_a_missing_manifest_is_named_without_a_fake_position(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.yaml"
    proc = mp(name, missing)
    assert proc.returncode == 2
    assert proc.stderr == f"{missing}: manifest file not found\n"


def test_a_replace_pattern_that_matches_no_job_is_an_error(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a", "b"])
        )
        for command in ("plan", "run"):
            proc = cli(command, manifest, "--replace", "a", "--replace", "nonexistent-*")
            assert proc.returncode == 2, proc.stderr
            assert "'nonexistent-*' matches no job" in proc.stderr
        assert len(srv.ledger) == 0
