"""A full disk loses nothing: a free-space floor for new creates and a reserve for task ids.

Two rules, decided here (README "How a run keeps money safe"):

- **Floor.** No new create starts while the output directory's file system has less than
  ``floor`` bytes free (default 256 MiB, ``MOTION_PIPELINE_MIN_FREE_MB``): a create is money,
  and its result needs room. Tasks already paid for are still polled and downloaded.
- **Reserve.** At the start of a run, ``<output_dir>/state.reserve`` (default 8 MiB,
  ``MOTION_PIPELINE_RESERVE_MB``) is allocated. When a state commit fails because the disk is
  full, the reserve is deleted and the commit tried again: the room it frees is what the task
  ids of creates already on the wire need to be committed. The run then stops new creates and
  exits 3; the next run, with space, collects every paid task without a second create.

Space is asked from ``os.statvfs``, which costs microseconds: it is checked before each create.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pipeline.state.database import free_bytes

RESERVE_FILE = "state.reserve"
DEFAULT_FLOOR = 256 * 1024**2
DEFAULT_RESERVE = 8 * 1024**2


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (walks up while the device stays)."""
    path = path.resolve()
    dev = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def describe_disk(path: Path) -> str:
    """``the file system at /mnt/data (/dev/sdb1)``: what a user looks at to free space."""
    try:
        mount = mount_point(path)
    except OSError:
        return f"the file system holding {path}"
    device = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1] == str(mount):
                device = parts[0]
    return f"the file system at {mount}" + (f" ({device})" if device else "")


def _megabytes(n: int) -> str:
    return f"{n / 1024**2:.1f} MB"


class DiskGuard:
    """The floor and the reserve of one output directory, for one run."""

    def __init__(
        self, folder: Path, *, floor: int = DEFAULT_FLOOR, reserve: int = DEFAULT_RESERVE
    ) -> None:
        self.folder = Path(folder)
        self.floor = floor
        self.reserve_size = reserve
        self.reserve_path = self.folder / RESERVE_FILE
        self.released = False

    def disk(self) -> str:
        return describe_disk(self.folder)

    def shortage(self) -> str | None:
        """Why no new create may start now, or None when there is room."""
        try:
            free = free_bytes(self.folder)
        except OSError:
            return None  # cannot tell: the writes themselves will say
        if free >= self.floor and not self.released:
            return None
        if self.released:
            return f"disk full: {self.disk()} ran out of space ({_megabytes(free)} free)"
        return (
            f"disk nearly full: {_megabytes(free)} free on {self.disk()}, under the "
            f"{_megabytes(self.floor)} motion-pipeline keeps free for results and the state "
            "(MOTION_PIPELINE_MIN_FREE_MB)"
        )

    def allocate(self) -> None:
        """Create the reserve, if there is room for it and it is not there yet."""
        self.released = False
        if self.reserve_size <= 0:
            return
        with contextlib.suppress(OSError):
            if (
                self.reserve_path.is_file()
                and self.reserve_path.stat().st_size >= self.reserve_size
            ):
                return
            if free_bytes(self.folder) < self.reserve_size * 2:
                return  # no room to spare: the floor check will stop creates anyway
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, self.reserve_size)
                os.fsync(fd)
            except OSError:
                os.close(fd)
                fd = -1
                self.reserve_path.unlink(missing_ok=True)
            finally:
                if fd >= 0:
                    os.close(fd)

    def release(self) -> bool:
        """Free the reserve (the disk is full); True when it freed something."""
        self.released = True
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        return True

    def remove(self) -> None:
        """At the end of a run: the reserve is made again by the next one."""
        with contextlib.suppress(OSError):
            self.reserve_path.unlink(missing_ok=True)
