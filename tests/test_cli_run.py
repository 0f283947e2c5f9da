"""``motion-pipeline run`` as a user drives it: two runners, Ctrl-C / SIGTERM, missing keys, and a
sweep proving no API key or JWT leaks into any file, log, stdout or stderr.
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from batchkit import (
    KEY_ENV,
    SECRETS,
    Media,
    cli,
    cli_env,
    creates,
    finish,
    integrity,
    job_entries,
    ledger_tasks,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    start,
    state_rows,
    status_json,
    try_state_rows,
    write_manifest,
)
from waiting import WAIT_LIMIT, wait_until

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def wait_for_states(output: Path, ids: list[str], state: str) -> dict[str, dict[str, Any]]:
    def reached() -> dict[str, dict[str, Any]] | None:
        rows = try_state_rows(output)
        if rows is not None and all(rows.get(i, {}).get("state") == state for i in ids):
            return rows
        return None

    return wait_until(reached, what=f"jobs {ids} to reach {state}")


def set_poll_interval(manifest: Path, seconds: float) -> None:
    doc = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    doc["provider"]["poll_interval"] = seconds
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_second_runner_and_interrupt(sig: signal.Signals, media: Media, tmp_path: Path) -> None:
    ids = ["a", "b"]
    with sandbox(tmp_path / "sandbox") as (srv, log):
        # A long first poll delay keeps the first run quiet once its tasks are created, so any
        # request in that window would come from the second process.
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, poll_interval=30),
            job_entries("kie", srv, media, ids),
        )
        output = out_dir(manifest)
        first = start("run", manifest)
        try:
            wait_for_states(output, ids, "running")
            quiet = log.snapshot()

            second = cli("run", manifest)
            assert second.returncode == 4, second.stderr
            assert "Traceback" not in second.stderr
            assert second.stderr.strip()  # says why
            doc = status_json(manifest)  # readable while the first run holds the lock
            assert doc["counts"]["running"] == 2
            assert log.snapshot() == quiet

            first.send_signal(sig)
            code, _out, err = finish(first)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert code == 130, err
        assert "Traceback" not in err
        assert integrity(output) == "ok"
        rows = state_rows(output)
        for job_id, tasks in ledger_tasks(srv).items():
            assert rows[job_id]["task_id"] == tasks[0]
        assert creates(srv) == dict.fromkeys(ids, 1)

        set_poll_interval(manifest, 0.1)  # not part of the job key
        resumed = cli("run", manifest)
        assert resumed.returncode == 0, resumed.stderr
        assert creates(srv) == dict.fromkeys(ids, 1)  # collected, not submitted again
    assert {r["state"] for r in state_rows(output).values()} == {"done"}


@pytest.mark.parametrize(
    ("kind", "unset"),
    [
        ("kie", ["KIE_API_KEY"]),
        ("acedata", ["ACEDATA_API_KEY"]),
        ("kling", ["KLING_SECRET_KEY"]),
        ("kling", ["KLING_ACCESS_KEY", "KLING_SECRET_KEY"]),
    ],
)
def test_missing_key(kind: str, unset: list[str], media: Media, tmp_path: Path) -> None:
    keys = {k: v for k, v in KEY_ENV.items() if k not in unset}
    env = cli_env(keys=keys)
    with sandbox(tmp_path / "sandbox") as (srv, log):
        manifest = write_manifest(
            tmp_path / "m", provider_block(kind, srv), job_entries(kind, srv, media, ["a"])
        )
        seen = len(log)
        proc = cli("run", manifest, env=env)
        assert proc.returncode == 2, proc.stderr
        for var in unset:
            assert var in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(log) == seen  # nothing was sent
        assert len(srv.ledger) == 0
        # validate and plan spend nothing and need no key (they probe URL inputs, no API call)
        assert cli("validate", manifest, env=env).returncode == 0
        assert cli("plan", manifest, env=env).returncode == 0
        assert all(path.startswith("/files/") for _m, path in log.snapshot())


def test_a_key_with_its_line_break_is_refused_before_anything_is_sent(
    media: Media, tmp_path: Path
) -> None:
    keys = {**KEY_ENV, "KIE_API_KEY": KEY_ENV["KIE_API_KEY"] + "\n"}  # $(cat key.txt) keeps none
    with sandbox(tmp_path / "sandbox") as (srv, log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a"])
        )
        seen = len(log)
        proc = cli("run", manifest, env=cli_env(keys=keys))
        assert proc.returncode == 2, proc.stderr
        assert "KIE_API_KEY holds a control character" in proc.stderr
        assert KEY_ENV["KIE_API_KEY"] not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr
        assert len(log) == seen and len(srv.ledger) == 0  # nothing was sent


def sweep(root: Path, texts: list[str]) -> list[str]:
    """Every place under ``root`` (bytes, every file) and in ``texts`` holding a key or a JWT."""
    found = []
    needles = [s.encode() for s in SECRETS]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path}: {n.decode()}" for n in needles if n in data]
        found += [f"{path}: JWT" for _ in JWT.finditer(data)]
    for i, text in enumerate(texts):
        data = text.encode()
        found += [f"output {i}: {n.decode()}" for n in needles if n in data]
        found += [f"output {i}: JWT" for _ in JWT.finditer(data)]
    return found


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling"])
def test_no_key_or_jwt_leaks_anywhere(kind: str, media: Media, tmp_path: Path) -> None:
    profile = {
        "faults": [
            {"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 0.2},
            {"kind": "server_error", "endpoint": "poll", "times": 1},
            {"kind": "task_fail", "times": 1, "message": "rejected by moderation"},
            {"kind": "expired_result", "times": 1},
            {"kind": "bad_key", "endpoint": "create", "after": 4},  # the 4th job's create
        ]
    }
    ids = ["a", "b", "c", "d"]
    texts: list[str] = []
    with sandbox(tmp_path / "sandbox", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block(kind, srv, concurrency=1),
            job_entries(kind, srv, media, ids),
        )
        proc = cli("run", manifest)
        texts += [proc.stdout, proc.stderr]
        assert proc.returncode == 3, proc.stderr  # the rejected key stopped the batch
        for args in (["status", manifest], ["status", manifest, "--json"], ["plan", manifest]):
            shown = cli(*args)
            texts += [shown.stdout, shown.stderr]
        again = cli("run", manifest)  # the key is still rejected: exit 3 again
        texts += [again.stdout, again.stderr]
        assert again.returncode == 3
    output = out_dir(manifest)
    assert (output / "run.log").is_file()
    states = {r["state"] for r in state_rows(output).values()}
    assert "done" in states and "failed" in states  # the faults really happened
    assert sweep(output, texts) == []


def test_interrupt_while_a_create_is_on_the_wire(media: Media, tmp_path: Path) -> None:
    # Ctrl-C arrives while the sandbox holds the create; the answer is still awaited briefly and
    # its task id committed, so the next run collects the task instead of asking the user.
    # The sandbox answers only once the signal was sent: a create held for a fixed second (and a
    # signal sent when the state said "submitting") left a busy machine racing the grace period.
    arrived, signalled = threading.Event(), threading.Event()
    with sandbox(tmp_path / "sandbox") as (srv, _log):
        handle = srv.app.handle

        def hold_the_create(req: Any) -> Any:
            if req.method == "POST" and req.path.endswith("/createTask"):
                arrived.set()
                signalled.wait(WAIT_LIMIT)
            return handle(req)

        srv.app.handle = hold_the_create  # type: ignore[method-assign]
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=1),
            job_entries("kie", srv, media, ["a"]),
        )
        output = out_dir(manifest)
        proc = start("run", manifest)
        try:
            assert arrived.wait(WAIT_LIMIT), "the create never reached the sandbox"
            proc.send_signal(signal.SIGINT)
        finally:
            signalled.set()
        code, _out, err = finish(proc)
        assert code == 130, err
        row = state_rows(output)["a"]
        assert row["state"] == "running" and row["task_id"] == srv.ledger[0].task_id
        assert cli("run", manifest).returncode == 0
        assert len(srv.ledger) == 1
