"""The Python API gives the figures the CLI prints, and reads the state the way the CLI does."""

from __future__ import annotations

import json
from pathlib import Path

from batchkit import KEY_ENV, cli, job_entries, make_media, provider_block, sandbox, write_manifest

import pipeline
from pipeline.settings import Settings


def test_plan_run_status_from_python(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    settings = Settings.from_env(KEY_ENV)
    with sandbox(tmp_path / "sb") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a", "b"]),
            budget={"price_per_second": {"std": 0.1}},
        )  # fmt: skip
        before = pipeline.plan(manifest, settings=settings)
        assert isinstance(before, pipeline.PlanSummary)
        assert before.to_pay.jobs == 2 and before.to_pay.billed_seconds == 7.0
        cli_doc = json.loads(cli("plan", manifest, "--json").stdout)
        assert before.as_dict()["totals"] == cli_doc["totals"]  # the same figures as --json
        # --json is written job by job; the pieces make exactly the document as_dict() says.
        assert "".join(before.json_chunks()) == json.dumps(before.as_dict())
        assert json.loads("".join(before.json_chunks())) == cli_doc

        summary = pipeline.run(manifest, settings=settings)
        assert summary.exit_code == 0
        assert summary.paid_now.jobs == 2 and summary.paid_now.billed_seconds == 7.0
        assert summary.paid_now.cost == 0.7

        after = pipeline.plan(manifest, settings=settings)
        assert after.to_pay.jobs == 0  # done jobs are not payable: the state was read
        assert {v.bucket for v in after.estimate.verdicts.values()} == {"free"}

        state = pipeline.status(manifest, settings=settings)
        assert isinstance(state, pipeline.StatusSummary) and state.ran
        assert state.counts[pipeline.State.DONE] == 2
        assert state.paid.jobs == 2 and state.paid.cost == 0.7
        assert state.as_dict() == json.loads(cli("status", manifest, "--json").stdout)
        assert len(srv.ledger) == 2


def test_status_of_a_batch_that_never_ran(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    manifest = write_manifest(
        tmp_path / "m", {"name": "kie", "base_url": "http://127.0.0.1:9"},
        [{"id": "a", "image": str(media.image), "video": str(media.video)}],
    )  # fmt: skip
    state = pipeline.status(manifest)
    assert not state.ran and sum(state.counts.values()) == 0
