"""``validate`` and ``plan`` on a manifest the user cannot write next to, and damaged caches.

Planning caches input hashes and probe facts in ``<output_dir>/cache``. In a read-only folder (a
real read-only tmpfs here: chmod does not stop root), or on a full disk, the caches move to a
per-user folder; when that fails too, planning works from memory. Never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from batchkit import Media, cli, cli_env, make_media, write_manifest
from mediagen import ffprobe

from pipeline.manifest.load import load_manifest
from pipeline.media.hashing import FileHasher
from pipeline.plan.build import make_plan
from pipeline.plan.cache import CacheFolder, user_cache_folder
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def _mount(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "8m") -> Iterator[Path]:
    """A fresh tmpfs at ``folder``; skips the test where this machine does not allow mounts."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a real read-only or full file system")
    done = _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    if done.returncode != 0:
        pytest.skip(
            f"mount not allowed here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN"
        )
    try:
        yield folder
    finally:
        if _mount(["umount", str(folder)]).returncode != 0:
            _mount(["umount", "-l", str(folder)])  # a straggler still has it open


def remount_readonly(folder: Path) -> None:
    done = _mount(["mount", "-o", "remount,ro", str(folder)])
    assert done.returncode == 0, done.stderr
    with pytest.raises(OSError):  # proves the mount really refuses writes, even to root
        (folder / "probe").write_text("x")


def manifest_in(folder: Path, media: Media, *, output_dir: str = "out") -> Path:
    shutil.copy(media.image, folder / "char.png")
    shutil.copy(media.video, folder / "dance.mp4")
    jobs = [{"id": "a", "image": "char.png", "video": "dance.mp4", "prompt": "p"}]
    path = write_manifest(folder, {"name": "kie"}, jobs)
    if output_dir != "out":
        path.write_text(
            path.read_text().replace("output_dir: out", f"output_dir: {output_dir}"), "utf-8"
        )
    return path


def counting_ffprobe(folder: Path) -> tuple[Path, Path]:
    """An ffprobe that logs each call, so a test can tell a cache hit from a probe."""
    calls = folder / "ffprobe-calls.log"
    script = folder / "ffprobe"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexec "{ffprobe()}" "$@"\n')
    script.chmod(0o755)
    return script, calls


