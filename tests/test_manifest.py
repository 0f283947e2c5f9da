"""Manifest loading, expansion and job identity (semantic rules beyond the golden corpus)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.jobs import Trim, job_key
from pipeline.manifest.load import load_manifest, schema
from pipeline.manifest.yamlsafe import MAX_BYTES, YamlProblem, load_text
from pipeline.media.hashing import FileHasher
from pipeline.plan.build import make_plan


def write(tmp: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for rel in ("img/alice.png", "img/bob.png", "img/carol.jpg", "vid/salsa.mp4", "vid/tango.mp4"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return tmp_path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return [f"{d.path}: {d.message}" for d in info.value.diagnostics]


def test_defaults_merge_and_job_override(files: Path) -> None:
    m = load_manifest(
        write(
            files,
            """
version: 1
name: set
provider: {name: kie, concurrency: 7, rate_limit: {requests: 5, per_seconds: 2}}
defaults: {mode: pro, prompt: "dance", trim: {start: 1, end: 4}}
jobs:
  - {id: a, image: img/alice.png, video: vid/salsa.mp4}
  - {image: img/bob.png, video: vid/tango.mp4, mode: std, keep_original_sound: false}
""",
        )
    )
    a, b = m.jobs
    assert (a.settings.mode, a.settings.prompt, a.settings.trim) == ("pro", "dance", Trim(1.0, 4.0))
    assert (b.settings.mode, b.settings.keep_original_sound) == ("std", False)
    assert b.id == "bob-tango"
    assert m.provider.concurrency == 7
    assert (m.provider.rate_limit.requests, m.provider.rate_limit.per_seconds) == (5, 2.0)
    assert m.provider.model == "kling-2.6/motion-control"
    assert m.provider.key_envs == {"api_key": "KIE_API_KEY"}
    assert m.output_dir == (files / "out" / "set").resolve()
    assert a.image.path == files / "img" / "alice.png"
    assert a.line == 7


def test_matrix_is_sorted_cartesian_product_with_hash_only_where_needed(files: Path) -> None:
    m = load_manifest(
        write(
            files,
            """
