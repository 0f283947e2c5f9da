"""The line reporter: plain lines for logs, pipes, CI and ``nohup`` (no bar, no control characters).

One line per job state change, notice and change of what the batch waits for; and, from
:meth:`LineReporter.tick`, a status line every
:data:`~pipeline.progress.events.STATUS_EVERY` seconds (settled/total, counts per state,
seconds billed, how long the run has been going, the wait). A batch whose tasks generate for
ten minutes writes no state change meanwhile: the status line is what tells the reader of the
log that it is alive, and what it waits for.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from pipeline.jobs import State
from pipeline.progress.events import (
    STATUS_EVERY,
    BatchStarted,
    Event,
    JobChanged,
    Notice,
    Tally,
    Waiting,
    clean,
    format_counts,
    format_duration,
    format_waiting,
)
from pipeline.progress.flushing import FlushSoon


class LineReporter:
    """Plain lines: one per event worth a line, and a status line every ``status_every`` s."""

    def __init__(
        self,
        stream: TextIO,
        *,
        secrets: Sequence[str] = (),
        status_every: float = STATUS_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        self._secrets = tuple(secrets)
        self._every = status_every
        self._clock = clock
        self._tally = Tally()
        self._started: float | None = None
        self._last_status = 0.0
        self._finished = False
        # Lines wait here until the end of the loop iteration, then go out in one write: stderr
        # is line-buffered (or unbuffered), so handing it each line was a system call a line.
        self._pending: list[str] = []
        self._flush = FlushSoon(self._drain, self._broken)
        self._silent = False

    def emit(self, event: Event) -> None:
        tally = self._tally
        if isinstance(event, BatchStarted):
            tally.start(event)
            self._started = self._last_status = self._clock()
            line = f"batch: {event.total} jobs ({format_counts(tally.counts)})"
            if event.seconds_billed:
                line += f"; {event.seconds_billed:.1f} s billed before"
        elif isinstance(event, JobChanged):
            tally.change(event)
            line = f"{event.job_id}: {event.state.value}"
            if tally.total:  # without a BatchStarted the total is unknown: no counter
                line = f"[{tally.settled}/{tally.total}] {line}"
            if event.detail:
                line += f": {event.detail}"
            if event.billed_seconds is not None and event.state is State.DONE:
                line += f" ({event.billed_seconds:.1f} s billed)"
        elif isinstance(event, Notice):
            line = f"{event.level}: {event.text}"
        elif isinstance(event, Waiting):
            before = tally.waiting
            if not tally.wait(event):
                return  # the same wait said again: a log line per second would bury the rest
            if tally.waiting is not None:
                line = f"waiting: {format_waiting(tally.waiting)}"
            else:
                line = f"no longer waiting: {before.reason if before else ''}"
        else:
            tally.finish(event)
            self._finished = True
            line = (
                f"finished in {event.wall_seconds:.1f} s: {format_counts(event.counts)}; "
                f"{event.seconds_billed:.1f} s billed"
            )
        self._write(line)

    def tick(self, now: float) -> None:
        if self._started is None or self._finished:
            return  # nothing to report on before the batch starts or after its summary
        over = self._tally.expire(now)
        if over is not None:
            self._write(f"no longer waiting: {over.reason}")
        if now < self._last_status:
            self._last_status = now  # the clock was set back: start the interval again
        if now - self._last_status >= self._every:
            self._last_status = now
            self._write(self.status_line(now))

    def status_line(self, now: float) -> str:
        """``status after 2m 30s: 1/3 settled (running 2, done 1); 8.5 s billed; waiting: ...``."""
        tally = self._tally
        elapsed = format_duration(now - (self._started if self._started is not None else now))
        line = (
            f"status after {elapsed}: {tally.settled}/{tally.total} settled "
            f"({format_counts(tally.counts)}); {tally.seconds_billed:.1f} s billed"
        )
        if tally.waiting is not None:
            line += f"; waiting: {format_waiting(tally.waiting, now)}"
        return line

    def _write(self, line: str) -> None:
        if self._silent:
            return
        self._pending.append(clean(line, self._secrets) + "\n")
        self._flush.request()  # `tail -f` sees each line within the loop iteration it was made

    def _drain(self) -> None:
        if self._silent or not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        self._stream.write(text)
        self._stream.flush()

    def _broken(self, exc: OSError) -> None:
        # Nobody can read these lines any more (a closed pipe, a full disk under a redirect):
        # the run goes on, and its state and run.log still record every step.
        self._silent = True
        self._pending.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._drain()
