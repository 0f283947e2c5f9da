"""Start-up: `import pipeline.cli` loads no machinery a command does not need yet.

Timings belong in bench/ (bench/startup.py); this pins the cause of a slow start instead: the
manifest schema (jsonschema), the HTTP stack (httpx) and the engine are imported only by the
command that uses them.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("httpx", "jsonschema", "yaml", "pipeline.run.engine", "pipeline.manifest.load",
         "pipeline.providers", "sqlite3", "importlib.metadata")  # fmt: skip


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120).stdout  # fmt: skip
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_machinery() -> None:
    loaded = _modules_after("import pipeline.cli")
    assert "pipeline.cli" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


PROVIDERS = {"kie", "acedata", "kling", "fal", "replicate", "sandbox"}


def test_a_provider_module_loads_only_when_a_manifest_names_it() -> None:
    code = (
        "from pipeline import providers\n"
        "names = providers.names()\n"
        "before = sorted(m for m in sys.modules if m.startswith('pipeline.providers.'))\n"
        "cls = providers.get('kling')\n"
        "print(json.dumps([names, before, cls.__module__, cls.name]))"
    )
    out = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}"], capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    names, before, module, name = json.loads(out)
    assert set(names) == PROVIDERS  # every built-in is listed before any is imported
    assert before == ["pipeline.providers.base"]
    assert (module, name) == ("pipeline.providers.kling", "kling")
    loaded = _modules_after("from pipeline import providers\nproviders.get('kie')")
    assert sorted(m for m in loaded if m.split(".")[-1] in PROVIDERS - {"kie"}) == []


def test_the_api_functions_keep_their_names_after_the_subpackages_load() -> None:
    # pipeline.plan and pipeline.run are functions and also sub-packages: importing the
    # sub-packages' modules later must not turn pipeline.run into a module.
    code = (
        "import pipeline, pipeline.run.batch, pipeline.plan.build, pipeline.run.engine\n"
        "print(json.dumps([callable(pipeline.run), callable(pipeline.plan),"
        " pipeline.PlanSummary.__name__]))"
    )
    script = f"import json\n{code}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120).stdout  # fmt: skip
    assert json.loads(out) == [True, True, "PlanSummary"]


def test_a_name_the_package_does_not_have_is_an_attribute_error() -> None:
    import pipeline

    try:
        pipeline.no_such_name  # noqa: B018 - the lookup is the test
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("pipeline.no_such_name did not raise")
