"""What ``report.html`` is made of: one job's data, the batch's totals, a job's thumbnails.

Built by the caller from the state; :mod:`pipeline.dataset.report` makes the thumbnails and
writes the page, :mod:`pipeline.dataset.report_html` renders the markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.jobs import State


@dataclass(frozen=True)
class ReportJob:
    """What the page shows about one job; built by the caller from the state store."""

    id: str
    state: State | str
    image: str
    """The image as the user named it (path or URL)."""
    video: str
    image_path: Path | None
    """Local file of the reference image, or None (remote, not yet fetched)."""
    video_path: Path | None
    """Local file of the prepared (driving) clip, or None."""
    output_path: Path | None
    """``videos/<id>.mp4`` once downloaded, else None."""
    settings: dict[str, Any]
    billed_seconds: float | None
    duration: float | None
    provider: str
    model: str
    task_id: str | None
    error: str | None
    applied: dict[str, Any] | None = None
    """What preparation did to the driving clip (the recipe: trim window cut, scale, audio), as
    recorded when the job was submitted; None when nothing was sent yet."""


@dataclass(frozen=True)
class ReportTotals:
    """The numbers the page opens with."""

    done: int
    failed: int
    needs_attention: int
    other: int
    """pending, submitting, running, downloading."""
    seconds_billed: float
    estimated_cost: float | None
    currency: str
    wall_time_seconds: float | None


@dataclass(frozen=True)
class Thumbs:
    """Paths of one job's thumbnails relative to the output directory; None: show a placeholder."""

    image: str | None = None
    driving: str | None = None
    result: str | None = None
