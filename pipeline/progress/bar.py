"""The terminal reporter: one tqdm bar, redrawn on events and on the runner's ticks.

Two things tqdm gets wrong for us, handled here:

* Size. tqdm asks the terminal for its size and subtracts one; a terminal that answers 0x0
  (``script``, a pty nobody sized, some CI consoles and containers) gives it -1 rows and
  columns, and it draws nothing at all. The width is asked here instead, before every draw (a
  resize is followed), and a terminal without one gets ``COLUMNS`` or 80.
* Threads. tqdm starts a monitor thread that may redraw a bar at any time; ours must write only
  from the runner's thread, interleaved with ``tqdm.write`` lines, so the monitor is disabled for
  this bar and :meth:`TqdmReporter.tick` redraws instead (elapsed time, ETA, a wait's countdown).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from typing import TextIO

from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from pipeline.jobs import State
from pipeline.progress.events import (
    BatchStarted,
    Event,
    JobChanged,
    Notice,
    Tally,
    Waiting,
    clean,
    format_counts,
    format_waiting,
)

#: Columns assumed when the terminal reports none and ``COLUMNS`` is not set.
DEFAULT_COLUMNS = 80


def terminal_columns(stream: TextIO) -> int:
    """Columns of the terminal behind ``stream``; ``COLUMNS`` or 80 when it reports 0 or none."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        columns = 0  # no descriptor (a wrapped stream) or not a terminal after all
    if columns > 0:
        return columns
    env = os.environ.get("COLUMNS", "").strip()
    return int(env) if env.isdecimal() and int(env) > 0 else DEFAULT_COLUMNS


class _Bar(tqdm):  # type: ignore[misc]  # tqdm is untyped
    monitor_interval = 0  # no monitor thread for this bar: see the module docstring


class TqdmReporter:
    """A tqdm bar: jobs settled/total, ETA, counts per state and seconds billed, the wait."""

    def __init__(
        self, stream: TextIO, *, secrets: Sequence[str] = (), mininterval: float = 0.5
    ) -> None:
        self._stream = stream
        self._secrets = tuple(secrets)
        self._mininterval = mininterval
        self._tally = Tally()
        self._bar: _Bar | None = None

    def _ensure_bar(self) -> _Bar:
        if self._bar is None:
            self._bar = _Bar(
                total=self._tally.total or None,
                initial=self._tally.settled,
                file=self._stream,
                desc="jobs",
                unit="job",
                ncols=self._columns(),
                nrows=24,  # one bar: the row count only matters to tqdm for stacked bars
                dynamic_ncols=False,  # asked by _columns() instead: tqdm's breaks on 0x0
                mininterval=self._mininterval,
                miniters=1,
                smoothing=0.05,  # generations take minutes; the rate should not jump per job
            )
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        return self._bar

    def _columns(self) -> int:
        return terminal_columns(self._stream) - 1  # the last column would wrap on some terminals

    def _postfix(self) -> str:
        return f"{format_counts(self._tally.counts)}, billed {self._tally.seconds_billed:.1f} s"

    def _describe(self, bar: _Bar, now: float | None = None) -> None:
        waiting = self._tally.waiting
        now = time.time() if now is None else now  # a countdown, so the bar says how long
        desc = "jobs" if waiting is None else f"jobs, waiting: {format_waiting(waiting, now)}"
        bar.set_description_str(clean(desc, self._secrets), refresh=False)
        bar.set_postfix_str(self._postfix(), refresh=False)
        bar.ncols = self._columns()

    def _write(self, text: str) -> None:
        tqdm.write(clean(text, self._secrets), file=self._stream)

    def emit(self, event: Event) -> None:
        if isinstance(event, BatchStarted):
            self._tally.start(event)
            self._ensure_bar()
            return
        if isinstance(event, Notice):
            self._write(f"{event.level}: {event.text}")
            return
        bar = self._ensure_bar()
        if isinstance(event, Waiting):
            if self._tally.wait(event):
                self._describe(bar)
                bar.refresh()
            return
        if isinstance(event, JobChanged):
            self._tally.change(event)
            if event.state in (State.FAILED, State.NEEDS_ATTENTION):
                reason = f": {event.detail}" if event.detail else ""
                self._write(f"{event.job_id}: {event.state.value}{reason}")
            self._describe(bar)
            bar.update(self._tally.settled - bar.n)
            return
        self._tally.finish(event)
        self._describe(bar)
        bar.set_postfix_str(
            f"{format_counts(event.counts)}, billed {event.seconds_billed:.1f} s", refresh=False
        )
        bar.update(self._tally.settled - bar.n)
        self.close()

    def tick(self, now: float) -> None:
        """Redraw: elapsed time and ETA move, a wait counts down or ends, a resize is followed."""
        if self._bar is None:
            return  # not started yet, or closed
        self._tally.expire(now)
        self._describe(self._bar, now)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # draws the final state once more
            self._bar = None
