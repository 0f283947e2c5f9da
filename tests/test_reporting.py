"""Progress reporters: scripted event sequences and ticks rendered to real streams.

Terminals and pipes (a real pty, sized 0x0, and a real pipe) are in test_progress_terminal.py.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest

from pipeline.jobs import State
from pipeline.progress.bar import TqdmReporter
from pipeline.progress.choose import choose_reporter
from pipeline.progress.events import (
    BatchFinished,
    BatchStarted,
    Event,
    JobChanged,
    Notice,
    NullReporter,
    RecordingReporter,
    Reporter,
    Tally,
    Waiting,
    clean,
    format_duration,
    format_waiting,
)
from pipeline.progress.lines import LineReporter
from pipeline.run.log import RUN_LOG, close_run_log, open_run_log

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


class CountingStream(io.StringIO):
    """A stream that counts its writes and flushes: on stderr each is a system call."""

    flushes = writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_of_one_loop_iteration_share_one_write() -> None:
    out = CountingStream()
    reporter = LineReporter(out)

    async def burst() -> tuple[int, int]:
        for event in SCRIPT[:5]:
            reporter.emit(event)
        during = (out.writes, out.flushes)
        await asyncio.sleep(0)  # the loop's turn: the queued write and flush run
        return during, (out.writes, out.flushes)

    assert asyncio.run(burst()) == ((0, 0), (1, 1))  # five lines, one write
    reporter.emit(SCRIPT[5])  # outside a loop: at once
    assert (out.writes, out.flushes) == (2, 2) and out.getvalue().count("\n") == 6


class ClosedPipe(io.StringIO):
    """stderr piped into a reader that has gone: every flush fails."""

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reporter_whose_stream_broke_falls_silent_without_a_traceback() -> None:
    out = ClosedPipe()
    reporter = LineReporter(out)
    unhandled: list[object] = []

    async def burst() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        reporter.emit(SCRIPT[0])
        await asyncio.sleep(0)  # the queued flush fails here
        reporter.emit(SCRIPT[1])
        await asyncio.sleep(0)

    asyncio.run(burst())
    reporter.close()
    assert unhandled == [] and out.getvalue().count("\n") == 1  # the second line was not written


def test_run_log_lines_of_one_iteration_reach_the_file_by_its_end(tmp_path: Path) -> None:
    logger = open_run_log(tmp_path, [KEY])
    log = tmp_path / RUN_LOG

    async def burst() -> tuple[str, str]:
        for n in range(3):
            logger.info("line %d", n)
        during = log.read_text()
        await asyncio.sleep(0)
        return during, log.read_text()

    try:
        during, after = asyncio.run(burst())
        assert during == "" and after.count("\n") == 3 and after.endswith("line 2\n")
        logger.info("from outside the loop")
        assert log.read_text().endswith("from outside the loop\n")
    finally:
        close_run_log(logger)


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
        "[3/3] bob-tango: failed: moderation: \\x1b[31mblocked\\x1b[0m key ***",
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
    assert "bob-tango: failed: moderation: \\x1b[31mblocked\\x1b[0m key ***\n" in text
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
    recording.tick(5.0)
    play(recording)
    assert recording.events == SCRIPT and recording.closed and recording.ticks == [5.0]
    assert [e.job_id for e in recording.of_type(JobChanged)][:2] == ["alice-salsa", "bob-tango"]
    assert recording.of_type(Notice) == [SCRIPT[5]]
    null = NullReporter()
    null.tick(1.0)
    play(null)  # accepts everything, prints nothing


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


def test_clean_escapes_terminal_tricks_on_one_line() -> None:
    # Line breaks become spaces (one event, one line; \r would overwrite it); every other
    # control, bidi override and lone surrogate is shown escaped, so the text still says what
    # the provider sent.
    assert clean("a\r\nb\x1b[2Jc\u202edef\x07\ud800", []) == "a b\\x1b[2Jc\\u202edef\\x07\\ud800"
    assert clean(f"Bearer {KEY}", [KEY]) == "Bearer ***"


# --------------------------------------------------------------------------- ticks and waits

T0 = 1_700_000_000.0  # a Unix time; the reporters are given their clock


def test_line_reporter_writes_a_status_line_every_30_s_from_ticks_alone() -> None:
    out = io.StringIO()
    now = [T0]
    reporter = LineReporter(out, clock=lambda: now[0])
    reporter.tick(T0 + 100)  # before the batch starts: nothing to say
    reporter.emit(BatchStarted(total=3, counts={State.PENDING: 3}, seconds_billed=2.0))
    reporter.emit(JobChanged("a", State.RUNNING, "task-1"))
    for second in range(1, 95):  # 94 quiet seconds: the tasks generate, no event arrives
        reporter.tick(T0 + second)
    reporter.emit(JobChanged("a", State.DONE, billed_seconds=5.0))
    reporter.emit(BatchFinished({State.DONE: 1, State.PENDING: 2}, 7.0, 95.0))
    reporter.tick(T0 + 200)  # after the summary: nothing more
    assert out.getvalue().splitlines() == [
        "batch: 3 jobs (pending 3); 2.0 s billed before",
        "[0/3] a: running: task-1",
        "status after 30 s: 0/3 settled (pending 2, running 1); 2.0 s billed",
        "status after 1m 00s: 0/3 settled (pending 2, running 1); 2.0 s billed",
        "status after 1m 30s: 0/3 settled (pending 2, running 1); 2.0 s billed",
        "[1/3] a: done (5.0 s billed)",
        "finished in 95.0 s: pending 2, done 1; 7.0 s billed",
    ]


def test_status_interval_is_not_reset_by_event_lines_and_survives_a_clock_set_back() -> None:
    out = io.StringIO()
    reporter = LineReporter(out, status_every=10, clock=lambda: T0)
    reporter.emit(BatchStarted(total=1, counts={State.PENDING: 1}))
    reporter.tick(T0 + 9)
    reporter.emit(Notice("still here"))
    reporter.tick(T0 + 10)  # 10 s after the start, whatever was printed in between
    reporter.tick(T0 + 5)  # the clock went back: the interval starts again from here
    reporter.tick(T0 + 14)
    reporter.tick(T0 + 15)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "batch",
        "info",
        "status after 10 s",
        "status after 15 s",
    ]


def test_line_reporter_shows_what_the_batch_waits_for() -> None:
    out = io.StringIO()
    reporter = LineReporter(out, status_every=30, clock=lambda: T0)
    until = T0 + 42
    shown = time.strftime("%H:%M:%S", time.localtime(until))
    reporter.emit(BatchStarted(total=2, counts={State.PENDING: 2}))
    reporter.emit(Waiting("429 pause", until))
    reporter.emit(Waiting("429 pause", until))  # said again each second: one line only
    reporter.tick(T0 + 30)
    reporter.tick(T0 + 42)  # the pause is over by its own terms
    reporter.emit(Waiting("circuit breaker open"))
    reporter.emit(Waiting("provider unreachable: \x1b[2Japi.kie.ai"))  # replaces the last
    reporter.emit(Waiting())  # no longer waiting
    reporter.emit(Waiting())  # nothing changed
    reporter.emit(Waiting("budget"))
    reporter.emit(BatchFinished({State.PENDING: 2}, 0.0, 60.0))
    assert out.getvalue().splitlines() == [
        "batch: 2 jobs (pending 2)",
        f"waiting: 429 pause until {shown}",
        f"status after 30 s: 0/2 settled (pending 2); 0.0 s billed; waiting: 429 pause until {shown}, 12 s left",
        "no longer waiting: 429 pause",
        "waiting: circuit breaker open",
        "waiting: provider unreachable: \\x1b[2Japi.kie.ai",
        "no longer waiting: provider unreachable: \\x1b[2Japi.kie.ai",
        "waiting: budget",
        "finished in 60.0 s: pending 2; 0.0 s billed",
    ]


def test_tqdm_reporter_shows_the_wait_and_redraws_on_ticks() -> None:
    out = io.StringIO()
    reporter = TqdmReporter(out, mininterval=0)
    reporter.tick(T0)  # no bar yet: nothing drawn
    assert out.getvalue() == ""
    now = time.time()
    until = now + 90
    shown = time.strftime("%H:%M:%S", time.localtime(until))
    reporter.emit(BatchStarted(total=2, counts={State.PENDING: 2}))
    reporter.emit(JobChanged("a", State.RUNNING))
    reporter.emit(Waiting("429 pause", until))
    reporter.tick(now + 30)
    last = out.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith(f"jobs, waiting: 429 pause until {shown}, 1m 00s left:")
    drawn = len(out.getvalue())
    reporter.tick(now + 31)  # no event: the tick alone redraws (elapsed, ETA, countdown)
    assert len(out.getvalue()) > drawn
    assert (
        out.getvalue()
        .rsplit("\r", 1)[-1]
        .startswith(f"jobs, waiting: 429 pause until {shown}, 59 s left:")
    )
    reporter.tick(until)  # the pause is over
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("jobs:   0%")
    reporter.emit(Waiting("budget"))
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("jobs, waiting: budget:")
    reporter.emit(Waiting())
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("jobs:   0%")
    reporter.close()
    reporter.tick(now + 100)  # closed: nothing drawn
    assert not out.getvalue().endswith("\r")


def test_every_reporter_has_tick() -> None:
    reporters: list[Reporter] = [
        NullReporter(),
        RecordingReporter(),
        LineReporter(io.StringIO()),
        TqdmReporter(io.StringIO()),
    ]
    for reporter in reporters:
        reporter.tick(T0)
        reporter.close()


def test_waiting_is_a_frozen_value() -> None:
    wait = Waiting("429 pause", T0)
    with pytest.raises(AttributeError):
        wait.reason = "x"  # type: ignore[misc]
    assert wait == Waiting("429 pause", T0) and Waiting() == Waiting("", None)


def test_durations_and_waits_read_like_a_person_would_say_them() -> None:
    assert [format_duration(s) for s in (-3, 0, 59.9, 60, 725, 3599, 3600, 10_980)] == [
        "0 s",
        "0 s",
        "59 s",
        "1m 00s",
        "12m 05s",
        "59m 59s",
        "1h 00m",
        "3h 03m",
    ]
    at = time.strftime("%H:%M:%S", time.localtime(T0))
    assert format_waiting(Waiting("rate limit")) == "rate limit"
    assert format_waiting(Waiting("429 pause", T0)) == f"429 pause until {at}"
    assert format_waiting(Waiting("429 pause", T0), T0 - 5) == f"429 pause until {at}, 5 s left"
    far = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))
    assert format_waiting(Waiting("budget", T0), T0 - 2 * 86_400).startswith(f"budget until {far}")
