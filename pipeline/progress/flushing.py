"""Flushing a text stream once per event-loop iteration instead of once per line.

A run writes a few lines per job, to ``run.log`` and to stderr, and a flush per line is a write
system call per line (about 5% of a 2,000-job run's event loop, bench/RESULTS.md). Lines written
during one iteration of the loop go out together at its end: still at once for ``tail -f``, and
a crash loses at most the lines of the iteration it struck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FlushSoon:
    """Calls ``flush`` at the end of the current loop iteration, once however often asked.

    Outside an event loop (a plain function, another thread) it flushes at once. A failed flush
    (a full disk, a closed pipe) goes to ``on_error``, wherever it ran: raised from a loop
    callback it would reach nobody but asyncio's "Exception in callback" traceback. The owner
    flushes for real when it closes: a callback still queued when the loop stops never runs.
    """

    def __init__(self, flush: Callable[[], None], on_error: Callable[[OSError], None]) -> None:
        self._flush = flush
        self._on_error = on_error
        self._queued = False

    def request(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run()
            return
        if not self._queued:
            self._queued = True
            loop.call_soon(self._run)

    def _run(self) -> None:
        self._queued = False
        try:
            self._flush()
        except OSError as exc:
            self._on_error(exc)
