"""motion-pipeline: declarative, resumable batches of Kling motion-control generations.

The public API is small on purpose (``plan``, ``run``, ``status``, ``resolve``, ``report``,
their summaries, the manifest and the errors); everything else is internal and may change.
See :mod:`pipeline.api` for an example.

Importing the package is cheap (the CLI starts fast): the classes that pull in the manifest
schema, the providers and httpx are loaded when first used (PEP 562 ``__getattr__``).
"""

from importlib import import_module as _import_module
from typing import Any as _Any

# ``plan`` and ``run`` are also sub-packages (pipeline/plan, pipeline/run). Python binds a
# sub-package as an attribute of its parent the first time it is imported, which would replace
# the functions below with modules if that happened later; loading both first makes the
# functions win for good.
from pipeline import plan as _plan_package  # noqa: F401 - see above
from pipeline import run as _run_package  # noqa: F401 - see above
from pipeline.__version__ import __version__
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

_LAZY = {
    "load_manifest": "pipeline.manifest.load",
    "Manifest": "pipeline.manifest.model",
    "Plan": "pipeline.plan.build",
    "PlannedJob": "pipeline.plan.build",
    "Money": "pipeline.plan.money",
    "PlanSummary": "pipeline.plan.summary",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


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
