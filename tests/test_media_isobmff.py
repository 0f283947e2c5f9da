"""The structural MP4 check that verifies results without an ffprobe process: on real files made
by ffmpeg it finds what ffprobe finds, and whatever it does not fully understand (truncated,
padded, no moov, not MP4 at all, a codec it does not name) it leaves to ffprobe (None)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mediagen import drop_mp4_box, make_image, make_video

from pipeline.dataset.results import verify_existing
from pipeline.media.isobmff import mp4_info
from pipeline.media.probe import probe_file
from pipeline.media.tools import MediaTools, find_tools

HEVC = ["-c:v", "libx265", "-tag:v", "hvc1", "-x265-params", "log-level=none"]


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


@pytest.mark.parametrize(
    ("name", "seconds", "size", "kwargs"),
    [
        ("plain.mp4", 4.0, (360, 480), {"audio": False}),
        ("tone.mp4", 3.5, (340, 340), {}),
        ("fast.mp4", 2.0, (320, 240), {"fps": 30, "extra": ["-movflags", "+faststart"]}),
        ("rotated.mp4", 3.0, (320, 480), {"extra": ["-metadata:s:v", "rotate=90"]}),
        ("clip.mov", 3.0, (300, 200), {}),
        ("hevc.mp4", 2.0, (320, 240), {"audio": False, "extra": HEVC}),
    ],
)
def test_it_finds_what_ffprobe_finds(
    tmp_path: Path, tools: MediaTools, name: str, seconds: float, size: tuple[int, int],
    kwargs: dict[str, object],
) -> None:  # fmt: skip
    path = make_video(tmp_path / name, seconds, *size, **kwargs)  # type: ignore[arg-type]
    ours, theirs = mp4_info(path), probe_file(path, tools)
    assert ours is not None
    assert (ours.kind, ours.format, ours.format_name) == (theirs.kind, theirs.format,
                                                          theirs.format_name)  # fmt: skip
    assert (ours.width, ours.height, ours.video_codec) == (theirs.width, theirs.height,
                                                           theirs.video_codec)  # fmt: skip
    assert ours.duration == pytest.approx(theirs.duration, abs=0.05)
    assert ours.fps == pytest.approx(theirs.fps, rel=0.01)
    assert (ours.has_audio, ours.audio_codec) == (theirs.has_audio, theirs.audio_codec)
    assert ours.frame_count == theirs.frame_count
    assert ours.size_bytes == path.stat().st_size


def test_what_it_does_not_understand_goes_to_ffprobe(tmp_path: Path) -> None:
    good = make_video(tmp_path / "good.mp4", 3.0, 320, 240)
    data = good.read_bytes()
    cases = {
        "truncated.mp4": data[: len(data) - 1000],
        "padded.mp4": data + b"\0" * 100,
        "header-only.mp4": data[:40],
        "html.mp4": b"<html><body>Access denied</body></html>",
        "empty.mp4": b"",
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        assert mp4_info(tmp_path / name) is None, name
    assert mp4_info(drop_mp4_box(good, tmp_path / "no-moov.mp4")) is None
    assert mp4_info(make_video(tmp_path / "clip.mkv", 2.0, 320, 240)) is None  # not ISO-BMFF
    assert mp4_info(make_image(tmp_path / "still.png", 320, 240)) is None
    assert mp4_info(tmp_path / "missing.mp4") is None


def test_an_unknown_video_codec_goes_to_ffprobe(tmp_path: Path, tools: MediaTools) -> None:
    path = make_video(tmp_path / "mjpeg.mov", 2.0, 320, 240, audio=False,
                      extra=["-c:v", "mjpeg"])  # fmt: skip
    assert mp4_info(path) is None
    assert probe_file(path, tools).video_codec == "mjpeg"  # the fallback still knows it


def test_results_are_verified_by_it_and_refused_through_ffprobe(
    tmp_path: Path, tools: MediaTools
) -> None:
    good = make_video(tmp_path / "videos" / "a.mp4", 3.0, 320, 240)
    found = verify_existing(good, tools=tools, expect_seconds=5)
    assert found is not None and (found.width, found.height, found.codec) == (320, 240, "h264")
    assert verify_existing(good, tools=tools, expect_seconds=1) is None  # longer than billed
    broken = tmp_path / "videos" / "b.mp4"
    broken.write_bytes(good.read_bytes()[:2000])  # the moov went with the tail
    assert mp4_info(broken) is None
    assert verify_existing(broken, tools=tools, expect_seconds=5) is None
