"""Kling 3.0 motion control wherever it is sold: every provider's v3 model is accepted, has its
limits, takes only the settings its provider documents (anything else is refused at its manifest
line before anything is spent), runs end to end against the sandbox, and is priced by model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from batchkit import make_media, sandbox
from loopback import http_client
from waiting import wait_until_async

import pipeline
from pipeline import providers
from pipeline.errors import ManifestError
from pipeline.jobs import InputRef, Job, JobSettings, TaskStatus
from pipeline.manifest.load import load_manifest
from pipeline.media.limits import limits_for
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.sandbox import SandboxKeys
from pipeline.settings import Settings

V3 = {
    "kie": ("kling-3.0/motion-control", {"background_source": "input_image"}),
    "acedata": ("kling-v3", {"watermark_info": {"enabled": False}}),
    "kling": ("kling-v3", {"watermark_info": {"enabled": False}}),
    "fal": ("fal-ai/kling-video/v3", {}),
    "replicate": ("kwaivgi/kling-v3-motion-control", {}),
}
IMAGE, VIDEO = "https://example.com/char.png", "https://example.com/dance.mp4"


def write(folder: Path, provider: dict[str, Any], budget: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"version": 1, "name": "v3", "provider": provider,
                           "jobs": [{"id": "a", "image": IMAGE, "video": VIDEO}]}  # fmt: skip
    if budget is not None:
        doc["budget"] = budget
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize("name", sorted(V3))
def test_every_v3_model_is_accepted_with_its_documented_settings(name: str, tmp_path: Path) -> None:
    model, options = V3[name]
    manifest = load_manifest(write(tmp_path, {"name": name, "model": model, "options": options}))
    assert manifest.provider.model == model and dict(manifest.provider.options) == options
    assert all(job.model == model for job in manifest.jobs)
    assert limits_for(name, model, "image").video.max_duration == 10.0


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        ({"name": "kie", "options": {"background_source": "input_video"}}, "background_source"),
        ({"name": "fal", "model": "fal-ai/kling-video/v3", "options": {"sound": True}}, "sound"),
        (
            {"name": "replicate", "options": {"background_source": "input_video"}},
            "background_source",
        ),
        ({"name": "acedata", "model": "kling-v3", "options": {"element_list": []}}, "element_list"),
    ],
)
def test_a_field_the_model_does_not_document_is_refused_at_its_line(
    provider: dict[str, Any], field: str, tmp_path: Path
) -> None:
    path = write(tmp_path, provider)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    [diag] = caught.value.diagnostics
    assert f"unknown key {field!r}" in diag.message
    assert diag.line == line_of(path, f"{field}:")


def test_a_bad_value_of_a_documented_field_is_refused(tmp_path: Path) -> None:
    options = {"background_source": "the_moon"}
    path = write(tmp_path, {"name": "kie", "model": "kling-3.0/motion-control", "options": options})
    with pytest.raises(ManifestError, match="input_video, input_image"):
        load_manifest(path)


def test_prices_keyed_by_model_and_mode(tmp_path: Path) -> None:
    prices = {"std": 0.07, "pro": 0.2, "fal-ai/kling-video/v3": {"std": 0.126}}
    provider = {"name": "fal", "model": "fal-ai/kling-video/v3"}
    manifest = load_manifest(write(tmp_path / "v3", provider, {"price_per_second": prices}))
    assert dict(manifest.budget.price_per_second) == {"std": 0.126, "pro": 0.2}
    assert manifest.budget.cost("std", 10.0) == pytest.approx(1.26)
    older = load_manifest(write(tmp_path / "v26", {"name": "fal"}, {"price_per_second": prices}))
    assert older.budget.cost("std", 10.0) == pytest.approx(0.7)  # v3's price is not v2.6's


def test_a_price_for_a_model_the_provider_does_not_sell_is_refused(tmp_path: Path) -> None:
    prices = {"kling-v4": {"std": 1.0}}
    path = write(tmp_path, {"name": "kling"}, {"price_per_second": prices})
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    [diag] = caught.value.diagnostics
    assert "'kling-v4' is neither a mode" in diag.message
    assert diag.line == line_of(path, "kling-v4:")


def test_plan_prices_the_v3_model(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    doc = {"version": 1, "name": "v3", "output_dir": "out",
           "provider": {"name": "sandbox", "model": "kling-3.0/motion-control"},
           "budget": {"price_per_second": {"std": 1.0, "kling-3.0/motion-control": {"std": 2.0}}},
           "jobs": [{"id": "a", "image": str(media.image), "video": str(media.video),
                     "character_orientation": "image"}]}  # fmt: skip
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    summary = pipeline.plan(path, settings=Settings.from_env({}))
    to_pay = summary.to_pay
    assert to_pay.jobs == 1 and to_pay.billed_seconds > 0
    assert to_pay.cost == pytest.approx(2.0 * to_pay.billed_seconds, rel=1e-3)


# ----------------------------------------------------------------------- over loopback

KEYS = SandboxKeys(kie="k", acedata="a", kling_access="ak", kling_secret="sk", fal="f",
                   replicate="r")  # fmt: skip
CREDENTIALS = {
    "kie": {"api_key": "k"}, "acedata": {"api_key": "a"},
    "kling": {"access_key": "ak", "secret_key": "sk"}, "fal": {"api_key": "f"},
    "replicate": {"api_key": "r"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(V3))
def test_every_v3_model_runs_against_the_sandbox(name: str, tmp_path: Path) -> None:
    model, options = V3[name]
    media = make_media(tmp_path / "media")
    with sandbox(tmp_path / "sb", {"latency": {"polls": 1}}, keys=KEYS) as (srv, log):
        config = ProviderConfig(name, model, srv.base_url, srv.base_url, options=options)
        job = Job("a", InputRef("c.png"), InputRef("d.mp4"),
                  JobSettings(mode="pro", character_orientation="image"), name, model)  # fmt: skip
        urls = InputURLs(srv.file_url(media.image), srv.file_url(media.video))

        async def main() -> TaskStatus:
            async with http_client(timeout=60) as client:
                cls = providers.get(name)
                provider = cls(config, Credentials(CREDENTIALS[name]), client)
                handle = await provider.submit(job, urls, client_id="mp-v3-1")

                async def ended() -> TaskStatus | None:
                    status = await provider.poll(handle)
                    return status if status.is_terminal else None

                return await wait_until_async(ended, what=f"the {name} v3 task to end")

        status = asyncio.run(main())
        assert status.phase == "succeeded", status
        [entry] = srv.ledger
        # The model is in the body (Kie, AceData, Kling) or the create's path (fal, Replicate).
        posted = [path for method, path in log.snapshot() if method == "POST"]
        sent = f"{entry.body} {posted}"
        assert ("v3" in sent or "3.0" in sent) and all(str(v) in sent for v in options.values())
