"""Progress of a batch: frozen event values from the runner, and the reporters that show them.

The runner only emits events (:class:`BatchStarted`, :class:`JobChanged`, :class:`Notice`,
:class:`BatchFinished`); how they look is the reporter's business:

* :class:`TqdmReporter`: one bar, jobs settled/total with ETA, counts per state and seconds billed
  in the postfix; notices and failures are printed above the bar.
* :class:`LineReporter`: one plain line per job state change and notice, no control characters:
  what a log file, CI or ``nohup`` should get.
* :class:`NullReporter` and :class:`RecordingReporter` (keeps the events, for tests).

:func:`choose_reporter` decides: a bar only when the stream is a terminal and ``--no-progress``
was not given; plain lines otherwise. ``--no-progress`` removes the redrawn bar, not the record
of what happened: the lines are what a user reads the morning after an overnight batch, and
``2>/dev/null`` is the way to silence them.

Texts from providers (failure reasons) reach a terminal here, so every line is redacted and
stripped of control characters (a reason carrying ANSI escapes must not repaint the terminal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TextIO, TypeVar

from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from pipeline.jobs import State
from pipeline.settings import redact

#: States a job does not leave during a run: they count as progress on the bar.
SETTLED = frozenset({State.DONE, State.FAILED, State.NEEDS_ATTENTION})

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
class BatchFinished:
    counts: Mapping[State, int]
    seconds_billed: float
    wall_seconds: float


Event = BatchStarted | JobChanged | Notice | BatchFinished


class Reporter(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- shared


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")


def clean(text: str, secrets: Sequence[str] = ()) -> str:
    """Redacted, on one line, without control or bidi-override characters."""
    return _UNSAFE.sub(" ", redact(text, secrets)).strip()


@dataclass
class Tally:
    """Counts per state and seconds billed, kept from the events alone."""

    total: int = 0
    counts: dict[State, int] = field(default_factory=lambda: dict.fromkeys(State, 0))
    billed_before: float = 0.0
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

    def finish(self, event: BatchFinished) -> None:
        self.counts = dict.fromkeys(State, 0) | dict(event.counts)

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


# --------------------------------------------------------------------------- reporters


class NullReporter:
    def emit(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingReporter:
    """Keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def of_type(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]


class LineReporter:
    """Plain lines for logs and pipes: one per job state change and notice."""

    def __init__(self, stream: TextIO, *, secrets: Sequence[str] = ()) -> None:
        self._stream = stream
        self._secrets = tuple(secrets)
        self._tally = Tally()

    def emit(self, event: Event) -> None:
        tally = self._tally
        if isinstance(event, BatchStarted):
            tally.start(event)
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
        else:
            tally.finish(event)
            line = (
                f"finished in {event.wall_seconds:.1f} s: {format_counts(event.counts)}; "
                f"{event.seconds_billed:.1f} s billed"
            )
        self._stream.write(clean(line, self._secrets) + "\n")
        self._stream.flush()  # `tail -f` on a log should see each line as it happens

    def close(self) -> None:
        self._stream.flush()


class TqdmReporter:
    """A tqdm bar: jobs settled/total, ETA, counts per state and seconds billed."""

    def __init__(
        self, stream: TextIO, *, secrets: Sequence[str] = (), mininterval: float = 0.5
    ) -> None:
        self._stream = stream
        self._secrets = tuple(secrets)
        self._mininterval = mininterval
        self._tally = Tally()
        self._bar: tqdm | None = None

    def _ensure_bar(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(
                total=self._tally.total or None,
                initial=self._tally.settled,
                file=self._stream,
                desc="jobs",
                unit="job",
                dynamic_ncols=True,
                mininterval=self._mininterval,
                smoothing=0.05,  # generations take minutes; the rate should not jump per job
            )
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        return self._bar

    def _postfix(self) -> str:
        return f"{format_counts(self._tally.counts)}, billed {self._tally.seconds_billed:.1f} s"

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
        if isinstance(event, JobChanged):
            self._tally.change(event)
            if event.state in (State.FAILED, State.NEEDS_ATTENTION):
                reason = f": {event.detail}" if event.detail else ""
                self._write(f"{event.job_id}: {event.state.value}{reason}")
            bar.set_postfix_str(self._postfix(), refresh=False)
            bar.update(self._tally.settled - bar.n)
            return
        self._tally.finish(event)
        bar.set_postfix_str(
            f"{format_counts(event.counts)}, billed {event.seconds_billed:.1f} s", refresh=False
        )
        bar.update(self._tally.settled - bar.n)
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # draws the final state once more
            self._bar = None


def choose_reporter(*, no_progress: bool, stream: TextIO, secrets: Sequence[str] = ()) -> Reporter:
    """A bar on a terminal, plain lines elsewhere or with ``--no-progress`` (see module doc)."""
    isatty = getattr(stream, "isatty", None)
    if not no_progress and isatty is not None and isatty():
        return TqdmReporter(stream, secrets=secrets)
    return LineReporter(stream, secrets=secrets)
