"""Shared helpers for the runner tests: media, a sandbox that counts requests, manifests, the CLI.

Everything is real: the sandbox is the project's HTTP server on 127.0.0.1, the runner is either
``operations.run_batch`` in-process or ``python -m pipeline`` as a subprocess, media is made with
ffmpeg. Jobs are told apart in the sandbox ledger by their prompt (``prompt_of``), so the ledger
can be checked against the state without trusting the state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mediagen import make_image, make_video

from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer

# Distinctive fake keys: the secret sweep looks for these exact strings everywhere.
KIE_KEY = "kie-SECRET-abc123456789"
ACEDATA_KEY = "ace-SECRET-def987654321"
KLING_ACCESS = "kling-AK-SECRET-111222333"
KLING_SECRET = "kling-SK-SECRET-444555666"
SECRETS = (KIE_KEY, ACEDATA_KEY, KLING_ACCESS, KLING_SECRET)
KEYS = SandboxKeys(
    kie=KIE_KEY, acedata=ACEDATA_KEY, kling_access=KLING_ACCESS, kling_secret=KLING_SECRET
)
KEY_ENV = {
    "KIE_API_KEY": KIE_KEY,
    "ACEDATA_API_KEY": ACEDATA_KEY,
    "KLING_ACCESS_KEY": KLING_ACCESS,
    "KLING_SECRET_KEY": KLING_SECRET,
}
PROTOCOLS = ("kie", "acedata", "kling")
STATES = ("pending", "submitting", "running", "downloading", "done", "failed", "needs_attention")
#: A bound for subprocess runs, not a timing assertion: a hung run fails the test instead of CI.
RUN_TIMEOUT = 120


@dataclass(frozen=True)
class Media:
    image: Path
    video: Path


def make_media(root: Path) -> Media:
    """A 400x600 png and a 3.5 s 360x480 mp4 with sound: small, and valid for every provider."""
    return Media(
        make_image(root / "char.png", 400, 600),
        make_video(root / "dance.mp4", seconds=3.5, width=360, height=480, fps=10),
    )


# --------------------------------------------------------------------------- sandbox


@dataclass
class RequestLog:
    """Every request the sandbox answered, as (method, path); wraps the app's single entry point.

    The sandbox keeps a ledger of accepted creates but no count of requests, so the tests wrap
    :meth:`SandboxApp.handle` (the server calls it once per request) to see them all.
    """

    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        with self.lock:
            return len(self.seen)

    def snapshot(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.seen)


@contextlib.contextmanager
def sandbox(
    data_dir: Path, profile: dict[str, Any] | None = None, *, keys: SandboxKeys = KEYS
) -> Iterator[tuple[SandboxServer, RequestLog]]:
    """A sandbox with our keys and ``profile`` (fault profile as a dict), and its request log."""
    faults = FaultProfile.from_dict(profile or {})
    with SandboxServer(keys=keys, faults=faults, data_dir=data_dir) as srv:
        log = RequestLog()
        handle = srv.app.handle

        def counting(req: Any) -> Any:
            with log.lock:
                log.seen.append((req.method, req.path))
            return handle(req)

        srv.app.handle = counting  # type: ignore[method-assign]
        yield srv, log


def prompt_of(body: dict[str, Any]) -> str:
    """The prompt in a create body of any protocol (Kie nests it under ``input``)."""
    if isinstance(body.get("input"), dict):
        return str(body["input"].get("prompt", ""))
    return str(body.get("prompt", ""))


def creates(srv: SandboxServer) -> Counter[str]:
    """Accepted creates per job id (prompts are ``job <id>``)."""
    return Counter(prompt_of(e.body).removeprefix("job ") for e in srv.ledger)


def ledger_tasks(srv: SandboxServer) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in srv.ledger:
        out.setdefault(prompt_of(entry.body).removeprefix("job "), []).append(entry.task_id)
    return out


# --------------------------------------------------------------------------- manifests


def provider_block(kind: str, srv: SandboxServer | None, **extra: Any) -> dict[str, Any]:
    """``provider:`` for ``kind`` pointed at ``srv`` (``sandbox``: the embedded server)."""
    block: dict[str, Any] = {"name": kind, "poll_interval": 0.1, "concurrency": 2}
    if kind != "sandbox":
        assert srv is not None
        block["base_url"] = srv.base_url
        if kind == "kie":
            block["upload_url"] = srv.base_url
    block.update(extra)
    return block


def job_entries(
    kind: str, srv: SandboxServer | None, media: Media, ids: list[str]
) -> list[dict[str, Any]]:
    """One job per id, all on the same media, told apart (and keyed apart) by the prompt."""
    if kind in ("acedata", "kling"):  # no upload API: the sandbox serves the files itself
        assert srv is not None
        image, video = srv.file_url(media.image), srv.file_url(media.video)
    else:
        image, video = str(media.image), str(media.video)
    return [{"id": i, "image": image, "video": video, "prompt": f"job {i}"} for i in ids]


def write_manifest(
    folder: Path,
    provider: dict[str, Any],
    jobs: list[dict[str, Any]],
    *,
    name: str = "batch",
    budget: dict[str, Any] | None = None,
) -> Path:
    doc: dict[str, Any] = {
        "version": 1,
        "name": name,
        "output_dir": "out",
        "provider": provider,
        "defaults": {"character_orientation": "image"},
        "jobs": jobs,
    }
    if budget:
        doc["budget"] = budget
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the CLI


def cli_env(*, keys: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no inherited keys or test switches, ours added."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in KEY_ENV and not k.startswith("MOTION_PIPELINE_")
    }
    env.update(KEY_ENV if keys is None else keys)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", *(str(a) for a in args)]


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``motion-pipeline ARGS`` to completion (``run`` gets ``--no-progress``)."""
    argv = command(*args)
    if args and args[0] == "run":
        argv.append("--no-progress")
    return subprocess.run(
        argv,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def start(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``motion-pipeline ARGS`` (``run`` gets ``--no-progress``); the caller waits."""
    argv = command(*args)
    if args and args[0] == "run":
        argv.append("--no-progress")
    return subprocess.Popen(
        argv,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"run did not end within {RUN_TIMEOUT} s\n{out}\n{err}") from None
    return proc.returncode, out, err


def status_json(target: Path) -> dict[str, Any]:
    proc = cli("status", target, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


# --------------------------------------------------------------------------- the output dir


def out_dir(manifest: Path) -> Path:
    return manifest.parent / "out"


def state_rows(output: Path) -> dict[str, dict[str, Any]]:
    """Every job row, read with plain sqlite3 (read-only), as dicts by id."""
    uri = f"file:{output / 'state.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}


def try_state_rows(output: Path) -> dict[str, dict[str, Any]] | None:
    """:func:`state_rows` while a run may still be creating the file: None until it can be read.

    A running ``run`` creates ``state.sqlite`` before its tables exist (one transaction later),
    so a reader racing it sees no file, no tables, or briefly a lock.
    """
    if not (output / "state.sqlite").exists():
        return None
    try:
        return state_rows(output)
    except sqlite3.OperationalError:  # "no such table: jobs", "database is locked"
        return None


def integrity(output: Path) -> str:
    uri = f"file:{output / 'state.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def partials(output: Path) -> list[str]:
    videos = output / "videos"
    return sorted(p.name for p in videos.glob(".part-*")) if videos.is_dir() else []


def metadata(output: Path) -> list[dict[str, Any]]:
    path = output / "metadata.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def probe_video(path: Path) -> dict[str, Any]:
    """ffprobe's view of ``path``'s first video stream (fails the test when it has none)."""
    from mediagen import ffprobe

    proc = subprocess.run(
        [ffprobe(), "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(proc.stdout)
    videos = [s for s in doc["streams"] if s.get("codec_type") == "video"]
    assert videos, f"{path} has no video stream"
    stream: dict[str, Any] = videos[0]
    stream["format_duration"] = float(doc["format"]["duration"])
    return stream


def run_here(manifest: Path, *, env: dict[str, str] | None = None, **options: Any) -> Any:
    """``run`` in this process (no interpreter start-up): the :class:`RunSummary`."""
    from pipeline.manifest.load import load_manifest
    from pipeline.progress.events import RecordingReporter
    from pipeline.run.batch import run_batch
    from pipeline.run.options import RunOptions
    from pipeline.settings import Settings

    settings = Settings.from_env(env or cli_env())
    return run_batch(load_manifest(manifest), settings, RunOptions(**options), RecordingReporter())


def fired(srv: SandboxServer) -> list[int]:
    """How often each rule of the fault profile fired, in profile order: without it a fault
    test could pass because the fault never happened."""
    return srv.app.picker.fired()
