"""`plan` estimates exactly what `run` pays: a real batch against the sandbox (a trimmed clip, a
scaled clip, a duplicate key, an interrupted run), `plan --json` compared with the sandbox's bill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchkit import cli, cli_env, provider_block, sandbox, write_manifest
from mediagen import make_image, make_video


def plan_json(manifest: Path) -> dict[str, Any]:
    proc = cli("plan", manifest, "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def billed(srv: Any) -> float:
    return round(sum(srv.ledger.bills().values()), 3)


def test_plan_estimate_equals_what_the_sandbox_bills(tmp_path: Path) -> None:
    media = tmp_path / "media"
    image = make_image(media / "char.png", 400, 600)
    long_clip = make_video(media / "long.mp4", seconds=14, width=360, height=480, fps=10)
    small = make_video(media / "small.mp4", seconds=4, width=300, height=350, fps=10)
    plain = make_video(media / "plain.mp4", seconds=3.5, width=360, height=480, fps=10)
    jobs = [
        {"id": "cut", "image": str(image), "video": str(long_clip), "prompt": "job cut"},
        {"id": "scaled", "image": str(image), "video": str(small), "prompt": "job scaled"},
        {"id": "plain", "image": str(image), "video": str(plain), "prompt": "job plain"},
        {"id": "twin", "image": str(image), "video": str(plain), "prompt": "job plain"},
    ]
    with sandbox(tmp_path / "sb") as (srv, _log):
        provider = provider_block("kie", srv, concurrency=1)
        manifest = write_manifest(tmp_path / "m", provider, jobs,
                                  budget={"price_per_second": {"std": 0.1}})  # fmt: skip
        first = plan_json(manifest)
        totals = first["totals"]
        assert totals["to_pay"]["jobs"] == 3  # the twin is the same generation: free
        assert totals["free"]["jobs"] == 1
        by_id = {j["id"]: j for j in first["jobs"]}
        assert by_id["cut"]["action"] == "trim" and by_id["cut"]["billed_measured"]
        assert 9.0 < by_id["cut"]["billed_seconds"] <= 10.0  # the prepared clip's own length
        assert by_id["scaled"]["steps"] == ["scale"]

        # Interrupted after the first task id was committed: paid, only to be collected.
        crashed = cli("run", manifest, env=cli_env(MOTION_PIPELINE_CRASH_AT="after-task-id"))
        assert crashed.returncode == -9
        assert len(srv.ledger) == 1
        second = plan_json(manifest)["totals"]
        assert second["already_paid"]["jobs"] == 1
        assert second["to_pay"]["jobs"] == 2
        paid_first = round(
            totals["to_pay"]["billed_seconds"] - second["to_pay"]["billed_seconds"], 3
        )

        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(srv.ledger) == 3
        bills = srv.ledger.bills()
        assert billed(srv) == pytest.approx(totals["to_pay"]["billed_seconds"], abs=1e-6)
        first_task = srv.ledger[0].task_id
        assert bills[first_task] == pytest.approx(paid_first, abs=1e-6)
        assert totals["to_pay"]["cost"] == pytest.approx(0.1 * billed(srv), abs=1e-4)
        assert "this run paid: 2 creates" in proc.stdout

        rerun = cli("run", manifest)  # a finished batch pays nothing more
        assert rerun.returncode == 0
        assert "this run paid: 0 creates, 0.00 s billed" in rerun.stdout
        assert plan_json(manifest)["totals"]["to_pay"]["jobs"] == 0
        assert len(srv.ledger) == 3
