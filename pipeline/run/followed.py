"""One task the poller follows (:class:`pipeline.run.poller.Poller`): mutable, owned by the
poller alone, one per waiting job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipeline.jobs import Handle, TaskStatus
from pipeline.run.schedule import Kind


@dataclass(eq=False)
class Followed:
    """What the poller knows of one task a job waits for: its schedule and its streaks."""

    handle: Handle
    started: float
    future: asyncio.Future[TaskStatus] = field(repr=False)
    kind: Kind
    born: float
    """When it started to be followed, on the poller's ``age_clock``: what its timeout counts."""
    label: str = ""
    """Whose task this is, for the log (``job a``)."""
    due: float = 0.0
    seq: int = -1
    """The heap item that is this entry's current due time (older items are stale)."""
    queued: bool = False
    """In the heap (False while its poll is on the wire)."""
    polls: int = 0
    errors: int = 0
    bad: int = 0
    asked_at: float | None = None
    """When its latest poll was sent."""
    last_running: float | None = None
    """When the latest poll that saw it running was sent."""
    progress: float | None = None
    cold: bool = True
    """Its due time was planned before anything was learned: re-planned when something is."""
    hinted: bool = False
    """Its due time comes from a hint (a callback), or a hint came while its poll was out."""
    by_hint: bool = False
    """The poll on the wire was asked for by a hint."""
    resumed: bool = False
    """Submitted before this run (a resumed batch): it may have ended while nobody watched."""
