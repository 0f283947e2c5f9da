"""When to ask about a running task next: the polling policy, pure (no clock, no I/O).

``poll_interval`` is the finest gap the user allows between two polls of one task, not a rhythm.
Polls are spent where tasks end: the poller learns, per batch, after how long tasks of each kind
(mode and billed seconds) ended (:class:`Durations`), and :func:`next_poll` aims each task's
next poll at the conditional median of those end times among the ones still ahead of it. A
batch of equal tasks is then polled about twice per task (once just before its end, once just
after); a spread-out batch is polled where its ends are dense, sparsely in the tails.

- A provider's own progress (a fraction) is better than the batch's history: the task's end is
  extrapolated from it.
- Before anything has ended (the batch's first tasks), the gap grows with the task's age
  (``cold_ratio``), from the finest interval up.
- A task older than every learned end backs off with how overdue it is (``overdue_ratio``).
- No gap is longer than ``max_gap`` (nothing starves, and a wrong estimate costs at most that),
  and a task is asked about right when it reaches ``task_timeout``, so the timeout still fires.

Everything here takes times as plain numbers (seconds on one clock) and is tested without one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """The knobs of :func:`next_poll`; ``interval`` and ``timeout`` come from the manifest."""

    interval: float
    """The finest gap between two polls of one task (``poll_interval``)."""
    max_gap: float
    """The longest gap between two polls of one task, whatever the estimate says."""
    timeout: float
    """``task_timeout``: a task is polled once it has run this long, so its timeout fires."""
    quantile: float = 0.25
    """Where among the learned ends still ahead of a task its next poll goes."""
    cold_ratio: float = 0.5
    """With nothing learned yet: the next gap is this fraction of the task's age."""
    overdue_ratio: float = 0.5
    """Past every learned end: the next gap is this fraction of how overdue the task is."""
    precision: float = 0.1
    """Among the learned ends: no gap longer than this fraction of the task's age, so a task
    is seen ended within about that share of its run time."""
    lag: float = 0.5
    """A poll aimed at a learned end goes ``lag * interval`` seconds after it: a poll a moment
    late finds the task done, one a moment early costs a second poll (and the end->poll delay
    stays under about one interval)."""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"poll interval must be > 0, got {self.interval}")
        if self.max_gap < self.interval:
            raise ValueError(f"max gap {self.max_gap} is shorter than the interval {self.interval}")
        if not 0.0 <= self.quantile < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {self.quantile}")

    def resolution(self, age: float, finest: float | None = None) -> float:
        """How far before a first poll that found its task ended the end is assumed to lie:
        a share of the task's age (a share, so a too-late estimate corrects in a few tasks)."""
        return max(self.interval if finest is None else finest, self.precision * age)


@dataclass(frozen=True)
class Estimate:
    """After how many seconds (from submission) finished tasks like this one ended, sorted."""

    ends: tuple[float, ...]

    @classmethod
    def of(cls, ends: Sequence[float]) -> Estimate | None:
        return cls(tuple(sorted(ends))) if ends else None


def next_poll(
    policy: Policy,
    *,
    now: float,
    submitted_at: float,
    polls: Sequence[float] = (),
    estimate: Estimate | None = None,
    progress: float | None = None,
) -> float:
    """The time of a running task's next poll, on the clock ``now`` and ``submitted_at`` use.

    ``polls`` are the times of its earlier polls (only the last one matters: two polls of one
    task are never closer than ``policy.interval``); ``progress`` is the provider's own fraction
    done, when it reports one.
    """
    age = max(0.0, now - submitted_at)
    floor = max(now, submitted_at + policy.interval)
    if polls:
        floor = max(floor, polls[-1] + policy.interval)
    target = submitted_at + _target_age(policy, age, estimate, progress)
    due = min(max(target, floor), max(floor, now + policy.max_gap))
    deadline = submitted_at + policy.timeout
    if now < deadline < due:
        due = max(deadline, floor)
    return due


