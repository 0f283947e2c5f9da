"""The exclusive run lock of an output directory: one ``run`` (or ``resolve``) at a time.

``fcntl.flock`` on ``<output_dir>/state.lock``: the kernel drops the lock when the holder's
process dies, however it dies (SIGKILL included), so a stale lock can never block a resume.
The holder writes its pid, host and start time into the file so the refusal can name it.
The file is never deleted: unlinking a locked file lets a third process lock a fresh inode
while the second still waits on the old one.

A refusal is only given after :data:`SETTLE` seconds of trying: a flock belongs to the open
file, and every subprocess a thread of this process forks holds a copy of the descriptor for
the instant before it closes its inherited ones and execs. A run that just released the lock
(``run`` twice in one Python process, while a thread spawns ffmpeg) could otherwise be refused
by its own child's brief copy. A live holder keeps the lock far longer than that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from pipeline.errors import LockedError

LOCK_FILE = "state.lock"

SETTLE = 2.0
"""Seconds a lock held only by a forking child's copy takes at most to come free."""


def lock_path(output_dir: Path) -> Path:
    return Path(output_dir) / LOCK_FILE


class RunLock:
    """Held for the whole run; release with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, output_dir: Path) -> RunLock:
        """Take the lock or raise :class:`LockedError` naming the holder (after :data:`SETTLE` s
        at most: see the module docstring)."""
        path = lock_path(output_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Python opens descriptors non-inheritable, so an ffmpeg child cannot keep the lock
        # alive after this process dies.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, time.monotonic() + SETTLE)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(_refusal(path)) from None
        except BaseException:
            os.close(fd)
            raise
        # Naming the holder is a courtesy; the lock itself is what matters.
        with contextlib.suppress(OSError):
            _write_holder(fd)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r}, held={self.held})"


def read_holder(path: Path) -> dict[str, object] | None:
    """What the current (or last) holder wrote into the lock file, if readable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_holder(fd: int) -> None:
    doc = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    blob = json.dumps(doc).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, blob, 0)


def _lock(fd: int, until: float) -> None:
    """flock ``fd`` exclusively, trying every 10 ms until ``until``; BlockingIOError after."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= until:
                raise
            time.sleep(0.01)


def _refusal(path: Path) -> str:
    holder = read_holder(path)
    where = f"another run holds the lock {path}"
    if holder:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = holder.get("started_at")
        where += f" ({who}{f', since {since}' if since else ''})"
    return where + "; wait for it to finish or stop it, then run again"
