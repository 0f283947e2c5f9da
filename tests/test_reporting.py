"""Progress reporters: scripted event sequences rendered to real streams."""

from __future__ import annotations

import io

import pytest

from pipeline.jobs import State
from pipeline.reporting import (
    BatchFinished,
    BatchStarted,
    Event,
    JobChanged,
    LineReporter,
    Notice,
    NullReporter,
    RecordingReporter,
    Reporter,
    Tally,
    TqdmReporter,
    choose_reporter,
    clean,
)

KEY = "kie-SECRET-0123456789abcdef"

# A resumed batch of 3: one done earlier (4 s billed), two to run; one succeeds, one fails.
SCRIPT: list[Event] = [
    BatchStarted(total=3, counts={State.DONE: 1, State.PENDING: 2}, seconds_billed=4.0),
    JobChanged("alice-salsa", State.SUBMITTING),
    JobChanged("bob-tango", State.SUBMITTING),
    JobChanged("alice-salsa", State.RUNNING, "task-1", previous=State.SUBMITTING),
    JobChanged("bob-tango", State.RUNNING, "task-2"),
    Notice("429 from kie: pausing creates for 5 s", "warning"),
    JobChanged("alice-salsa", State.DOWNLOADING),
    JobChanged("alice-salsa", State.DONE, billed_seconds=8.5),
    JobChanged("bob-tango", State.FAILED, f"moderation: \x1b[31mblocked\x1b[0m\nkey {KEY}"),
    BatchFinished(counts={State.DONE: 2, State.FAILED: 1}, seconds_billed=12.5, wall_seconds=61.0),
]


def play(reporter: Reporter, events: list[Event] = SCRIPT) -> None:
    for event in events:
        reporter.emit(event)
    reporter.close()


def test_line_reporter_prints_one_clean_line_per_event() -> None:
    out = io.StringIO()
    play(LineReporter(out, secrets=[KEY]))
    assert out.getvalue().splitlines() == [
        "batch: 3 jobs (pending 2, done 1); 4.0 s billed before",
        "[1/3] alice-salsa: submitting",
        "[1/3] bob-tango: submitting",
        "[1/3] alice-salsa: running: task-1",
        "[1/3] bob-tango: running: task-2",
        "warning: 429 from kie: pausing creates for 5 s",
        "[1/3] alice-salsa: downloading",
        "[2/3] alice-salsa: done (8.5 s billed)",
        "[3/3] bob-tango: failed: moderation:  [31mblocked [0m key ***",
        "finished in 61.0 s: done 2, failed 1; 12.5 s billed",
    ]


def test_line_reporter_without_batch_started_prints_no_counter() -> None:
    out = io.StringIO()
    play(LineReporter(out), [JobChanged("a", State.RUNNING, "task-9")])
    assert out.getvalue() == "a: running: task-9\n"


def test_line_reporter_output_has_no_control_characters() -> None:
    out = io.StringIO()
    play(LineReporter(out))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert all(ch == "\n" or ch.isprintable() for ch in text)


def test_tqdm_reporter_shows_done_total_states_and_seconds_billed() -> None:
    out = io.StringIO()
    play(TqdmReporter(out, secrets=[KEY], mininterval=0))
    text = out.getvalue()
    final = text.rsplit("\r", 1)[-1]  # the last redraw of the bar
    assert "3/3" in final
    assert "done 2, failed 1, billed 12.5 s" in final
    assert "jobs: 100%" in final
    # Failures and notices are printed above the bar, cleaned and redacted.
    assert "warning: 429 from kie: pausing creates for 5 s\n" in text
    assert "bob-tango: failed: moderation:  [31mblocked [0m key ***\n" in text
    assert KEY not in text and "\x1b" not in text


def test_tqdm_reporter_counts_progress_while_running() -> None:
    out = io.StringIO()
    reporter = TqdmReporter(out, mininterval=0)
    play(reporter, SCRIPT[:8])  # up to alice done, bob still running
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "2/3" in final
    assert "running 1, done 2, billed 12.5 s" in final


def test_tally_follows_previous_states_and_counts_billing_once() -> None:
    tally = Tally()
    tally.start(BatchStarted(total=2, counts={State.PENDING: 1, State.RUNNING: 1}))
    tally.change(JobChanged("a", State.DONE, billed_seconds=5.0, previous=State.RUNNING))
    tally.change(JobChanged("b", State.SUBMITTING))  # unseen, no previous: it was pending
    tally.change(JobChanged("b", State.RUNNING, billed_seconds=3.0))  # seen: from submitting
    tally.change(JobChanged("b", State.DOWNLOADING, billed_seconds=3.0))  # same job: once
    assert {s: n for s, n in tally.counts.items() if n} == {State.DONE: 1, State.DOWNLOADING: 1}
    assert tally.settled == 1
    assert tally.seconds_billed == 8.0


def test_recording_and_null_reporters() -> None:
    recording = RecordingReporter()
    play(recording)
    assert recording.events == SCRIPT and recording.closed
    assert [e.job_id for e in recording.of_type(JobChanged)][:2] == ["alice-salsa", "bob-tango"]
    assert recording.of_type(Notice) == [SCRIPT[5]]
    play(NullReporter())  # accepts everything, prints nothing


def test_events_are_frozen_values() -> None:
    event = JobChanged("a", State.DONE)
    with pytest.raises(AttributeError):
        event.state = State.FAILED  # type: ignore[misc]
    assert event == JobChanged("a", State.DONE)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_choose_reporter() -> None:
    assert isinstance(choose_reporter(no_progress=False, stream=Terminal()), TqdmReporter)
    # --no-progress removes the bar, not the record: plain lines remain.
    assert isinstance(choose_reporter(no_progress=True, stream=Terminal()), LineReporter)
    assert isinstance(choose_reporter(no_progress=False, stream=io.StringIO()), LineReporter)


def test_clean_strips_terminal_tricks() -> None:
    assert clean("a\rb\x1b[2Jc\u202edef\x07", []) == "a b [2Jc def"
    assert clean(f"Bearer {KEY}", [KEY]) == "Bearer ***"
