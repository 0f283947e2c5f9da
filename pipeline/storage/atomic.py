"""The one way this tool writes a file that must never be seen half-written.

Write to a temporary name in the same folder, fsync, rename over the target, fsync the folder:
a crash leaves the old file or the new one, never a mix. A full disk (or a folder that cannot
be written) is a :class:`~pipeline.errors.BatchStopped` naming the file; the temporary file is
removed on every failure path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import DISK_FULL_ERRNOS, BatchStopped


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(exc: OSError, path: Path) -> BatchStopped:
    """A local write failure stops the batch: every later write would hit the same disk."""
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        return BatchStopped(f"disk full writing {path}: {reason}")
    return BatchStopped(f"cannot write {path}: {reason}")


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically; ``durable=False`` skips the fsyncs (caches).

    ``data`` may be an iterable of chunks, written as they come (a 100,000-job file is never
    whole in memory).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    chunks = [data] if isinstance(data, bytes) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("xb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        tmp.replace(path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_error(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path
