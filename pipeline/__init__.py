"""motion-pipeline: declarative, resumable batches of Kling motion-control generations.

The public API is small on purpose (``plan``, ``run``, ``status``, ``resolve``, ``report``,
their summaries, the manifest and the errors); everything else is internal and may change.
See :mod:`pipeline.api` for an example.
"""

from pipeline.api import StatusSummary, plan, report, resolve, run, status
from pipeline.errors import (
    ConfigError,
    Diagnostic,
    InputError,
    ManifestError,
    MediaError,
    PipelineError,
)
from pipeline.jobs import Job, JobSettings, State, Trim
from pipeline.manifest.load import load_manifest
from pipeline.manifest.model import Manifest
from pipeline.plan.build import Plan, PlannedJob
from pipeline.plan.money import Money
from pipeline.plan.summary import PlanSummary
from pipeline.settings import installed_version as _installed_version

__version__ = _installed_version()

__all__ = [
    "ConfigError",
    "Diagnostic",
    "InputError",
    "Job",
    "JobSettings",
    "Manifest",
    "ManifestError",
    "MediaError",
    "Money",
    "PipelineError",
    "Plan",
    "PlanSummary",
    "PlannedJob",
    "State",
    "StatusSummary",
    "Trim",
    "__version__",
    "load_manifest",
    "plan",
    "report",
    "resolve",
    "run",
    "status",
]
