"""Blocking media work (ffprobe, ffmpeg, hashing) over many items in a few worker threads,
off the event loop: planning probes thousands of files, and the loop must keep polling."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from pipeline.errors import MediaError

T = TypeVar("T")
R = TypeVar("R")


async def run_bounded(
    items: Sequence[T], work: Callable[[T], R], *, limit: int | None = None
) -> list[R | MediaError]:
    """Run ``work`` over ``items`` in at most ``limit`` (CPU count) threads, off the event loop.

    Each thread takes the next item from a shared cursor, so there is one thread hand-off per
    worker rather than per item (that per-item cost is a third of a 4 ms probe). Results keep
    the order of ``items``; a MediaError is returned in place, not raised. On cancellation the
    workers stop taking new items (the ones running finish within their own timeouts).
    """
    results: list[R | MediaError | None] = [None] * len(items)
    cursor = iter(range(len(items)))
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            try:
                results[index] = work(items[index])
            except MediaError as exc:
                results[index] = exc

    workers = max(1, min(limit or os.cpu_count() or 1, len(items)))
    try:
        await asyncio.gather(*(asyncio.to_thread(worker) for _ in range(workers)))
    except BaseException:
        stop.set()
        raise
    return [r for r in results if r is not None]
