"""Named places where crash tests kill the run with SIGKILL, to prove it resumes safely.

``MOTION_PIPELINE_CRASH_AT=NAME`` (or ``NAME:N`` for the N-th pass) makes the process kill
itself, with no cleanup at all, when it reaches :func:`crash_point` ``NAME``. Unset, every
crash point is a dictionary lookup and nothing else. The points, in submission order:

    before-intent, after-intent, after-create-sent, after-task-id, mid-download, after-rename
"""

from __future__ import annotations

import os
import signal

from pipeline.settings import Settings

POINTS = (
    "before-intent",
    "after-intent",
    "after-create-sent",
    "after-task-id",
    "mid-download",
    "after-rename",
)
_armed: dict[str, int] = {}


def arm(settings: Settings) -> None:
    """Read the crash point (if any) from the settings; call once per run."""
    _armed.clear()
    spec = settings.crash_at
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
    _armed[name] = int(nth or 1)


def crash_point(name: str) -> None:
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
