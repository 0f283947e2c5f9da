"""The run lock: exclusive, refuses at once naming the holder, released when the holder dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pipeline.errors import LockedError
from pipeline.media.tools import find_tools, run_tool
from pipeline.state.lock import RunLock, lock_path, read_holder

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.state.lock import RunLock
    lock = RunLock.acquire(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
""")


def _spawn_holder(out: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_acquirer_in_same_process_is_refused(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path) as lock:
        assert lock.held
        with pytest.raises(LockedError) as info:
            RunLock.acquire(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
        assert socket.gethostname() in str(info.value)
        assert info.value.exit_code == 4
    assert not lock.held
    # Released: the next run gets it.
    with RunLock.acquire(tmp_path):
        pass


def test_a_released_lock_is_not_refused_for_a_forking_childs_brief_copy(tmp_path: Path) -> None:
    """Threads spawning subprocesses (the sandbox rendering, ffprobe) give each child a copy of
    every descriptor for the instant before it execs; the lock held only by such a copy must
    not refuse the next run of this process (it did, on CI: test_providers_fal)."""
    tools = find_tools()
    stop = threading.Event()

    def spawn() -> None:
        while not stop.is_set():
            run_tool([str(tools.ffprobe), "-version"], timeout=30)

    spawners = [threading.Thread(target=spawn) for _ in range(2)]
    for thread in spawners:
        thread.start()
    try:
        for _ in range(200):  # a refusal raises LockedError and fails the test
            with RunLock.acquire(tmp_path):
                pass
    finally:
        stop.set()
        for thread in spawners:
            thread.join()


def test_holder_is_written_into_the_lock_file(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path):
        holder = read_holder(lock_path(tmp_path))
        assert holder is not None
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()


def test_lock_of_a_killed_process_is_released_by_the_os(tmp_path: Path) -> None:
    child = _spawn_holder(tmp_path)
    try:
        with pytest.raises(LockedError) as info:
            RunLock.acquire(tmp_path)
        assert f"pid {child.pid}" in str(info.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The lock file is still there, with the dead holder's pid, but the lock is free.
    assert lock_path(tmp_path).exists()
    with RunLock.acquire(tmp_path) as lock:
        assert lock.held


def test_refusal_without_a_readable_holder_still_explains(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path):
        lock_path(tmp_path).write_text("garbage")
        with pytest.raises(LockedError, match="another run holds the lock"):
            RunLock.acquire(tmp_path)
