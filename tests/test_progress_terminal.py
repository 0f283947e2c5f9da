"""Progress on real terminals and pipes: a pseudo-terminal sized 0x0 (what ``script``, a pty
nobody sized and some CI consoles report), a sized one that is resized, and a pipe; written to
by the reporters in-process and by ``python -m pipeline run`` as a subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from batchkit import (
    RUN_TIMEOUT,
    cli_env,
    command,
    job_entries,
    make_media,
    provider_block,
    write_manifest,
)

from pipeline.jobs import State
from pipeline.progress.bar import TqdmReporter, terminal_columns
from pipeline.progress.choose import choose_reporter
from pipeline.progress.events import (
    BatchFinished,
    BatchStarted,
    JobChanged,
    Notice,
    Waiting,
)
from pipeline.progress.lines import LineReporter

#: A bound while reading what a writer will send, not a timing assertion.
WAIT_LIMIT = 60.0


class Drain:
    """Reads a descriptor on a thread until end of file, so a writer never blocks on a full pty."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every slave descriptor is closed (Linux ptys)
                return
            if not chunk:
                return
            self.data += chunk

    def finish(self) -> str:
        self._thread.join(WAIT_LIMIT)
        assert not self._thread.is_alive(), "the writer never closed its end"
        os.close(self.fd)
        return self.data.decode("utf-8", "replace")


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


@contextlib.contextmanager
def terminal(rows: int, columns: int) -> Iterator[tuple[int, Drain]]:
    """A pty of the given size: its slave descriptor, and a drain on its master."""
    master, slave = pty.openpty()
    set_size(slave, rows, columns)
    yield slave, Drain(master)


def redraws(text: str) -> list[str]:
    """Every line and every redraw of the bar, as the terminal got them."""
    return [part for part in re.split(r"[\r\n]+", text) if part]


def script(reporter: TqdmReporter | LineReporter) -> None:
    reporter.emit(BatchStarted(total=3, counts={State.PENDING: 3}))
    reporter.emit(JobChanged("alice", State.RUNNING, "task-1"))
    reporter.emit(Waiting("429 pause", time.time() + 30))
    reporter.tick(time.time())
    reporter.emit(JobChanged("alice", State.DONE, billed_seconds=4.0))
    reporter.emit(Notice("a notice above the bar"))
    reporter.emit(JobChanged("bob", State.DONE, billed_seconds=4.0))
    reporter.emit(JobChanged("carol", State.FAILED, "moderation"))
    reporter.emit(BatchFinished({State.DONE: 2, State.FAILED: 1}, 8.0, 12.0))
    reporter.close()


def bar_on(slave: int) -> TqdmReporter:
    # closefd=False: the test closes the descriptor itself, to see end of file on the master.
    stream = os.fdopen(slave, "w", encoding="utf-8", closefd=False)
    reporter = choose_reporter(no_progress=False, stream=stream)
    assert isinstance(reporter, TqdmReporter), "a pty is a terminal: it gets the bar"
    return reporter


def test_a_terminal_that_reports_0x0_still_gets_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    with terminal(0, 0) as (slave, drain):
        assert os.get_terminal_size(slave) == os.terminal_size((0, 0))
        reporter = bar_on(slave)
        script(reporter)
        os.close(slave)
        text = drain.finish()
    parts = redraws(text)
    assert any(p.startswith("jobs, waiting: 429 pause until ") for p in parts)
    assert "info: a notice above the bar" in parts
    assert "carol: failed: moderation" in parts
    final = [p for p in parts if p.startswith("jobs: 100%")]
    assert final and "3/3" in final[-1] and "done 2, failed 1, billed 8.0 s" in final[-1]
    # 80 columns assumed, the last one left free: nothing wraps on a terminal that did not say.
    assert max(map(len, parts)) <= 79
    assert max(len(p) for p in parts if p.startswith("jobs")) == 79  # the bar fills the line


def test_a_0x0_terminal_uses_columns_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    with terminal(0, 0) as (slave, drain):
        script(bar_on(slave))
        os.close(slave)
        parts = redraws(drain.finish())
    assert max(len(p) for p in parts if p.startswith("jobs")) == 49


