"""The version of motion-pipeline: the installed package's metadata, so pyproject.toml is its
only source (no second number in the code to forget when releasing)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "motion-pipeline"

#: Shown when the package is imported from a source tree that was never installed: a valid
#: PEP 440 version that sorts below every release and says it is not one.
UNKNOWN = "0+unknown"


def installed_version(distribution: str = DISTRIBUTION) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN
