"""``status`` and the CLI's error printing as a user meets them: a batch that never ran, things
that are not manifests or output directories, unreadable paths, provider text with terminal
controls. Real ``python -m pipeline`` subprocesses; no traceback for any expected condition.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    command,
    job_entries,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    write_manifest,
)

EMPTY_COUNTS = dict.fromkeys(
    ["pending", "submitting", "running", "downloading", "done", "failed", "needs_attention"], 0
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def test_status_of_a_manifest_that_never_ran(media: Media, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m", provider_block("sandbox", None), job_entries("sandbox", None, media, ["a"])
    )
    proc = cli("status", manifest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nothing has run for {manifest} yet (output dir {out_dir(manifest)})\n"
    assert proc.stderr == ""
    # --json: the document a script expects (no job), the sentence for the person on stderr.
    proc = cli("status", manifest, "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"counts": EMPTY_COUNTS, "jobs": []}
    assert "nothing has run for" in proc.stderr


def test_status_of_an_output_dir_where_a_run_stopped_before_any_job(
    media: Media, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path / "m",
        {"name": "kie", "base_url": "http://127.0.0.1:9", "upload_url": "http://127.0.0.1:9"},
        job_entries("sandbox", None, media, ["a"]),  # local files
    )
    stopped = cli("run", manifest, env=cli_env(keys={}))  # no key: exit 2 before anything is sent
    assert stopped.returncode == 2, stopped.stderr
    output = out_dir(manifest)
    proc = cli("status", output)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nothing has run in {output} yet\n"


def test_status_of_a_directory_that_is_not_an_output_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    proc = cli("status", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"motion-pipeline: {tmp_path} is not an output directory of motion-pipeline (it holds "
        "no state.sqlite); give the manifest or its output directory\n"
    )


@pytest.mark.parametrize("name", ["status", "validate", "plan", "run", "report"])
def test_a_file_that_is_not_yaml(name: str, tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    proc = cli(name, png)
    assert proc.returncode == 2
    no_traceback(proc)
    assert proc.stderr.startswith(f"{png}:")
    assert "not UTF-8 text" in proc.stderr


@pytest.mark.parametrize("name", ["validate", "plan", "run", "report", "resolve"])
def test_a_manifest_path_that_is_a_directory(name: str, tmp_path: Path) -> None:
    extra = ["job", "--abandon"] if name == "resolve" else []
    proc = cli(name, tmp_path, *extra)
    assert proc.returncode == 2
    no_traceback(proc)
    assert proc.stderr == f"{tmp_path}: cannot read: Is a directory\n"


# --------------------------------------------------------------------------- permissions


def _drop_root_file_powers() -> None:  # pragma: no cover - runs in the child, before exec
    # Root reads every file whatever its mode; without these two capabilities (dropped from the
    # bounding set, so the exec'd python never gets them) a chmod 000 denies root as well.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def denied(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI run so that file modes apply to it, also when the tests run as root (CI)."""
    return subprocess.run(
        command(*args),
        env=cli_env(),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=_drop_root_file_powers if os.geteuid() == 0 else None,
    )


def test_status_of_a_directory_without_permission(tmp_path: Path) -> None:
    locked = tmp_path / "out"
    locked.mkdir()
    (locked / "state.sqlite").write_bytes(b"")
    locked.chmod(0o000)
    try:
        proc = denied("status", locked)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2
    no_traceback(proc)
    assert proc.stderr == f"motion-pipeline: cannot read {locked}/state.sqlite: Permission denied\n"


@pytest.mark.parametrize("name", ["status", "validate", "run"])
def test_an_unreadable_manifest(name: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\n", encoding="utf-8")
    manifest.chmod(0o000)
    proc = denied(name, manifest)
    assert proc.returncode == 2
    no_traceback(proc)
    assert proc.stderr == f"{manifest}: cannot read: Permission denied\n"


# --------------------------------------------------------------------------- provider text


def test_status_escapes_terminal_controls_in_provider_reasons(media: Media, tmp_path: Path) -> None:
    reason = "blocked\x1b[2J\x1b]0;owned\x07 by \u202emoderation\rnext"
    profile = {"faults": [{"kind": "task_fail", "times": 1, "message": reason}]}
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a"])
        )
        ran = cli("run", manifest)
    assert ran.returncode == 1, ran.stderr
    proc = cli("status", manifest)
    assert proc.returncode == 1
    (line,) = [line for line in proc.stdout.splitlines() if "failed" in line and " a " in line]
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout and "\r" not in proc.stdout
    assert "blocked\\x1b[2J\\x1b]0;owned\\x07 by \\u202emoderation\\x0dnext" in line
    # --json keeps the provider's text as it was (JSON escapes it on its own).
    doc = json.loads(cli("status", manifest, "--json").stdout)
    assert reason in doc["jobs"][0]["error"]


def test_error_messages_escape_terminal_controls(tmp_path: Path) -> None:
    odd = tmp_path / "out\x1b[2J"
    odd.mkdir()
    proc = cli("status", odd)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr
    assert "out\\x1b[2J is not an output directory" in proc.stderr


def test_run_into_an_output_dir_it_may_not_create(media: Media, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m", provider_block("sandbox", None), job_entries("sandbox", None, media, ["a"])
    )
    readonly = manifest.parent
    readonly.chmod(0o555)  # out/ cannot be made beside the manifest
    try:
        proc = denied("run", manifest, "--no-progress")
    finally:
        readonly.chmod(0o755)
    no_traceback(proc)
    # An OS refusal the core did not name: said with the path, exit 3 (a run cannot tell
    # whether it had sent anything before the disk refused).
    assert proc.returncode == 3
    assert proc.stderr == f"motion-pipeline: {out_dir(manifest)}: Permission denied\n"


@pytest.mark.parametrize("args", [["plan"], ["plan", "--json"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(
    args: list[str], media: Media, tmp_path: Path
) -> None:
    # `| head`: the reader takes a few bytes and closes the pipe. 2,000 jobs print more than a
    # pipe holds (64 KiB), so the command is still writing when the pipe closes, every time.
    ids = [f"job-{n:05d}" for n in range(2000)]
    manifest = write_manifest(
        tmp_path / "m", provider_block("sandbox", None), job_entries("sandbox", None, media, ids)
    )
    proc = subprocess.Popen(
        command(*args[:1], manifest, *args[1:]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first  # it did print
    assert stderr == ""  # no "Broken pipe", no "Exception ignored", no traceback
    assert code == 141
