"""Golden files pin the exact `validate` output for a corpus of bad manifests.

Regenerate after a deliberate wording change with ``UPDATE_GOLDEN=1 pytest tests/test_manifest_golden.py``
and review the diff like any other change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import main

BAD = Path(__file__).parent / "manifests" / "bad"
CASES = sorted(BAD.glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("manifest", CASES, ids=[c.stem for c in CASES])
def test_validate_output_matches_golden(
    manifest: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(BAD)
    code = main(["validate", manifest.name])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    golden = manifest.with_suffix(".expected")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(err, encoding="utf-8")
    assert err == golden.read_text(encoding="utf-8")
    lines = err.splitlines()
    assert lines, "every bad manifest must produce at least one diagnostic"
    positions = []
    for line in lines:
        name, row, col, rest = line.split(":", 3)
        assert name == manifest.name
        positions.append((int(row), int(col)))
        assert rest.startswith(" $")
    assert positions == sorted(positions), "diagnostics are sorted by position"