def _target_age(
    policy: Policy, age: float, estimate: Estimate | None, progress: float | None
) -> float:
    """The task age at which the next poll would be best spent (before the gap bounds)."""
    if progress is not None and 0.0 < progress < 1.0 and age > 0:
        return age / progress  # the provider's own word beats the batch's history
    if progress is not None and progress >= 1.0:
        return age  # it says it is done: ask now (the floor keeps the finest interval)
    if estimate is None:
        return age + policy.cold_ratio * age
    ahead = [end for end in estimate.ends if end > age]
    if not ahead:
        return age + policy.overdue_ratio * (age - estimate.ends[-1])
    target = (
        ahead[min(len(ahead) - 1, int(policy.quantile * len(ahead)))] + policy.lag * policy.interval
    )
    if age >= estimate.ends[0]:  # ends are expected any time now: keep the gaps fine
        target = min(target, age + policy.precision * age)
    return target


def fraction(progress: float | None) -> float | None:
    """A provider's progress as a fraction done: percents (over 1) are divided, nonsense is None."""
    if progress is None or progress != progress or progress <= 0:  # NaN != NaN
        return None
    value = progress / 100.0 if progress > 1.0 else progress
    return min(value, 1.0)


def ended_after(
    *,
    submitted_at: float,
    last_running: float | None,
    done_at: float,
    resolution: float,
    reported: float | None = None,
) -> float:
    """Seconds from submission to a task's end, from the polls that bracket it.

    The end lies between the last poll that saw the task running (``last_running``) and the
    poll that saw it ended (``done_at``). Where the provider says how long the task ran
    (``reported``: Kie's ``costTime``, AceData's ``elapsed``, Kling's time stamps) that is
    the end, kept inside the bracket: the polls are what we saw ourselves, so a wrong or hostile
    figure can move the estimate no further than they allow. Otherwise the middle is taken. A
    task seen ended at its first poll has no lower bound but its submission (the policy aimed
    that poll at its expected end), so the end is taken within ``resolution`` before that poll
    (:meth:`Policy.resolution`): if tasks are in fact shorter, each such end pulls the estimate
    earlier, until first polls find tasks running again. A poll a callback asked for comes
    right at the end (``resolution`` 0).
    """
    if reported is not None:
        floor = submitted_at if last_running is None else last_running
        return min(max(submitted_at + reported, floor), done_at) - submitted_at
    if resolution <= 0:
        lower = done_at
    elif last_running is None:
        lower = max(submitted_at, done_at - resolution)
    else:
        lower = last_running
    return max(0.0, (lower + done_at) / 2.0 - submitted_at)


@dataclass(frozen=True, order=True)
class Kind:
    """Tasks expected to take alike: the same mode and about the same billed seconds."""

    mode: str
    seconds: float
    """Billed seconds, rounded to the second (0: unknown)."""

    @classmethod
    def of(cls, mode: str | None, billed_seconds: float | None) -> Kind:
        return cls(mode or "", float(round(billed_seconds or 0.0)))


class Durations:
    """What a batch has learned of how long its tasks take, by :class:`Kind`.

    A kind with ends of its own is estimated from them; a kind without borrows every other
    kind's ends, scaled by billed seconds (a generation's time grows with the video's length).
    Each kind keeps its latest ``keep`` ends: a provider that slows down at night is followed.
    """

    def __init__(self, keep: int = 200) -> None:
        self.keep = keep
        self._ends: dict[Kind, deque[float]] = {}
        self._cache: dict[Kind, Estimate | None] = {}
        self.learned = 0
        """Ends learned so far (the poller re-plans when the first arrives)."""

    def learn(self, kind: Kind, seconds: float) -> None:
        self._ends.setdefault(kind, deque(maxlen=self.keep)).append(seconds)
        self._cache.clear()
        self.learned += 1

    def estimate(self, kind: Kind) -> Estimate | None:
        if kind not in self._cache:
            self._cache[kind] = self._estimate(kind)
        return self._cache[kind]

    def _estimate(self, kind: Kind) -> Estimate | None:
        own = self._ends.get(kind)
        if own:
            return Estimate.of(list(own))
        borrowed: list[float] = []
        for other, ends in self._ends.items():
            scale = kind.seconds / other.seconds if kind.seconds and other.seconds else 1.0
            borrowed.extend(end * scale for end in ends)
        return Estimate.of(borrowed)