def calls_in(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_validate_and_plan_in_a_read_only_folder_cache_per_user(
    media: Media, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "ro") as folder:
        manifest = manifest_in(folder, media)
        remount_readonly(folder)
        probe, calls = counting_ffprobe(tmp_path)
        xdg = tmp_path / "xdg"
        env = cli_env(XDG_CACHE_HOME=str(xdg), MOTION_PIPELINE_FFPROBE=str(probe))

        checked = cli("validate", manifest, env=env)
        assert checked.returncode == 0, checked.stderr
        assert "Traceback" not in checked.stderr and "ok (1 jobs" in checked.stdout

        cached = user_cache_folder(xdg / "motion-pipeline", folder / "out")
        assert json.loads((cached / "hashes.json").read_text())["version"] == 1
        assert json.loads((cached / "probes.json").read_text())["version"] == 1
        assert not (folder / "out").exists()
        probes_so_far = calls_in(calls)
        assert probes_so_far >= 2  # the image and the video were really probed once

        shown = cli("plan", manifest, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert [j["action"] for j in json.loads(shown.stdout)["jobs"]] == ["ok"]
        assert calls_in(calls) == probes_so_far  # answered from the per-user cache
        text = cli("plan", manifest, env=env)
        assert text.returncode == 0 and "Traceback" not in text.stderr


def test_without_any_writable_cache_planning_works_from_memory(
    media: Media, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "ro") as folder:
        manifest = manifest_in(folder, media)
        (folder / "home").mkdir()
        remount_readonly(folder)
        # The per-user cache is on the read-only mount too: nowhere to write at all.
        env = cli_env(XDG_CACHE_HOME=str(folder / "home" / ".cache"))
        for args in (["validate", manifest], ["plan", manifest], ["plan", manifest, "--json"]):
            proc = cli(*args, env=env)
            assert proc.returncode == 0, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
        unset = cli_env()
        unset.pop("HOME", None)
        unset.pop("XDG_CACHE_HOME", None)
        proc = cli("plan", manifest, env=unset)  # no home at all: memory only as well
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_full_output_disk_moves_the_cache_to_the_user_folder(
    media: Media, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "full", size="256k") as full:
        with contextlib.suppress(OSError), (full / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        (tmp_path / "m").mkdir()
        manifest = manifest_in(tmp_path / "m", media, output_dir=str(full / "out"))
        xdg = tmp_path / "xdg"
        proc = cli("plan", manifest, env=cli_env(XDG_CACHE_HOME=str(xdg)))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        cached = user_cache_folder(xdg / "motion-pipeline", full / "out")
        assert (cached / "probes.json").is_file() and (cached / "hashes.json").is_file()
        assert not list(full.rglob("*.json"))  # nothing half-written left on the full disk


@pytest.mark.parametrize(
    "damage",
    [b"", b'{"version": 1, "files": {"x": [1, 2', b"\xff\xfe not json", b"[1, 2, 3]",
     b'{"version": 1, "files": [], "probes": 7}',
     b'{"version": 1, "files": {"%s": 5, "y": [1, "2", 3, 4, "h"]}, "probes": {"k": 1}}'],
    ids=["empty", "half-written", "binary", "a-list", "wrong-shapes", "wrong-types"],
)  # fmt: skip
def test_a_damaged_cache_reads_as_empty(damage: bytes, media: Media, tmp_path: Path) -> None:
    manifest = manifest_in(tmp_path, media)
    cache = tmp_path / "out" / "cache"
    cache.mkdir(parents=True)
    for name in ("hashes.json", "probes.json"):
        (cache / name).write_bytes(damage.replace(b"%s", str(tmp_path / "char.png").encode()))
    settings = Settings.from_env(cli_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    plan = make_plan(load_manifest(manifest), settings)
    assert [pj.action for pj in plan.jobs] == ["ok"]
    # Rewritten whole: the next plan reads it.
    assert json.loads((cache / "probes.json").read_text())["version"] == 1
    hasher = FileHasher(cache / "hashes.json")
    assert make_plan(load_manifest(manifest), settings, hasher=hasher).jobs == plan.jobs
    assert hasher.reads == 0


def test_cache_folder_falls_back_in_order_and_remembers(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")  # a folder that cannot be created: the path is a file
    fallback = tmp_path / "user"
    folder = CacheFolder([blocked / "cache", fallback])
    assert folder.write_json("a.json", {"n": 1}) == fallback / "a.json"
    assert folder.where == fallback  # the refused folder is not tried again
    assert folder.read_json("a.json") == {"n": 1}
    assert CacheFolder([]).write_json("a.json", {}) is None
    assert CacheFolder([tmp_path / "none"]).read_json("a.json") is None


def test_a_probe_entry_of_the_wrong_shape_is_probed_again(media: Media, tmp_path: Path) -> None:
    manifest = manifest_in(tmp_path, media)
    probe, calls = counting_ffprobe(tmp_path)
    env = cli_env(XDG_CACHE_HOME=str(tmp_path / "xdg"), MOTION_PIPELINE_FFPROBE=str(probe))
    settings = Settings.from_env(env)
    first = make_plan(load_manifest(manifest), settings)
    probed = calls_in(calls)
    assert probed >= 2
    cache = tmp_path / "out" / "cache" / "probes.json"
    doc = json.loads(cache.read_text())
    for facts in doc["probes"].values():
        facts["width"] = "wide"  # a hand edit, or an older layout
    cache.write_text(json.dumps(doc))
    again = make_plan(load_manifest(manifest), settings)
    assert again.jobs == first.jobs
    assert calls_in(calls) == 2 * probed  # probed again, not misread
    make_plan(load_manifest(manifest), settings)
    assert calls_in(calls) == 2 * probed  # and cached again
