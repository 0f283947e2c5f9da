"""The public API is small and explicit; this test pins it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pipeline
import pipeline.errors as errors

ROOT = Path(__file__).parent.parent


def test_public_api_is_pinned() -> None:
    assert sorted(pipeline.__all__) == [
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
    for name in pipeline.__all__:
        assert hasattr(pipeline, name), name
    # __all__ is what the package really exports: every public name it binds is listed
    # (submodules aside: they are imported, not exported).
    import types

    public = {
        n for n, v in vars(pipeline).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }  # fmt: skip
    assert public == set(pipeline.__all__) - {"__version__"}


def test_error_tree_exit_codes() -> None:
    assert errors.ManifestError([]).exit_code == 2
    assert errors.MediaError("x").exit_code == 2
    assert errors.AuthError("x").exit_code == 3
    assert errors.OutOfCreditsError("x").exit_code == 3
    assert errors.BatchStopped("x").exit_code == 3
    assert errors.LockedError("x").exit_code == 4
    assert issubclass(errors.RateLimitedError, errors.TransientError)
    # Every class in the module is drawn in the docstring's tree.
    doc = errors.__doc__ or ""
    for name, obj in vars(errors).items():
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert name in doc, f"{name} missing from the tree in errors.py"


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "validate",
            str(ROOT / "tests/manifests/bad/version_2.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "$.version: must be 1, got 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wheel_ships_the_specs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("motion_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/specs/manifest.schema.json" in names
    assert "pipeline/specs/limits.json" in names
    assert "pipeline/py.typed" in names


def test_public_functions_survive_the_import_of_every_module() -> None:
    # A submodule named like a public function (pipeline/report.py and pipeline.report) would
    # replace the function with the module once anything imported it.
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in ("plan", "run", "status", "resolve", "report"):
        assert callable(getattr(pipeline, name)), name
        assert not isinstance(getattr(pipeline, name), type(pipeline)), name
