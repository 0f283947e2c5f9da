"""motion-pipeline: declarative, resumable batches of Kling motion-control generations.

The public API is small on purpose; everything else is internal and may change.
"""

from pipeline.errors import (
    ConfigError,
    Diagnostic,
    InputError,
    ManifestError,
    MediaError,
    PipelineError,
)
from pipeline.jobs import Job, JobSettings, State, Trim
from pipeline.manifest import Manifest, load_manifest
from pipeline.planning import Plan, PlannedJob, make_plan
from pipeline.version import installed_version

__version__ = installed_version()

__all__ = [
    "ConfigError",
    "Diagnostic",
    "InputError",
    "Job",
    "JobSettings",
    "Manifest",
    "ManifestError",
    "MediaError",
    "PipelineError",
    "Plan",
    "PlannedJob",
    "State",
    "Trim",
    "__version__",
    "load_manifest",
    "make_plan",
]
