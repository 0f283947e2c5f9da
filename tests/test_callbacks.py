"""Callbacks: the provider calls the run back when a task ends, and the run polls that task now.

End to end over loopback: the sandbox sends real callbacks (Kie, AceData, Kling bodies) to the
listener the run serves, and its store records every status query, so polls are counted on the
server's side. The listener's refusals are tested with raw sockets against a listener of its own.
Counts are asserted, never timings: the fallback poll is set far beyond the tasks' length, so a
run that finishes with about one poll per job was woken by its callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    SECRETS,
    Media,
    cli,
    job_entries,
    make_media,
    metadata,
    out_dir,
    provider_block,
    sandbox,
    status_json,
    write_manifest,
)

from pipeline.errors import ConfigError
from pipeline.manifest.model import CallbackConfig
from pipeline.run.callbacks import CallbackListener, task_ids
from pipeline.sandbox import SandboxServer

FALLBACK = 600  # seconds: far beyond the tasks, so only callbacks can end them early
LOOP_DEADLINE = 20.0  # a bound on the listener tests' waits, not a timing assertion


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hooked(folder: Path, kind: str, srv: SandboxServer, media: Media, jobs: int,
           port: int | None = None, **callback: Any) -> Path:  # fmt: skip
    port = port or free_port()
    path = write_manifest(
        folder,
        provider_block(kind, srv, concurrency=jobs),
        job_entries(kind, srv, media, [f"j{n}" for n in range(jobs)]),
    )
    text = path.read_text(encoding="utf-8")
    block = {"url": f"http://127.0.0.1:{port}/hook", "listen": f"127.0.0.1:{port}",
             "fallback_poll": FALLBACK, **callback}  # fmt: skip
    lines = "".join(f"  {k}: {v}\n" for k, v in block.items())
    path.write_text(text + "callback:\n" + lines, encoding="utf-8")
    return path


def polls(srv: SandboxServer) -> dict[str, int]:
    """Status queries per task, as the sandbox counted them."""
    out = {}
    for entry in srv.ledger:
        task = srv.app.store.get(entry.protocol, entry.task_id)
        assert task is not None
        out[entry.task_id] = len(task.polled_at)
    return out


def no_secret_in(output: Path, *texts: str) -> None:
    needles = [s.encode() for s in SECRETS]
    for path in [p for p in output.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"a key leaked into {path}"
    for text in texts:
        assert not any(s in text for s in SECRETS)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("kind", ["kie", "acedata", "kling"])
def test_a_batch_with_callbacks_needs_about_one_poll_per_job(
    tmp_path: Path, media: Media, kind: str
) -> None:
    jobs = 3
    with sandbox(tmp_path / "sb", {"latency": {"seconds": 1.0}}) as (srv, _log):
        manifest = hooked(tmp_path / "m", kind, srv, media, jobs)
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stderr
        delivered = [c for c in srv.callbacks if c.kind == "final"]
        counted = polls(srv)
    assert len(counted) == jobs and all(e.body for e in srv.ledger)
    assert all(c.delivered for c in delivered) and len(delivered) == jobs
    # The fallback is 600 s: without the callbacks no poll would have come before it.
    assert all(1 <= n <= 2 for n in counted.values()), counted
    assert sum(counted.values()) <= jobs + 1
    output = out_dir(manifest)
    assert len(metadata(output)) == jobs
    log = (output / "run.log").read_text(encoding="utf-8")
    assert "callbacks: 3 received, 3 for tasks of this run" in log
    no_secret_in(output, proc.stdout, proc.stderr, *(c.body.decode() for c in srv.callbacks))


def test_every_create_names_the_callback_url_in_the_providers_field(
    tmp_path: Path, media: Media
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        for kind, field in (("kie", "callBackUrl"), ("kling", "callback_url")):
            port = free_port()
            manifest = hooked(tmp_path / kind, kind, srv, media, 1, port)
            assert cli("run", manifest).returncode == 0
            body = srv.ledger.for_protocol(kind)[-1].body
            assert body[field] == f"http://127.0.0.1:{port}/hook"


@pytest.mark.parametrize("forge", ["unknown_task", "early_success"])
def test_a_forged_callback_costs_one_poll_and_changes_nothing(
    tmp_path: Path, media: Media, forge: str
) -> None:
    profile = {"latency": {"seconds": 1.0}, "faults": [{"kind": "callback_forged", "forge": forge}]}
    jobs = 3
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        manifest = hooked(tmp_path / "m", "kie", srv, media, jobs)
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stderr
        forged = [c for c in srv.callbacks if c.kind == "forged"]
        counted = polls(srv)
    assert len(forged) == jobs and all(c.delivered for c in forged)  # answered 200, ignored
    # unknown_task: no poll for it; early_success: one poll that sees the task still running.
    extra = 0 if forge == "unknown_task" else 1
    assert all(1 <= n <= 2 + extra for n in counted.values()), counted
    assert sum(counted.values()) <= jobs * (1 + extra) + 1
    doc = status_json(out_dir(manifest))
    assert doc["counts"].get("done") == jobs
    # The results are the real ones, not the forged "success" URLs (those answer 404).
    assert all(row["output"] for row in doc["jobs"])


def test_a_listen_address_in_use_stops_the_run_before_anything_is_sent(
    tmp_path: Path, media: Media
) -> None:
    with socket.socket() as taken, sandbox(tmp_path / "sb") as (srv, log):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        manifest = hooked(tmp_path / "m", "kie", srv, media, 2, port)
        proc = cli("run", manifest)
        assert proc.returncode == 2, proc.stderr
        assert f"callback.listen 127.0.0.1:{port}" in proc.stderr
        assert "in use" in proc.stderr and "Traceback" not in proc.stderr
        assert len(srv.ledger) == 0
        assert not [p for p in log.snapshot() if p[0] == "POST" and "upload" in p[1]]


def test_callback_urls_with_credentials_and_bad_ports_are_manifest_errors(
    tmp_path: Path, media: Media
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = hooked(tmp_path / "m", "kie", srv, media, 1,
                          url="http://user:hunter22@127.0.0.1:8765/hook",
                          listen="127.0.0.1:99999")  # fmt: skip
        proc = cli("validate", manifest)
    assert proc.returncode == 2
    assert "callback.url: url carries credentials" in proc.stdout + proc.stderr
    assert "hunter22" not in proc.stdout + proc.stderr
    assert "the port must be 1-65535" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the listener


class Hints:
    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def __call__(self, task_id: str) -> bool:
        self.asked.append(task_id)
        return task_id in self.known


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def post(body: bytes, *, length: int | None = None, path: str = "/hook") -> bytes:
    size = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode() + body  # fmt: skip


@pytest.fixture
def listener() -> Iterator[tuple[CallbackListener, Hints, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    hints = Hints({"task-1"})
    config = CallbackConfig(url="http://127.0.0.1/hook", host="127.0.0.1", port=0)
    hook = CallbackListener(config, hints, logging.getLogger("test"), max_body=1024)
    loop.run_until_complete(hook.start())
    try:
        yield hook, hints, loop
    finally:
        loop.run_until_complete(hook.close())
        loop.close()


def ask(fixture: Any, raw: bytes) -> str:
    hook, _hints, loop = fixture
    answer = loop.run_until_complete(asyncio.wait_for(exchange(hook.port, raw), LOOP_DEADLINE))
    return answer.decode("latin-1")


def test_the_listener_hints_known_tasks_and_ignores_unknown_ones(listener: Any) -> None:
    hook, hints, _ = listener
    assert ask(listener, post(b'{"code":200,"data":{"taskId":"task-1","state":"success"}}'))\
        .startswith("HTTP/1.1 200")  # fmt: skip
    assert ask(listener, post(b'{"task_id":"forged-9","task_status":"succeed"}'))\
        .startswith("HTTP/1.1 200")  # fmt: skip
    assert hints.asked == ["task-1", "forged-9"]
    assert (hook.counts.hinted, hook.counts.unknown, hook.counts.refused) == (1, 1, 0)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (post(b"{not json"), 400),
        (post(b'{"state":"success"}'), 400),  # names no task
        (post(b"[1,2]"), 400),
        (post(b"", length=10**9), 413),  # refused from its head: the body is never read
        (post(b"x" * 2000), 413),
        (b"GET /hook HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
        (b"POST /hook HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"hello\r\n\r\n", 400),
    ],
)
def test_malformed_and_huge_callbacks_are_refused_and_ignored(
    listener: Any, raw: bytes, status: int
) -> None:
    _hook, hints, _ = listener
    assert ask(listener, raw).startswith(f"HTTP/1.1 {status} ")
    assert hints.asked == []


def test_task_ids_are_read_where_each_provider_puts_them() -> None:
    assert task_ids({"data": {"taskId": "k1"}}) == ["k1"]  # Kie
    assert task_ids({"data": {"task_id": "k2"}}) == ["k2"]  # Kie's docs' other spelling
    assert task_ids({"task_id": "a1", "success": True}) == ["a1"]  # AceData, Kling
    assert task_ids({"task_id": 12345}) == ["12345"]
    assert task_ids({"task_id": "x" * 500}) == [] and task_ids([1]) == []
    assert task_ids({"task_id": True}) == []


def test_an_address_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CallbackConfig(url="http://x/hook", host="127.0.0.1", port=port)
        hook = CallbackListener(config, Hints(set()), logging.getLogger("test"))
        with pytest.raises(ConfigError, match=f"callback.listen 127.0.0.1:{port}: cannot listen"):
            asyncio.run(hook.start())