def test_a_sized_terminal_is_followed_through_a_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")  # the terminal's own size wins over the variable
    with terminal(24, 100) as (slave, drain):
        reporter = bar_on(slave)
        reporter.emit(BatchStarted(total=2, counts={State.PENDING: 2}))
        reporter.tick(time.time())
        set_size(slave, 24, 60)  # the user narrows the window
        reporter.tick(time.time())
        reporter.emit(BatchFinished({State.DONE: 2}, 8.0, 3.0))
        os.close(slave)
        parts = [p for p in redraws(drain.finish()) if p.startswith("jobs")]
    assert len(parts[0]) == 99
    assert len(parts[-1]) == 59


def test_terminal_columns_of_streams_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        assert terminal_columns(w) == 80  # a pipe has no size
        monkeypatch.setenv("COLUMNS", "x")
        assert terminal_columns(w) == 80  # nonsense in the variable is ignored
        monkeypatch.setenv("COLUMNS", "132")
        assert terminal_columns(w) == 132
        del r


def test_a_pipe_gets_lines_and_a_status_line_without_any_event() -> None:
    read, write = os.pipe()
    drain = Drain(read)
    stream = os.fdopen(write, "w", encoding="utf-8")
    reporter = choose_reporter(no_progress=False, stream=stream)
    assert isinstance(reporter, LineReporter), "a pipe is not a terminal: plain lines"
    start = time.time()
    reporter.emit(BatchStarted(total=1, counts={State.PENDING: 1}))
    reporter.emit(JobChanged("alice", State.RUNNING, "task-1"))
    reporter.emit(Waiting("rate limit"))
    reporter.tick(start + 31)  # a quiet half minute later, only the runner's tick arrives
    stream.close()
    lines = drain.finish().splitlines()
    assert lines[:3] == [
        "batch: 1 jobs (pending 1)",
        "[0/1] alice: running: task-1",
        "waiting: rate limit",
    ]
    assert re.fullmatch(
        r"status after 3\d s: 0/1 settled \(running 1\); 0\.0 s billed; waiting: rate limit",
        lines[3],
    ), lines


def test_the_bar_starts_no_thread() -> None:
    # tqdm's monitor thread may redraw at any moment; ours must not race the runner's writes.
    code = (
        "import io, threading\n"
        "from pipeline.progress.bar import TqdmReporter\n"
        "from pipeline.progress.events import BatchStarted\n"
        "r = TqdmReporter(io.StringIO())\n"
        "r.emit(BatchStarted(total=1, counts={}))\n"
        "print(threading.active_count())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "1"


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    media = make_media(root / "media")
    return write_manifest(
        root / "m", provider_block("sandbox", None), job_entries("sandbox", None, media, ["a", "b"])
    )


def test_run_on_a_0x0_terminal_draws_the_bar(manifest: Path, tmp_path: Path) -> None:
    env = cli_env()
    env.pop("COLUMNS", None)
    folder = tmp_path / "m"
    folder.mkdir()
    copy = folder / "manifest.yaml"
    copy.write_text(manifest.read_text(encoding="utf-8"), encoding="utf-8")
    with terminal(0, 0) as (slave, drain):
        proc = subprocess.Popen(
            command("run", copy), env=env, stdout=subprocess.PIPE, stderr=slave, text=True
        )
        os.close(slave)  # the child holds the only copy: end of file when it exits
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        shown = drain.finish()
    assert proc.returncode == 0, shown
    final = [p for p in redraws(shown) if p.startswith("jobs: 100%")]
    assert final and "2/2" in final[-1] and "done 2" in final[-1], shown
    assert "batch: 2 jobs" not in shown  # the bar, not the lines
    assert "batch: done 2" in out


def test_run_into_a_pipe_prints_lines(manifest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    copy = folder / "manifest.yaml"
    copy.write_text(manifest.read_text(encoding="utf-8"), encoding="utf-8")
    proc = subprocess.run(
        command("run", copy), env=cli_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "batch: 2 jobs (pending 2)"
    done = [
        line for line in lines if re.fullmatch(r"\[[12]/2\] [ab]: done \([0-9.]+ s billed\)", line)
    ]
    assert len(done) == 2, lines
    assert lines[-1].startswith("finished in ") and "\r" not in proc.stderr
