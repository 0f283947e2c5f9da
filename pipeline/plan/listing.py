"""The job lines of ``plan``'s text: one line per job, its inputs' facts, its problem.

A 100,000-job matrix names 1,100 inputs: each input's summary line is formatted (and made
printable) once, not once per job, and the lines are handed out in large pieces rather than
300,000 writes. Everything quoted from outside (probe facts, errors) passes
:func:`pipeline.settings.printable`: a terminal control in it is shown, not obeyed.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.media.probe import MediaInfo
from pipeline.plan.summary import PlanSummary
from pipeline.settings import printable

BUCKET_WORDS = {
    "to_pay": "pay",
    "already_paid": "collect",
    "free": "free",
    "skipped": "skip",
    "refused": "REFUSED",
}
_PIECE = 1000
"""Jobs per piece handed out."""


def job_lines(summary: PlanSummary) -> Iterator[str]:
    """The text of every job, in manifest order, as pieces of whole lines (each ends in \\n)."""
    plan, verdicts = summary.plan, summary.estimate.verdicts
    width = max((len(pj.job.id) for pj in plan.jobs), default=2)
    pad = " " * (width + 4)
    facts: dict[int, tuple[MediaInfo, str]] = {}  # by the id of a MediaInfo the plan holds

    def shown(info: MediaInfo) -> str:
        hit = facts.get(id(info))
        if hit is None:
            hit = facts[id(info)] = (info, printable(info.summary()))
        return hit[1]

    lines: list[str] = []
    for i, pj in enumerate(plan.jobs, 1):
        s = pj.job.settings
        billed = "-" if pj.billed_seconds is None else f"{pj.billed_seconds:.2f}s"
        cost = "" if pj.estimated_cost is None else f" ~{pj.estimated_cost:.2f}"
        verdict = verdicts[pj.job.id]
        lines.append(
            f"  {pj.job.id:<{width}}  {pj.action:<11} {s.mode:<3} "
            f"{s.character_orientation:<5} {billed:>8}{cost:<8} "
            f"{BUCKET_WORDS[verdict.bucket]}: {verdict.why}"
        )
        media = pj.media
        if media is not None and media.image_info is not None:
            lines.append(f"{pad}image {shown(media.image_info)}")
        if media is not None and media.video_info is not None:
            steps = f" -> {', '.join(pj.steps)}" if pj.steps else ""
            lines.append(f"{pad}video {shown(media.video_info)}{steps}")
        if pj.error:
            lines.append(f"{pad}! {printable(pj.error)}")
        if i % _PIECE == 0:
            yield "\n".join(lines) + "\n"
            lines.clear()
    if lines:
        yield "\n".join(lines) + "\n"
