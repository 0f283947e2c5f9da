"""What a run was asked to do (the command's flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    concurrency: int | None = None
    """Tasks in flight at the provider (overrides the manifest's ``provider.concurrency``)."""
    max_jobs: int | None = None
    retry_failed: bool = False
    replace: frozenset[str] = frozenset()
    """Job ids or glob patterns (``--replace``); expanded to ids before the run starts."""
    skip_invalid: bool = False
    """Run the jobs whose inputs are fine; the rejected ones fail (``--skip-invalid``)."""
