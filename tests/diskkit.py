"""A real small file system for disk-full tests: a tmpfs mounted in the test, filled on purpose.

Mounting needs root (CI runs as root); elsewhere the tests that need it are skipped with the
reason. Nothing is simulated: the runner sees a real ENOSPC from the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, megabytes: int) -> Iterator[Path]:
    """A fresh tmpfs of ``megabytes`` mounted at ``where``; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, *, leave: int = 0, name: str = "filler.bin") -> Path:
    """Write a file until only ``leave`` bytes are free on ``disk`` (or the kernel says ENOSPC)."""
    path = disk / name
    block = b"\0" * (1 << 16)
    with path.open("ab") as fh:
        while True:
            room = free(disk) - leave
            if room <= 0:
                break
            try:
                fh.write(block[: min(len(block), room)])
                fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path
