"""What a run did: counts, its exit code, and its money apart from the batch's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.jobs import State
from pipeline.plan.money import Money


@dataclass
class RunSummary:
    counts: dict[State, int]
    exit_code: int
    stop_reason: str | None = None
    seconds_billed: float = 0.0
    """Seconds billed for the manifest's done jobs (this run and earlier ones)."""
    wall_seconds: float = 0.0
    http_requests: int = 0
    submitted: int = 0
    occupancy: float | None = None
    """Share of provider slots in use while jobs were waiting for one (None: never saturated)."""
    paid_now: Money = field(default_factory=Money)
    """What this run paid: its creates (ambiguous ones included), their seconds and cost."""
    batch_paid: Money = field(default_factory=Money)
    """What the batch has paid, this run and every earlier one."""
    to_pay: Money = field(default_factory=Money)
    """What this run expected to pay when it started (the plan's estimate)."""
    currency: str = "USD"
    extra: dict[str, Any] = field(default_factory=dict)


def exit_code(counts: dict[State, int], *, stopped: int, unfinished: bool) -> int:
    """The contract's exit code: the stop's, else 1 when a job failed, needs attention or is
    left unfinished, else 0."""
    if stopped:
        return stopped
    if counts[State.FAILED] or counts[State.NEEDS_ATTENTION] or unfinished:
        return 1
    return 0