version: 1
name: grid
provider: sandbox
matrix:
  image: [img/*.png, img/carol.jpg]
  video: [vid/*.mp4]
  mode: [std, pro]
jobs:
  - {image: img/alice.png, video: https://example.com/waltz.mp4}
""",
        )
    )
    ids = [j.id for j in m.jobs]
    assert len(ids) == 1 + 3 * 2 * 2
    assert ids[0] == "alice-waltz"  # unique: no hash
    grid = m.jobs[1:]
    assert [(j.image.path.name, j.video.path.name, j.settings.mode) for j in grid[:4]] == [  # type: ignore[union-attr]
        ("alice.png", "salsa.mp4", "std"),
        ("alice.png", "salsa.mp4", "pro"),
        ("alice.png", "tango.mp4", "std"),
        ("alice.png", "tango.mp4", "pro"),
    ]
    assert all(
        j.id.startswith(f"{j.image.stem}-{j.video.stem}-") and len(j.id.split("-")[-1]) == 8
        for j in grid
    )
    assert len({j.id.lower() for j in m.jobs}) == len(m.jobs)
    # Deterministic: loading again gives the same ids.
    assert [j.id for j in load_manifest(files / "m.yaml").jobs] == ids


def test_derived_ids_are_sanitised(tmp_path: Path) -> None:
    (tmp_path / "my photo (1).png").write_bytes(b"x")
    (tmp_path / ".hidden clip.mp4").write_bytes(b"y")
    m = load_manifest(
        write(
            tmp_path,
            'version: 1\nname: s\nprovider: kie\njobs:\n  - {image: "my photo (1).png", video: ".hidden clip.mp4"}\n',
        )
    )
    assert m.jobs[0].id == "my_photo_1_-hidden_clip"


def test_special_files_are_rejected_without_opening(files: Path) -> None:
    fifo = files / "pipe.mp4"
    os.mkfifo(fifo)
    (files / "link.png").symlink_to(files / "img")
    (files / "dangling.png").symlink_to(files / "nowhere.png")
    errs = errors_of(
        write(
            files,
            """
version: 1
name: s
provider: kie
jobs:
  - {image: link.png, video: pipe.mp4}
  - {image: dangling.png, video: /dev/null}
""",
        )
    )
    assert errs == [
        "$.jobs[0].image: image 'link.png': is a directory, not a regular file",
        "$.jobs[0].video: video 'pipe.mp4': is a FIFO, not a regular file",
        "$.jobs[1].image: image 'dangling.png': file not found",
        "$.jobs[1].video: video '/dev/null': is a character device, not a regular file",
    ]


def test_oversized_manifest_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)
    assert errors_of(path) == [
        f"$: file is {MAX_BYTES + 1} bytes; manifests are limited to {MAX_BYTES} bytes"
    ]


def test_alias_bomb_fails_but_normal_anchors_and_merge_keys_work(files: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    with pytest.raises(YamlProblem, match="alias bomb"):
        load_text(bomb)
    m = load_manifest(
        write(
            files,
            """
version: 1
name: anchors
provider: kie
defaults: &d {mode: pro, prompt: "x"}
jobs:
  - {<<: *d, image: img/alice.png, video: vid/salsa.mp4}
  - <<: *d
    mode: std
    image: img/bob.png
    video: vid/salsa.mp4
""",
        )
    )
    assert [j.settings.mode for j in m.jobs] == ["pro", "std"]
    assert errors_of(
        write(
            files,
            "version: 1\nname: a\nprovider: kie\njobs:\n  - {<<: *nope, image: x}\n",
            "u.yaml",
        )
    )


def test_non_mapping_document_and_empty_file(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, "")) == [
        "$: the manifest must be a mapping (version, name, provider, jobs...)"
    ]
    assert errors_of(tmp_path / "missing.yaml") == ["$: manifest file not found"]


def test_job_key_is_stable_and_sensitive(files: Path) -> None:
    m = load_manifest(
        write(
            files,
            "version: 1\nname: k\nprovider: kie\njobs:\n  - {id: a, image: img/alice.png, video: vid/salsa.mp4}\n",
        )
    )
    job = m.jobs[0]
    k1 = job_key(job, image_sha256="i", video_sha256="v")
    assert k1 == job_key(job, image_sha256="i", video_sha256="v")
    assert k1 != job_key(job, image_sha256="i", video_sha256="w")
    assert k1 != job_key(job, image_sha256="i", video_sha256="v", recipe="trim=0-10")
    other = load_manifest(
        write(
            files,
            "version: 1\nname: k\nprovider: kie\njobs:\n  - {id: a, image: img/alice.png, video: vid/salsa.mp4, prompt: p}\n",
        )
    ).jobs[0]
    assert k1 != job_key(other, image_sha256="i", video_sha256="v")


def test_each_input_hashed_once_and_cached_across_runs(files: Path) -> None:
    path = write(
        files,
        "version: 1\nname: h\nprovider: kie\nmatrix:\n  image: [img/*.png]\n  video: [vid/*.mp4]\n  mode: [std, pro]\n",
    )
    m = load_manifest(path)
    cache = files / "cache.json"
    first = FileHasher(cache)
    plan1 = make_plan(m, hasher=first)
    assert first.reads == 4  # 2 images + 2 videos for 8 jobs
    second = FileHasher(cache)
    plan2 = make_plan(m, hasher=second)
    assert second.reads == 0
    assert [p.key for p in plan1.jobs] == [p.key for p in plan2.jobs]
    assert len({p.key for p in plan1.jobs}) == 8
    # Changing a file's content changes its hash (and the keys that use it), and only those.
    (files / "img" / "alice.png").write_bytes(b"different content")
    third = FileHasher(cache)
    plan3 = make_plan(m, hasher=third)
    assert third.reads == 1
    changed = [a.job.id for a, b in zip(plan1.jobs, plan3.jobs, strict=True) if a.key != b.key]
    assert changed and all(i.startswith("alice-") for i in changed)


def test_every_schema_property_has_a_description() -> None:
    missing: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if "description" not in prop and "$ref" not in prop:
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    doc = schema()
    walk(doc, "$")
    assert missing == []
    objects: list[dict[str, object]] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                objects.append(node)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert objects and all(o.get("additionalProperties") is False for o in objects)


def test_example_manifests_are_valid_and_declare_the_schema() -> None:
    root = Path(__file__).parent.parent / "manifests"
    # The examples name the demo media that `make demo` generates (it is not committed).
    spec = importlib.util.spec_from_file_location("make_demo_media", root / "make_demo_media.py")
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    assert maker.main() == 0
    examples = sorted(root.glob("*.yaml"))
    assert len(examples) >= 4
    for example in examples:
        assert example.read_text().startswith(
            "# yaml-language-server: $schema=../specs/manifest.schema.json"
        )
        manifest = load_manifest(example)
        assert manifest.jobs


def test_the_schema_states_the_defaults_the_tool_uses() -> None:
    from pipeline.providers.base import ProviderConfig
    from pipeline.settings import DEFAULTS

    props = schema()["$defs"]["provider"]["properties"]
    assert props["concurrency"]["default"] == DEFAULTS.concurrency
    assert props["poll_interval"]["default"] == DEFAULTS.poll_interval
    assert props["task_timeout"]["default"] == DEFAULTS.task_timeout
    assert props["rate_limit"]["default"] == {
        "requests": DEFAULTS.rate_requests, "per_seconds": DEFAULTS.rate_per_seconds,
    }  # fmt: skip
    config = ProviderConfig("kie", "m", "https://x")
    assert (config.concurrency, config.poll_interval, config.task_timeout) == (
        DEFAULTS.concurrency, DEFAULTS.poll_interval, DEFAULTS.task_timeout,
    )  # fmt: skip
