"""Which reporter a run gets: a bar on a terminal, plain lines everywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from pipeline.progress.events import Reporter


def choose_reporter(*, no_progress: bool, stream: TextIO, secrets: Sequence[str] = ()) -> Reporter:
    """A bar on a terminal, plain lines elsewhere or with ``--no-progress`` (see module doc)."""
    # Imported here, each only when chosen: only a run on a terminal loads tqdm.
    isatty = getattr(stream, "isatty", None)
    if not no_progress and isatty is not None and isatty():
        from pipeline.progress.bar import TqdmReporter

        return TqdmReporter(stream, secrets=secrets)
    from pipeline.progress.lines import LineReporter

    return LineReporter(stream, secrets=secrets)
