"""Progress of a batch: frozen event values from the runner, and the reporters that show them.

The runner only emits events (:class:`BatchStarted`, :class:`JobChanged`, :class:`Notice`,
:class:`Waiting`, :class:`BatchFinished`) and calls :meth:`Reporter.tick`; how they look is the
reporter's business:

* :class:`pipeline.progress.bar.TqdmReporter`: one bar, jobs settled/total with ETA, counts per
  state and seconds billed in the postfix, what the batch waits for in the description; notices
  and failures are printed above the bar.
* :class:`pipeline.progress.lines.LineReporter`: one plain line per job state change, notice and
  change of what the batch waits for, plus a status line every 30 s (counts, seconds billed,
  time running, the wait) so a log shows the batch is alive while tasks generate for minutes.
  No control characters: what a log file, CI or ``nohup`` should get.
* :class:`NullReporter` and :class:`RecordingReporter` (keeps the events, for tests).

Ticks, not threads: a reporter never starts a timer of its own. The runner calls
``reporter.tick(time.time())`` from its event loop about once a second, events or not; the
reporter decides whether that is the moment for a status line or a redraw. Everything a reporter
writes thus happens on the runner's thread, in order, and no second thread races the stream
(tqdm's monitor thread is kept out for the same reason). All times given to reporters
(``tick``'s ``now``, :attr:`Waiting.until`) are Unix times, :func:`time.time`.

:func:`choose_reporter` decides: a bar only when the stream is a terminal and ``--no-progress``
was not given; plain lines otherwise. ``--no-progress`` removes the redrawn bar, not the record
of what happened: the lines are what a user reads the morning after an overnight batch, and
``2>/dev/null`` is the way to silence them.

Texts from providers (failure reasons) reach a terminal here, so every line is redacted, put on
one line and has its terminal controls escaped (a reason carrying ANSI escapes must not repaint
the terminal; :func:`pipeline.settings.printable`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pipeline.jobs import State
from pipeline.settings import printable, redact

#: States a job does not leave during a run: they count as progress on the bar.
SETTLED = frozenset({State.DONE, State.FAILED, State.NEEDS_ATTENTION})

#: Seconds between two status lines of the line reporter.
STATUS_EVERY = 30.0

Level = Literal["info", "warning", "error"]
_E = TypeVar("_E")


@dataclass(frozen=True)
class BatchStarted:
    total: int
    counts: Mapping[State, int]
    """Jobs per state at the start (a resumed batch starts with some done)."""
    seconds_billed: float = 0.0
    """Seconds billed by earlier runs of this output directory."""


@dataclass(frozen=True)
class JobChanged:
    job_id: str
    state: State
    detail: str = ""
    """Why, for failures and needs-attention (already redacted by providers; redacted again)."""
    billed_seconds: float | None = None
    """Seconds this job is billed; counted once per job (the last value given wins)."""
    previous: State | None = None
    """The state left; when None the reporter uses the last state it saw for this job, or
    ``pending`` for a job it has not seen yet."""


@dataclass(frozen=True)
class Notice:
    text: str
    level: Level = "info"


@dataclass(frozen=True)
class Waiting:
    """What the batch as a whole waits for before it goes on; the latest event replaces the last.

    ``reason`` is a few words a user understands: ``"429 pause"``, ``"circuit breaker open"``,
    ``"rate limit"``, ``"budget"``, ``"provider unreachable"``. ``Waiting()`` (no reason) says the
    batch no longer waits. ``until`` is when the wait ends, as a Unix time, when it is known;
    reporters forget a wait by themselves once that time has passed.
    """

    reason: str = ""
    until: float | None = None


@dataclass(frozen=True)
class BatchFinished:
    counts: Mapping[State, int]
    seconds_billed: float
    wall_seconds: float


Event = BatchStarted | JobChanged | Notice | Waiting | BatchFinished


class Reporter(Protocol):
    def emit(self, event: Event) -> None: ...

    def tick(self, now: float) -> None:
        """Called about once a second by the runner's event loop, events or not.

        ``now`` is :func:`time.time`. Cheap when there is nothing to do; never blocks.
        """

    def close(self) -> None: ...


# --------------------------------------------------------------------------- shared


_BREAKS = re.compile(r"[\r\n\t\v\f]+")


def clean(text: str, secrets: Sequence[str] = ()) -> str:
    """Redacted, on one line, with terminal controls and bidi overrides escaped visibly."""
    return printable(_BREAKS.sub(" ", redact(text, secrets))).strip()


@dataclass
class Tally:
    """Counts per state, seconds billed and the current wait, kept from the events alone."""

    total: int = 0
    counts: dict[State, int] = field(default_factory=lambda: dict.fromkeys(State, 0))
    billed_before: float = 0.0
    waiting: Waiting | None = None
    _billed: dict[str, float] = field(default_factory=dict)
    _states: dict[str, State] = field(default_factory=dict)

    def start(self, event: BatchStarted) -> None:
        self.total = event.total
        self.counts = dict.fromkeys(State, 0) | dict(event.counts)
        self.billed_before = event.seconds_billed

    def change(self, event: JobChanged) -> None:
        old = event.previous or self._states.get(event.job_id, State.PENDING)
        self.counts[old] = max(0, self.counts[old] - 1)
        self.counts[event.state] += 1
        self._states[event.job_id] = event.state
        if event.billed_seconds is not None:
            self._billed[event.job_id] = event.billed_seconds

    def wait(self, event: Waiting) -> bool:
        """Take the new wait; True when what is shown changes."""
        new = event if event.reason else None
        changed = new != self.waiting
        self.waiting = new
        return changed

    def expire(self, now: float) -> Waiting | None:
        """Forget a wait whose end has passed; returns the wait forgotten."""
        over = self.waiting
        if over is None or over.until is None or now < over.until:
            return None
        self.waiting = None
        return over

    def finish(self, event: BatchFinished) -> None:
        self.counts = dict.fromkeys(State, 0) | dict(event.counts)
        self.waiting = None

    @property
    def settled(self) -> int:
        return sum(self.counts[s] for s in SETTLED)

    @property
    def seconds_billed(self) -> float:
        return self.billed_before + sum(self._billed.values())


def format_counts(counts: Mapping[State, int]) -> str:
    """``done 3, running 1, failed 1``: the non-zero states, in the order of the state machine."""
    parts = [f"{state.value} {counts[state]}" for state in State if counts.get(state)]
    return ", ".join(parts) or "no jobs"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12m 05s``, ``3h 02m``: how long, at the precision a person reads."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_waiting(waiting: Waiting, now: float | None = None) -> str:
    """``429 pause until 21:04:05`` (local time), with ``, 42 s left`` when ``now`` is given."""
    text = waiting.reason
    if waiting.until is not None:
        shape = "%H:%M:%S" if now is None or waiting.until - now < 86_400 else "%Y-%m-%d %H:%M:%S"
        text += f" until {time.strftime(shape, time.localtime(waiting.until))}"
        if now is not None:
            text += f", {format_duration(waiting.until - now)} left"
    return text


# --------------------------------------------------------------------------- reporters


class NullReporter:
    def emit(self, event: Event) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingReporter:
    """Keeps every event and tick, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ticks: list[float] = []
        self.closed = False

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def tick(self, now: float) -> None:
        self.ticks.append(now)

    def close(self) -> None:
        self.closed = True

    def of_type(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]
