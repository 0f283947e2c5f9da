"""``status``: what the state of an output directory says, without changing anything.

Read-only: the state is opened read-only (a run may hold the lock meanwhile) and every done
job's video is checked on disk, so a result deleted or changed by hand is reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.dataset import layout as outdir
from pipeline.errors import StateError
from pipeline.jobs import State
from pipeline.plan.money import Money, paid_columns
from pipeline.settings import Settings
from pipeline.state.database import state_path
from pipeline.state.overview import JobLine
from pipeline.state.store import StateStore

if TYPE_CHECKING:
    from pipeline.manifest.model import Budget


def done_keys(output_dir: Path) -> list[str]:
    """Keys already generated in ``output_dir`` (for ``plan``'s ``done`` action)."""
    if not state_path(output_dir).exists():
        return []
    with StateStore.open(output_dir, readonly=True) as store:
        return [row.key for row in store.rows([State.DONE])]


def status_target(target: str) -> tuple[Path, str, Budget | None]:
    """``status`` of a manifest or an output directory: where, and the money's terms (no
    budget for a directory: its money is counted in seconds, unpriced)."""
    path = Path(target)
    if path.is_dir():
        return path, "USD", None
    # The manifest machinery (YAML, the schema, the providers) only when a manifest is named:
    # `status DIR` of a 100,000-job batch must stay under a second.
    from pipeline.manifest.load import load_manifest

    manifest = load_manifest(path, check_files=False)
    return manifest.output_dir, manifest.budget.currency, manifest.budget


def output_dir_of(target: str, settings: Settings) -> Path:
    """``status``/``report`` accept the manifest or its output directory."""
    from pipeline.manifest.load import load_manifest

    path = Path(target)
    if path.is_dir():
        return path
    return load_manifest(path, check_files=False).output_dir


@dataclass(frozen=True)
class StatusReport:
    counts: dict[State, int]
    lines: Sequence[JobLine] = ()
    """``(id, state, task_id, error, output)`` of every job in id order, as the state has them."""
    problems: Mapping[str, str] = field(default_factory=dict)
    """Why a done job's video is not the one downloaded (``missing``/``changed``), by job id."""
    paid: Money = field(default_factory=Money)
    """What the batch has paid (every job that reached submission), at the budget's prices."""

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Each job's line as a dict (for the API and the text ``status``; ``--json`` writes
        :meth:`json_chunks` without building them)."""
        problem = self.problems.get
        return [{"id": job_id, "state": state, "task_id": task_id, "error": error,
                 "output": output, "output_problem": problem(job_id)}
                for job_id, state, task_id, error, output in self.lines]  # fmt: skip

    @property
    def needs_care(self) -> bool:
        """A job failed or needs attention, or a done job's video is damaged (exit 1)."""
        bad = self.counts[State.FAILED] + self.counts[State.NEEDS_ATTENTION]
        return bool(bad or self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": {s.value: n for s, n in self.counts.items()}, "jobs": self.jobs}

    def json_chunks(self, currency: str) -> Iterator[str]:
        """``json.dumps(api.StatusSummary.as_dict())``, the same bytes, in pieces of
        :data:`CHUNK` jobs: no dict per job, no document of 11 MB held at once (100,000 jobs)."""
        counts = {s.value: n for s, n in self.counts.items()}
        yield f'{{"counts": {json.dumps(counts)}, "jobs": ['
        for start in range(0, len(self.lines), CHUNK):
            if start:
                yield ", "
            yield ", ".join(_job_json(self.lines[start : start + CHUNK], self.problems))
        yield f'], "paid": {json.dumps(self.paid.as_dict())}, "currency": {json.dumps(currency)}}}'


CHUNK = 4096
"""Jobs per piece :meth:`StatusReport.json_chunks` yields (about 450 kB of JSON)."""

_STATE_JSON = {s.value: json.dumps(s.value) for s in State}


def _job_json(lines: Iterable[JobLine], problems: Mapping[str, str]) -> list[str]:
    """Each job's object as ``json.dumps`` writes it (ensure_ascii, ``", "`` and ``": "``).

    ``encode_basestring_ascii`` is the C function json.dumps itself quotes strings with, so the
    bytes are its bytes. Inline, without a call per job: 100,000 of them. A job with no task,
    error or output (most, in a batch that has barely started; never one with a damaged video,
    which has an output) takes the shortest way.
    """
    q = encode_basestring_ascii
    state = _STATE_JSON
    problem = problems.get
    return [
        f'{{"id": {q(job_id)}, "state": {state[s]}, "task_id": null, "error": null, '
        '"output": null, "output_problem": null}'
        if task_id is None and error is None and output is None
        else f'{{"id": {q(job_id)}, "state": {state[s]}, '
        f'"task_id": {"null" if task_id is None else q(task_id)}, '
        f'"error": {"null" if error is None else q(error)}, '
        f'"output": {"null" if output is None else q(output)}, '
        f'"output_problem": {"null" if (why := problem(job_id)) is None else q(why)}}}'
        for job_id, s, task_id, error, output in lines
    ]


def batch_status(output_dir: Path, budget: Budget | None = None) -> StatusReport:
    """Counts, each job's line and the money, from one snapshot of the state (100,000 jobs: no
    per-row objects), and every done job's video checked on disk."""
    if not state_path(output_dir).exists():
        raise StateError(f"no state in {output_dir}: nothing has run there yet")
    with StateStore.open(output_dir, readonly=True) as store:
        # A directory's money is unpriced: no spec is opened for its jobs' modes.
        seen, outputs = store.status_rows(modes=budget is not None)
    # A done job whose video is gone or changed is reported (run collects it again).
    problems = {d.job_id: d.why for d in outdir.check_results(output_dir, outputs).damaged}
    return StatusReport(seen.counts, seen.lines, problems, paid_columns(seen.money, budget))
