"""One job of ``plan --json``, encoded as ``json.dumps`` would encode its dict, but faster.

Most of a job's ~900 bytes are values it shares with thousands of other jobs of a matrix: its
inputs' paths, its settings, what it sends for an input sent unchanged. Each of those is encoded
once (by :mod:`json` itself) and reused; only the job's own values (id, key, numbers) are
encoded per job, and no dict is built for it. The text is byte for byte ``json.dumps`` of
:meth:`PlanSummary.as_dict`'s job (default separators, ASCII); a test pins that.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii
from typing import Any

from pipeline.jobs import InputRef, JobSettings
from pipeline.plan.build import PlannedJob
from pipeline.plan.estimate import Verdict
from pipeline.plan.sending import Sent, SentMedia


class JobEncoder:
    """Encodes the jobs of one plan; holds the encoded shared values (keyed by the identity of
    objects the plan keeps alive, and holding them, so an id is never reused meanwhile)."""

    def __init__(self) -> None:
        self._refs: dict[int, tuple[InputRef, str]] = {}
        self._settings: dict[int, tuple[JobSettings, str]] = {}
        self._sent: dict[int, tuple[Sent, str]] = {}
        self._steps: dict[tuple[str, ...], str] = {}

    def encode(self, pj: PlannedJob, verdict: Verdict) -> str:
        """``json.dumps`` of ``{**pj.as_dict(), "estimate": ..., "why": ...}``."""
        job, sent = pj.job, pj.sent
        steps = self._steps.get(pj.steps)
        if steps is None:
            steps = self._steps[pj.steps] = json.dumps(list(pj.steps))
        measured = "true" if sent is not None and sent.measured else "false"
        return (
            f'{{"id": {_scalar(job.id)}, "line": {_scalar(job.line)}, '
            f'"image": {self._ref(job.image)}, "video": {self._ref(job.video)}, '
            f'"settings": {self._job_settings(job.settings)}, "key": {_scalar(pj.key)}, '
            f'"action": {_scalar(pj.action)}, "steps": {steps}, '
            f'"billed_seconds": {_scalar(pj.billed_seconds)}, '
            f'"estimated_cost": {_scalar(pj.estimated_cost)}, "billed_measured": {measured}, '
            f'"sent": {self._sent_media(sent)}, "error": {_scalar(pj.error)}, '
            f'"estimate": {_scalar(verdict.bucket)}, "why": {_scalar(verdict.why)}}}'
        )

    def _ref(self, ref: InputRef) -> str:
        hit = self._refs.get(id(ref))
        if hit is None:
            hit = self._refs[id(ref)] = (ref, _scalar(str(ref)))
        return hit[1]

    def _job_settings(self, settings: JobSettings) -> str:
        hit = self._settings.get(id(settings))
        if hit is None:
            hit = self._settings[id(settings)] = (settings, json.dumps(settings.as_dict()))
        return hit[1]

    def _sent_media(self, sent: SentMedia | None) -> str:
        if sent is None:
            return "null"
        return f'{{"image": {self._one_sent(sent.image)}, "video": {self._one_sent(sent.video)}}}'

    def _one_sent(self, sent: Sent | None) -> str:
        if sent is None:
            return "null"
        if sent.prepared:  # a prepared file is one job's own (or a few): not worth keeping
            return json.dumps(sent.as_dict())
        hit = self._sent.get(id(sent))
        if hit is None:  # an input sent unchanged: one shared value (sending.as_is)
            hit = self._sent[id(sent)] = (sent, json.dumps(sent.as_dict()))
        return hit[1]


def _scalar(value: Any) -> str:
    """``json.dumps(value)`` for a str, int, finite float or None, without its Python overhead
    (the same C string encoder, the same reprs json uses); anything else goes to json.dumps."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value)
