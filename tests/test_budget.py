"""The budget is a hard cap at any concurrency: the provider's ledger never bills past it."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchkit import (
    Media,
    cli,
    creates,
    job_entries,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    state_rows,
    write_manifest,
)

from pipeline.manifest.model import Budget
from pipeline.run.budget import Spending

CLIP = 3.5  # seconds billed per job: make_media's clip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def test_reserve_checks_and_books_in_one_step() -> None:
    spending = Spending(Budget(max_seconds=8))
    assert spending.reserve("a", CLIP, 0) is None
    assert spending.reserve("b", CLIP, 0) is None
    refusal = spending.reserve("c", CLIP, 0)
    assert refusal is not None and refusal.job_id == "c"
    assert "7.00 of 8 s committed, 1.00 s left, job c needs 3.50 s" in refusal.text
    spending.release("b")
    spending.release("b")  # idempotent
    assert spending.seconds == CLIP
    assert spending.reserve("c", CLIP, 0) is None


def test_cost_cap_and_jobs_counted_from_earlier_runs() -> None:
    spending = Spending(Budget(max_cost=1.0, price_per_second={"std": 0.1}, currency="EUR"))
    spending.count("old", 5.0, 0.5)
    assert spending.reserve("a", 4.0, 0.4) is None
    refusal = spending.reserve("b", 2.0, 0.2)
    assert refusal is not None
    assert "0.90 of 1 EUR committed, 0.10 EUR left" in refusal.text
    spending.release("old")  # an earlier run's intent that never reached the provider
    assert spending.reserve("b", 2.0, 0.2) is None


@pytest.mark.parametrize(
    "budget",
    [{"max_seconds": 8}, {"max_cost": 0.8, "price_per_second": {"std": 0.1}}],
    ids=["seconds", "cost"],
)
def test_concurrent_run_never_bills_past_the_cap(
    budget: dict[str, float], media: Media, tmp_path: Path
) -> None:
    ids = [f"j{i}" for i in range(8)]
    with sandbox(tmp_path / "sandbox", {"latency": {"polls": 1}}) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=8),
            job_entries("kie", srv, media, ids),
            budget=budget,
        )
        proc = cli("run", manifest)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        said = proc.stdout + proc.stderr
        assert "budget reached" in said and "committed" in said and "left" in said
        paid = creates(srv)
        assert sum(paid.values()) * CLIP <= 8  # what the provider billed
        assert len(paid) == 2 and set(paid.values()) == {1}
    rows = state_rows(out_dir(manifest))
    assert {i for i, r in rows.items() if r["state"] == "done"} == set(paid)
    assert {r["state"] for i, r in rows.items() if i not in paid} == {"pending"}


def test_max_cost_needs_a_price_for_every_mode_used(media: Media, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m",
        {"name": "kie", "base_url": "http://127.0.0.1:9"},
        [{"id": "a", "image": str(media.image), "video": str(media.video), "mode": "pro"}],
        budget={"max_cost": 5, "price_per_second": {"std": 0.1}},
    )
    proc = cli("validate", manifest)
    assert proc.returncode == 2
    assert "price" in proc.stderr and "pro" in proc.stderr
