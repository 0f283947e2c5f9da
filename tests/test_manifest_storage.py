"""The manifest's ``storage`` block: defaults, checks, what it lets providers without an upload
API accept, the example manifests, and the clear error without the s3 extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mediagen import make_image, make_video

from pipeline import providers
from pipeline.errors import ManifestError
from pipeline.manifest.load import load_manifest
from pipeline.manifest.model import StorageConfig
from pipeline.plan.build import make_plan
from pipeline.storage.policy import can_send_files

EXAMPLES = sorted((Path(__file__).parent.parent / "manifests").glob("*.yaml"))


def write(folder: Path, text: str) -> Path:
    path = folder / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def media(tmp_path: Path) -> Path:
    make_image(tmp_path / "char.png", 400, 600)
    make_video(tmp_path / "long.mp4", seconds=12.0, width=360, height=480, fps=10)
    return tmp_path


def manifest_text(provider: str, storage: str = "") -> str:
    return f"""
version: 1
name: set-1
provider: {provider}
{storage}
defaults: {{character_orientation: image}}
jobs:
  - {{id: a, image: char.png, video: long.mp4}}
"""


def test_defaults_of_the_storage_block(media: Path) -> None:
    m = load_manifest(write(media, manifest_text("kling", "storage: {kind: s3, bucket: in-b}")))
    assert m.storage == StorageConfig(bucket="in-b", prefix="motion-pipeline/set-1/")
    assert (m.storage.url_expires, m.storage.endpoint_url, m.storage.region) == (3600, None, None)


@pytest.mark.parametrize(("given", "kept"), [("data/x", "data/x/"), ("", ""), ("a/", "a/")])
def test_prefix_gets_its_final_slash(media: Path, given: str, kept: str) -> None:
    block = f'storage: {{kind: s3, bucket: in-b, prefix: "{given}"}}'
    m = load_manifest(write(media, manifest_text("kling", block)))
    assert m.storage is not None and m.storage.prefix == kept


def test_endpoint_region_and_lifetime_are_kept(media: Path) -> None:
    block = (
        "storage: {kind: s3, bucket: in-b, endpoint_url: 'http://127.0.0.1:9000/', "
        "region: auto, url_expires: 60}"
    )
    m = load_manifest(write(media, manifest_text("acedata", block)))
    assert m.storage is not None
    assert (m.storage.endpoint_url, m.storage.region, m.storage.url_expires) == (
        "http://127.0.0.1:9000",
        "auto",
        60,
    )


@pytest.mark.parametrize("provider", ["acedata", "kling"])
def test_local_files_need_storage_on_providers_without_upload(media: Path, provider: str) -> None:
    with pytest.raises(ManifestError, match="add a storage block"):
        load_manifest(write(media, manifest_text(provider)))
    m = load_manifest(write(media, manifest_text(provider, "storage: {kind: s3, bucket: in-b}")))
    assert [j.id for j in m.jobs] == ["a"]


def test_can_send_files_is_the_one_question() -> None:
    storage = StorageConfig(bucket="in-b", prefix="")
    kie, kling = providers.get("kie"), providers.get("kling")
    assert can_send_files(kie, None) and can_send_files(kie, storage)
    assert not can_send_files(kling, None) and can_send_files(kling, storage)


def test_plan_prepares_local_files_for_kling_with_storage(media: Path) -> None:
    block = "storage: {kind: s3, bucket: in-b}"
    plan = make_plan(load_manifest(write(media, manifest_text("kling", block))))
    (job,) = plan.jobs
    assert job.action == "trim" and job.error is None


def test_an_url_that_needs_preparation_is_planned_with_storage_only(media: Path) -> None:
    from test_url_probe import serve  # a plain loopback file server

    with serve(media) as base:
        text = manifest_text("kling").replace("long.mp4", f"{base}/long.mp4")
        text = text.replace("char.png", f"{base}/char.png")
        without = make_plan(load_manifest(write(media, text)))
        with_storage = make_plan(
            load_manifest(
                write(media, text.replace("jobs:", "storage: {kind: s3, bucket: in-b}\njobs:"))
            )
        )
    (rejected,) = without.jobs
    assert rejected.action == "reject" and "add a storage block" in (rejected.error or "")
    (planned,) = with_storage.jobs
    assert planned.action == "trim" and planned.error is None


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_manifests_are_valid(example: Path) -> None:
    m = load_manifest(example, check_files=False)
    assert m.jobs


def test_examples_show_storage_for_the_url_only_providers() -> None:
    storages = {
        load_manifest(e, check_files=False).provider.name
        for e in EXAMPLES
        if load_manifest(e, check_files=False).storage is not None
    }
    assert {"acedata", "kling"} <= storages


def test_validate_without_the_s3_extra_says_what_to_install(media: Path) -> None:
    path = write(media, manifest_text("kling", "storage: {kind: s3, bucket: in-b}"))
    code = (
        "import sys; sys.modules['boto3'] = None\n"  # as if motion-pipeline[s3] were not installed
        "from pipeline.cli import main\n"
        f"sys.exit(main(['validate', {str(path)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "$.storage: storage kind s3 needs boto3" in proc.stderr
    assert "pip install 'motion-pipeline[s3]'" in proc.stderr
    assert "Traceback" not in proc.stderr
