"""Integration: probe + plan every real file in ../shared/media and check the expected action.

Expectations were decided by looking at each file with ffprobe (see shared/media/SOURCES.md)
and applying design.md §3 with the kie limits (kling-2.6, keep_original_sound: true).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.jobs import InputRef, Job, JobSettings
from pipeline.media.limits import limits_for
from pipeline.media.prepare import prepare
from pipeline.media.probe import MediaInfo, probe_file
from pipeline.media.recipes import MediaPlan, plan_media
from pipeline.media.tools import MediaTools, find_tools

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media"  # ../shared beside the repo
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared media at {SHARED}")

KIE = "kling-2.6/motion-control"
IMAGE = "person_fullbody_01.jpg"
VIDEO = "person_fullbody_portrait_4s.mp4"

#: video file -> (action with orientation video, action with orientation image)
VIDEOS = {
    "dance_square_10s_01.mp4": ("ok", "trim"),  # 10.33 s
    "dance_square_10s_02.mp4": ("ok", "trim"),  # 10.27 s
    "person_fullbody_portrait_4s.mp4": ("ok", "ok"),
    "talking_halfbody_portrait_12s.mp4": ("ok", "trim"),  # 11.73 s
    "talking_face_square_34s.mp4": ("trim", "trim"),  # 33.62 s
    "presenter_landscape_1080p_4s.mp4": ("ok", "ok"),  # 3.54 s, 1920x1080
    "talkinghead_small_20s.mp4": ("convert", "convert"),  # 300x350 -> scale (+ trim for image)
    "people_walking_landscape_139s.mp4": ("trim", "trim"),
    "sign_language_halfbody_4s.mkv": ("ok", "ok"),  # kie accepts mkv
}
#: image file -> (detected format, has alpha)
IMAGES = {
    "person_fullbody_01.jpg": ("jpeg", False),
    "person_halfbody_01_large.png": ("png", False),
    "person_halfbody_02_jpeg_data_png_ext.png": ("jpeg", False),
    "person_fullbody_02_rgba.png": ("png", True),
    "man_fullbody_rgba.png": ("png", True),
    "anime_halfbody_rgba.png": ("png", True),
    "person_halfbody_transparent.png": ("png", True),
    "character_halfbody_landscape.jpg": ("jpeg", False),
    "person_fullbody_03_hires.jpg": ("jpeg", False),
}


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


def _plan(
    tools: MediaTools, video: str, image: str = IMAGE, *, orientation: str = "video",
    provider: str = "kie",
) -> MediaPlan:  # fmt: skip
    job = Job(
        id=Path(video).stem,
        image=InputRef(raw=image, path=SHARED / image),
        video=InputRef(raw=video, path=SHARED / video),
        settings=JobSettings(character_orientation=orientation),  # type: ignore[arg-type]
        provider=provider,
        model=KIE,
    )
    return plan_media(
        job,
        probe_file(SHARED / image, tools),
        probe_file(SHARED / video, tools),
        limits_for(provider, KIE, orientation),
        has_sound_field=provider != "kie",
    )


def test_every_shared_file_is_covered() -> None:
    on_disk = {p.name for p in SHARED.iterdir() if p.suffix != ".md"}
    assert on_disk == set(VIDEOS) | set(IMAGES)


@pytest.mark.parametrize("orientation", ["video", "image"])
@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_video_actions(tools: MediaTools, name: str, orientation: str) -> None:
    plan = _plan(tools, name, orientation=orientation)
    expected = VIDEOS[name][0 if orientation == "video" else 1]
    assert plan.action == expected, plan
    limit = 30.0 if orientation == "video" else 10.0
    assert plan.video_info is not None and plan.video_info.duration is not None
    assert 3.0 <= plan.billed_seconds <= limit
    if "trim" in plan.steps:
        assert limit - 1 < plan.billed_seconds <= limit


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_formats_from_data_and_alpha(tools: MediaTools, name: str) -> None:
    plan = _plan(tools, VIDEO, name)
    info = plan.image_info
    assert isinstance(info, MediaInfo)
    assert (info.format, info.has_alpha) == IMAGES[name]
    assert plan.action == "ok" and plan.image_recipe == ""


def test_talkinghead_small_reports_its_pixel_format(tools: MediaTools) -> None:
    info = probe_file(SHARED / "talkinghead_small_20s.mp4", tools)
    assert (info.pix_fmt, info.width, info.height) == ("yuv420p", 300, 350)


def test_mkv_is_remuxed_for_acedata(tools: MediaTools) -> None:
    plan = _plan(tools, "sign_language_halfbody_4s.mkv", provider="acedata")
    assert (plan.action, plan.video_recipe) == ("convert", "container=mp4")


@pytest.mark.parametrize(
    ("name", "orientation", "low", "high"),
    [
        ("talking_face_square_34s.mp4", "video", 29.0, 30.0),
        ("people_walking_landscape_139s.mp4", "image", 9.0, 10.0),
        ("talkinghead_small_20s.mp4", "image", 9.0, 10.0),
    ],
)
def test_prepared_clips_measure_within_the_limit(
    tools: MediaTools, tmp_path: Path, name: str, orientation: str, low: float, high: float
) -> None:
    done = prepare(_plan(tools, name, orientation=orientation), tools, tmp_path)
    info = probe_file(done.video, tools)
    assert info.duration is not None and low < info.duration <= high
    assert info.short_side >= 340
