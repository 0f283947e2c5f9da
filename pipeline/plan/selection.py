"""Which jobs a command is about: ``--replace`` patterns, and problems told once, not per cell.

``--replace`` takes job ids and glob patterns (``'*'``, ``'alice-*'``) and may be repeated; a
pattern that names no job of the manifest is an error (a typo must not pass silently). The same
input problem in many matrix cells is one problem affecting N jobs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.plan.build import Plan


def expand_replace(patterns: Iterable[str], job_ids: Sequence[str]) -> frozenset[str]:
    """The job ids the patterns name; ConfigError (exit 2) for a pattern that names none."""
    patterns = list(patterns)
    if not patterns:
        return frozenset()  # the common case: no set of 100,000 ids built for nothing
    chosen: set[str] = set()
    unknown: list[str] = []
    known = set(job_ids)
    for pattern in patterns:
        if pattern in known:
            chosen.add(pattern)
            continue
        matched = fnmatch.filter(job_ids, pattern)
        if not matched:
            unknown.append(pattern)
        chosen.update(matched)
    if unknown:
        names = ", ".join(repr(p) for p in unknown)
        raise ConfigError(
            f"--replace {names} matches no job of the manifest; give job ids or glob patterns "
            "(quote them: --replace 'alice-*'), as `motion-pipeline plan MANIFEST` lists them"
        )
    return frozenset(chosen)


@dataclass(frozen=True)
class Problem:
    """One rejection, and every job it affects (many matrix cells share one bad input)."""

    line: int
    where: str
    message: str
    jobs: tuple[str, ...]

    def describe(self, *, shown: int = 3) -> str:
        first = ", ".join(self.jobs[:shown])
        more = f" and {len(self.jobs) - shown} more" if len(self.jobs) > shown else ""
        noun = "job" if len(self.jobs) == 1 else "jobs"
        return f"{self.message} ({len(self.jobs)} {noun}: {first}{more})"


def problems(plan: Plan) -> list[Problem]:
    """The plan's rejections, one per distinct (manifest entry, reason), in manifest order."""
    grouped: dict[tuple[int, str, str], list[str]] = {}
    for pj in plan.jobs:
        if pj.action == "reject":
            grouped.setdefault((pj.job.line, pj.job.where, pj.error or "rejected"), []).append(
                pj.job.id
            )
    return [Problem(line, where, msg, tuple(ids)) for (line, where, msg), ids in grouped.items()]
