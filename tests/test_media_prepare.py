"""prepare(): real ffmpeg on lavfi-generated media; results measured again with ffprobe."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import mediagen
import pytest

from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, JobSettings, Trim
from pipeline.media.limits import Limits, limits_for
from pipeline.media.prepare import prepare
from pipeline.media.probe import probe_file
from pipeline.media.recipes import MediaPlan, plan_media
from pipeline.media.threads import run_bounded
from pipeline.media.tools import MediaTools, find_tools

KIE = "kling-2.6/motion-control"


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prep-media")
    mediagen.make_image(root / "char.jpg", 360, 480)
    mediagen.make_video(root / "clip6.mp4", seconds=6, width=360, height=480, fps=10)
    mediagen.make_video(root / "clip12.mp4", seconds=12, width=360, height=480, fps=10)
    mediagen.make_video(root / "short2.mp4", seconds=2, width=360, height=480, fps=10)
    mediagen.make_video(root / "small.mp4", seconds=4, width=300, height=350, fps=10)
    mediagen.make_video(root / "anim.gif", seconds=4, width=340, height=360, fps=5, audio=False)
    mediagen.make_video(root / "clip.avi", seconds=4, width=360, height=360, fps=10)
    mediagen.make_video(root / "clip.webm", seconds=4, width=360, height=360, fps=10,
                        extra=["-deadline", "realtime", "-cpu-used", "8"])  # fmt: skip
    mediagen.make_image(root / "char.webp", 360, 480)
    mediagen.make_image(root / "char.bmp", 360, 480)
    mediagen.make_alpha_image(root / "alpha.webp", 360, 480)
    (root / "jpeg_as.png").write_bytes((root / "char.jpg").read_bytes())
    return root


def _plan(
    media: Path,
    tools: MediaTools,
    video: str,
    image: str = "char.jpg",
    *,
    provider: str = "kie",
    limits: Limits | None = None,
    **settings: Any,
) -> MediaPlan:
    job = Job(
        id="j1",
        image=InputRef(raw=image, path=media / image),
        video=InputRef(raw=video, path=media / video),
        settings=JobSettings(**settings),
        provider=provider,
        model=KIE,
    )
    lim = limits or limits_for(provider, KIE, job.settings.character_orientation)
    return plan_media(
        job,
        probe_file(media / image, tools),
        probe_file(media / video, tools),
        lim,
        has_sound_field=provider != "kie",
    )


def test_nothing_to_do_returns_the_sources(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    plan = _plan(media, tools, "clip6.mp4")
    assert plan.action == "ok"
    done = prepare(plan, tools, tmp_path)
    assert (done.image, done.video) == (media / "char.jpg", media / "clip6.mp4")
    assert list(tmp_path.iterdir()) == []


def test_twelve_seconds_with_orientation_image_is_trimmed_under_ten(
    media: Path, tools: MediaTools, tmp_path: Path
) -> None:
    plan = _plan(media, tools, "clip12.mp4", character_orientation="image")
    assert plan.action == "trim"
    done = prepare(plan, tools, tmp_path)
    measured = probe_file(done.video, tools).duration
    assert measured is not None and 9.0 <= measured <= 10.0
    assert done.video_duration == measured
    assert done.video.parent == tmp_path and done.video.name.endswith(".mp4")


def test_a_rerun_reuses_the_cached_file(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    plan = _plan(media, tools, "clip12.mp4", character_orientation="image")
    first = prepare(plan, tools, tmp_path).video
    stamp = first.stat().st_mtime_ns
    again = prepare(plan, tools, tmp_path).video
    assert again == first and again.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


@pytest.mark.parametrize(("start", "expected"), [(2.0, 4.0), (2.5, 3.5)])
def test_explicit_trim_window_is_honoured(
    media: Path, tools: MediaTools, tmp_path: Path, start: float, expected: float
) -> None:
    # 2.0 s sits on a keyframe (stream copy); 2.5 s does not (re-encode).
    plan = _plan(media, tools, "clip6.mp4", trim=Trim(start=start))
    assert plan.video_recipe == f"trim={start:.3f}-6.000"
    done = prepare(plan, tools, tmp_path)
    measured = probe_file(done.video, tools).duration
    assert measured is not None and expected - 0.2 <= measured <= expected + 0.2


def test_two_seconds_is_rejected(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    plan = _plan(media, tools, "short2.mp4")
    assert plan.action == "reject" and "duration 2.00 s is under 3 s" in str(plan.error)
    with pytest.raises(MediaError, match=r"^job j1: .*short2.mp4: duration 2.00 s"):
        prepare(plan, tools, tmp_path)


def test_small_clip_is_scaled_to_340(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    plan = _plan(media, tools, "small.mp4")
    done = prepare(plan, tools, tmp_path)
    info = probe_file(done.video, tools)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (
        340,
        396,
        "h264",
        "aac",
    )


@pytest.mark.parametrize("name", ["anim.gif", "clip.avi", "clip.webm"])
def test_other_containers_become_mp4_h264_aac(
    media: Path, tools: MediaTools, tmp_path: Path, name: str
) -> None:
    plan = _plan(media, tools, name)
    assert plan.action == "convert"
    info = probe_file(prepare(plan, tools, tmp_path).video, tools)
    assert (info.format, info.video_codec, info.pix_fmt) == ("mp4", "h264", "yuv420p")
    assert info.audio_codec == (None if name == "anim.gif" else "aac")
    assert info.width % 2 == 0 and info.height % 2 == 0


def test_strip_audio_without_a_sound_field(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    plan = _plan(media, tools, "clip6.mp4", keep_original_sound=False)
    assert plan.action == "strip-audio"
    info = probe_file(prepare(plan, tools, tmp_path).video, tools)
    assert (info.has_audio, info.video_codec) == (False, "h264")
    kept = _plan(media, tools, "clip6.mp4", provider="acedata", keep_original_sound=False)
    assert kept.action == "ok"


def test_oversize_clip_is_reencoded_to_fit(media: Path, tools: MediaTools, tmp_path: Path) -> None:
    base = limits_for("kie", KIE, "video")
    source = (media / "clip6.mp4").stat().st_size
    tight = replace(base, video=replace(base.video, max_bytes=source // 2))
    plan = _plan(media, tools, "clip6.mp4", limits=tight)
    assert "reencode" in plan.steps
    done = prepare(plan, tools, tmp_path)
    assert done.video.stat().st_size <= source // 2


@pytest.mark.parametrize(("name", "fmt", "pix"), [("char.webp", "png", "rgb24"),
                                                  ("char.bmp", "png", "rgb24"),
                                                  ("alpha.webp", "png", "rgba")])  # fmt: skip
def test_images_are_converted_keeping_alpha(
    media: Path, tools: MediaTools, tmp_path: Path, name: str, fmt: str, pix: str
) -> None:
    plan = _plan(media, tools, "clip6.mp4", image=name)
    assert (plan.action, plan.image_recipe) == ("convert", f"format={fmt}")
    info = probe_file(prepare(plan, tools, tmp_path).image, tools)
    assert (info.format, info.pix_fmt, info.width, info.height) == (fmt, pix, 360, 480)


def test_jpeg_named_png_is_accepted_as_jpeg(media: Path, tools: MediaTools) -> None:
    plan = _plan(media, tools, "clip6.mp4", image="jpeg_as.png")
    assert plan.image_info is not None and plan.image_info.format == "jpeg"
    assert plan.action == "ok"


def test_animated_image_is_rejected(media: Path, tools: MediaTools) -> None:
    plan = _plan(media, tools, "clip6.mp4", image="anim.gif")
    assert plan.action == "reject" and "animated gif (20 frames)" in str(plan.error)


def test_many_preparations_run_off_the_loop_and_report_errors_in_place(
    media: Path, tools: MediaTools, tmp_path: Path
) -> None:
    plans = [
        _plan(media, tools, "clip12.mp4", character_orientation="image"),
        _plan(media, tools, "short2.mp4"),
        _plan(media, tools, "clip6.mp4", keep_original_sound=False),
    ]
    results = asyncio.run(run_bounded(plans, lambda plan: prepare(plan, tools, tmp_path), limit=2))
    assert [type(r).__name__ for r in results] == ["PreparedMedia", "MediaError", "PreparedMedia"]
