"""Where each stored state re-enters a job's line (engine.RESUME), one parametrised test: the
engine runs against the recording fake provider, results come from a real local HTTP server,
and what the fake was asked shows that no resume ever creates twice."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from batchkit import Media
from conftest import planned_job
from fake_provider import FakeProvider, Script

from pipeline import providers
from pipeline.jobs import Handle, State
from pipeline.manifest.model import Budget, Manifest
from pipeline.media.tools import find_tools
from pipeline.plan.build import Plan
from pipeline.progress.events import RecordingReporter
from pipeline.providers.base import Credentials, ProviderConfig
from pipeline.run.disk import DiskGuard
from pipeline.run.engine import RESUME, Engine
from pipeline.run.options import RunOptions
from pipeline.run.summary import RunSummary
from pipeline.settings import Settings
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore


@pytest.fixture(scope="module")
def results(stage_media: Media) -> Iterator[str]:
    """A real HTTP server on loopback answering every GET with the test clip."""
    body = stage_media.video.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _to(store: StateStore, job_id: str, state: str, *, kind: str | None = None) -> None:
    """Walk a job to a stored state, as an earlier run would have left it."""
    path = {
        "pending": [],
        "submitting": [State.SUBMITTING],
        "running": [State.SUBMITTING, State.RUNNING],
        "downloading": [State.SUBMITTING, State.RUNNING, State.DOWNLOADING],
        "failed": [State.SUBMITTING, State.RUNNING, State.FAILED],
    }[state]
    for to in path:
        fields: dict[str, Any] = {}
        if to is State.SUBMITTING:
            fields = {"client_id": "mp-a-1", "attempt": 1, "billed_seconds": 3.5}
        elif to is State.RUNNING:
            fields = {"task_id": "task-a"}
        elif to is State.FAILED:
            fields = {"fail_kind": kind, "error": "earlier run"}
        store.transition(job_id, to, **fields)


CASES = {
    # id: (stored state, fail kind, client id, options, lookup answer, final state, submits, polls)
    "pending": ("pending", None, False, {}, None, "done", 1, True),
    "submitting, found by client id": ("submitting", None, True, {}, "found", "done", 0, True),
    "submitting, never happened": ("submitting", None, True, {}, None, "done", 1, True),
    "submitting, no client id": ("submitting", None, False, {}, None, "needs_attention", 0, False),
    "running": ("running", None, False, {}, None, "done", 0, True),
    "downloading": ("downloading", None, False, {}, None, "done", 0, True),
    "failed, timed out, --retry-failed": (
        "failed",
        "timeout",
        False,
        {"retry_failed": True},
        None,
        "done",
        0,
        True,
    ),
    "failed, task failed, --retry-failed": (
        "failed",
        "task",
        False,
        {"retry_failed": True},
        None,
        "done",
        1,
        True,
    ),
    "failed, no --retry-failed": ("failed", "task", False, {}, None, "failed", 0, False),
}


def test_every_stored_state_has_a_way_back_in() -> None:
    assert set(RESUME) == {
        State.PENDING,
        State.SUBMITTING,
        State.RUNNING,
        State.DOWNLOADING,
        State.FAILED,
    }


@contextlib.contextmanager
def stored_batch(
    tmp_path: Path, results: str, media: Media, script: Script, *, client_id: bool = False,
    **config: Any,
) -> Iterator[tuple[StateStore, Callable[[dict[str, Any]], RunSummary]]]:  # fmt: skip
    """Job ``a`` in a state of its own, the fake provider registered with ``script``; yields
    the store (to walk the job to where an earlier run left it) and a function that runs the
    engine over it with those run options."""
    providers.register(FakeProvider)
    FakeProvider.reset(script, client_id=client_id)
    FakeProvider.result_base = results
    try:
        pj = planned_job("a", media)
        provider = ProviderConfig("fake", "fake-model", results, poll_interval=0.01, **config)
        output = tmp_path / "out"
        manifest = Manifest(tmp_path / "m.yaml", "resume", output, provider, Budget(), (pj.job,))
        with StateStore.open(output) as store:
            store.sync_jobs([JobRecord("a", pj.key, {"settings": {"mode": "std"}})])

            def run(options: dict[str, Any]) -> RunSummary:
                engine = Engine(
                    manifest, Plan(manifest, (pj,)), store, Settings.from_env({}),
                    RunOptions(**options), RecordingReporter(), Credentials(), find_tools(),
                    logging.getLogger(f"resume.{tmp_path.name}"),
                    DiskGuard(output, floor=0, reserve=0),
                )  # fmt: skip
                return asyncio.run(engine.run())

            yield store, run
    finally:
        providers.unregister("fake")


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_each_stored_state(
    case: str, results: str, stage_media: Media, tmp_path: Path
) -> None:
    stored, kind, client_id, options, lookup, final, submits, polled = CASES[case]
    task = Handle("fake", "task-a", "mp-a-1")
    script = Script(
        polls={"task-a": ["succeeded"]},
        lookups=[task if lookup else None],
        creates=[task],
    )
    with stored_batch(tmp_path, results, stage_media, script, client_id=client_id) as (store, run):
        _to(store, "a", stored, kind=kind)
        summary = run(options)
        assert store.get("a").state.value == final, store.get("a").error
    assert len(FakeProvider.calls("submit")) == submits
    assert bool(FakeProvider.calls("poll")) == polled
    assert summary.exit_code == (0 if final == "done" else 1)


@pytest.mark.parametrize(
    ("stored", "options", "final", "polls"),
    [
        # Interrupted two hours after its create, with task_timeout 1 h: one last look, then
        # timed out (kept for --retry-failed), not a fresh hour of polling.
        ("running", {}, "failed", 1),
        # --retry-failed asks to wait for a timed-out task again: a whole task_timeout more.
        ("failed", {"retry_failed": True}, "done", 3),
    ],
)
def test_a_resumed_task_is_as_old_as_its_submission(
    stored: str, options: dict[str, Any], final: str, polls: int,
    results: str, stage_media: Media, tmp_path: Path,
) -> None:  # fmt: skip
    task = Handle("fake", "task-a", "mp-a-1")
    script = Script(polls={"task-a": ["running", "running", "succeeded"]}, creates=[task])
    with stored_batch(tmp_path, results, stage_media, script, task_timeout=3600.0) as (store, run):
        _to(store, "a", stored, kind="timeout")
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        store.set_fields("a", submitted_at=two_hours_ago.isoformat(timespec="milliseconds"))
        run(options)
        row = store.get("a")
        assert row.state.value == final, row.error
        if final == "failed":
            assert row.fail_kind == "timeout" and "task_timeout (3600 s)" in str(row.error)
    assert len(FakeProvider.calls("poll")) == polls
    assert not FakeProvider.calls("submit")
