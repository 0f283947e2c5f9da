"""plan_media is pure: probe facts + limits in, a MediaPlan out. Tested with plain values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import MediaError
from pipeline.jobs import InputRef, Job, JobSettings, Trim
from pipeline.media.limits import limits_for
from pipeline.media.probe import MediaInfo, media_info_from_probe
from pipeline.media.recipes import MediaPlan, plan_media

KIE = "kling-2.6/motion-control"


def video(**facts: Any) -> MediaInfo:
    base: dict[str, Any] = {
        "source": "/in/clip.mp4", "kind": "video", "format": "mp4", "format_name": "mov,mp4",
        "size_bytes": 2_000_000, "width": 720, "height": 1280, "duration": 8.0, "fps": 30.0,
        "video_codec": "h264", "pix_fmt": "yuv420p", "has_audio": True, "audio_codec": "aac",
    }  # fmt: skip
    return MediaInfo(**{**base, **facts})


def image(**facts: Any) -> MediaInfo:
    base: dict[str, Any] = {
        "source": "/in/char.png", "kind": "image", "format": "png", "format_name": "png_pipe",
        "size_bytes": 500_000, "width": 600, "height": 900, "video_codec": "png",
        "pix_fmt": "rgb24", "frame_count": 1,
    }  # fmt: skip
    return MediaInfo(**{**base, **facts})


def job(provider: str = "kie", **settings: Any) -> Job:
    return Job(
        id="j1",
        image=InputRef(raw="char.png", path=Path("/in/char.png")),
        video=InputRef(raw="clip.mp4", path=Path("/in/clip.mp4")),
        settings=JobSettings(**settings),
        provider=provider,
        model=KIE,
    )


def plan(
    v: MediaInfo | MediaError | None = None,
    i: MediaInfo | MediaError | None = None,
    *,
    provider: str = "kie",
    sound: bool = False,
    **settings: Any,
) -> MediaPlan:
    j = job(provider, **settings)
    lim = limits_for(provider, KIE, j.settings.character_orientation)
    return plan_media(j, i or image(), v or video(), lim, has_sound_field=sound)


def test_acceptable_inputs_are_ok_with_empty_recipes() -> None:
    p = plan()
    assert (p.action, p.steps, p.billed_seconds, p.error) == ("ok", (), 8.0, None)
    assert (p.video_recipe, p.image_recipe, p.key_recipe) == ("", "", "")


def test_too_long_for_orientation_image_is_trimmed_under_ten_seconds() -> None:
    p = plan(video(duration=12.0), character_orientation="image")
    assert (p.action, p.steps) == ("trim", ("trim",))
    assert 9.0 <= p.billed_seconds <= 10.0
    assert p.video_recipe == "trim=0.000-9.750"


def test_too_long_for_orientation_video_is_trimmed_under_thirty_seconds() -> None:
    p = plan(video(duration=33.62))
    assert p.action == "trim" and 29.0 <= p.billed_seconds <= 30.0


def test_explicit_trim_window_is_honoured() -> None:
    p = plan(video(duration=20.0), trim=Trim(start=2.5, end=8.0))
    assert (p.action, p.billed_seconds, p.video_recipe) == ("trim", 5.5, "trim=2.500-8.000")


def test_explicit_trim_longer_than_the_limit_is_cut_to_the_limit() -> None:
    p = plan(video(duration=40.0), trim=Trim(start=5.0), character_orientation="image")
    assert p.video.start == 5.0 and p.video.end is not None
    assert 9.0 <= p.video.end - 5.0 <= 10.0


def test_trim_start_past_the_end_is_rejected() -> None:
    p = plan(video(duration=8.0), trim=Trim(start=9.0))
    assert p.action == "reject" and "past the end of the clip (8.00 s)" in str(p.error)


def test_too_short_is_rejected_with_value_and_range() -> None:
    p = plan(video(duration=2.0))
    assert (p.action, p.billed_seconds) == ("reject", 0.0)
    assert (
        p.error == "duration 2.00 s is under 3 s (allowed 3-30 s with character_orientation=video)"
    )
    with pytest.raises(MediaError, match=r"^job j1: /in/clip.mp4: duration 2.00 s"):
        p.raise_for_error()


def test_a_trim_window_that_is_too_short_is_rejected() -> None:
    p = plan(video(duration=20.0), trim=Trim(start=1.0, end=2.5))
    assert p.action == "reject" and "trimmed duration 1.50 s" in str(p.error)


def test_small_clip_is_scaled_up_to_340_keeping_aspect_with_even_sides() -> None:
    p = plan(video(width=300, height=350, duration=20.0))
    assert (p.action, p.steps) == ("convert", ("scale",))
    assert (p.video.width, p.video.height) == (340, 396)
    assert p.video_recipe == "scale=340x396;vcodec=h264;acodec=aac"


def test_huge_clip_is_scaled_down_under_3850() -> None:
    p = plan(video(width=4096, height=2160))
    assert p.video.width == 3850 and p.video.height is not None and p.video.height % 2 == 0


def test_a_clip_no_scaling_can_fit_is_rejected() -> None:
    p = plan(video(width=200, height=4000))
    assert p.action == "reject" and "no scaling fits" in str(p.error)


@pytest.mark.parametrize(
    ("fmt", "codec"), [("webm", "vp9"), ("avi", "mpeg4"), ("mp4", "hevc"), ("mov", "prores")]
)
def test_other_containers_and_codecs_are_converted_to_mp4_h264(fmt: str, codec: str) -> None:
    p = plan(video(format=fmt, video_codec=codec, audio_codec="aac"))
    assert p.action == "convert" and "convert" in p.steps
    assert p.video.reencode_video and "vcodec=h264" in p.video_recipe


def test_animated_gif_becomes_an_mp4() -> None:
    gif = video(kind="image", format="gif", video_codec="gif", animated=True, frame_count=60,
                has_audio=False, audio_codec=None, width=341, height=400)  # fmt: skip
    p = plan(gif)
    assert p.action == "convert"
    assert (p.video.width, p.video.height) == (340, 400)  # even sides for H.264 4:2:0


def test_mkv_is_accepted_by_kie_and_remuxed_for_acedata() -> None:
    mkv = video(format="mkv", format_name="matroska,webm")
    assert plan(mkv).action == "ok"
    p = plan(mkv, provider="acedata")
    assert p.action == "convert" and p.video_recipe == "container=mp4"
    assert not p.video.reencode_video


def test_non_aac_audio_is_reencoded() -> None:
    p = plan(video(format="mov", audio_codec="pcm_s16le"))
    assert p.action == "convert" and p.video_recipe == "acodec=aac;container=mp4"


def test_oversize_clip_is_reencoded_to_a_bitrate_that_fits() -> None:
    p = plan(video(size_bytes=300 * 1024**2, duration=20.0))
    assert p.action == "convert" and "reencode" in p.steps
    assert p.video.video_kbps is not None
    assert (p.video.video_kbps + 128) * 1000 * 20 / 8 < 100 * 1024**2


def test_strip_audio_only_without_a_sound_field() -> None:
    assert plan(keep_original_sound=False).steps == ("strip-audio",)
    assert plan(keep_original_sound=False).video_recipe == "audio=strip"
    assert plan(keep_original_sound=False, sound=True, provider="acedata").action == "ok"
    assert plan(video(has_audio=False, audio_codec=None), keep_original_sound=False).action == "ok"


def test_most_significant_action_wins_and_every_step_is_kept() -> None:
    p = plan(video(width=300, height=350, duration=20.0), keep_original_sound=False,
             character_orientation="image")  # fmt: skip
    assert p.action == "convert"
    assert p.steps == ("trim", "scale", "strip-audio")
    assert p.video_recipe == "trim=0.000-9.750;scale=340x396;vcodec=h264;audio=strip"


def test_recipes_are_deterministic_and_depend_on_the_facts() -> None:
    a = plan(video(duration=12.0), character_orientation="image")
    b = plan(video(duration=12.0, source="/elsewhere/copy.mp4"), character_orientation="image")
    c = plan(video(duration=12.0, width=300, height=350), character_orientation="image")
    assert a.key_recipe == b.key_recipe != c.key_recipe
    assert a.key_recipe == "video[trim=0.000-9.750];image[]"


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(("fmt", "target"), [("webp", "png"), ("bmp", "png"), ("tiff", "png"),
                                             ("avif", "jpeg")])  # fmt: skip
def test_other_image_formats_are_converted(fmt: str, target: str) -> None:
    p = plan(i=image(format=fmt))
    assert (p.action, p.steps, p.image_recipe) == (
        "convert",
        ("image-convert",),
        f"format={target}",
    )


def test_alpha_is_kept_in_png_when_converting() -> None:
    p = plan(i=image(format="avif", pix_fmt="yuva420p", has_alpha=True))
    assert p.image_recipe == "format=png"


def test_jpeg_and_rgba_png_are_accepted_as_is() -> None:
    assert plan(i=image(format="jpeg", video_codec="mjpeg")).action == "ok"
    assert plan(i=image(pix_fmt="rgba", has_alpha=True)).action == "ok"


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"width": 250, "height": 400}, "image is 250x400: shortest side 250 px is under the 300"),
        ({"width": 300, "height": 900}, "aspect ratio 0.33 is outside 0.4..2.5"),
        ({"animated": True, "frame_count": 12, "format": "gif"}, "animated gif (12 frames)"),
        ({"kind": "video", "format": "mp4"}, "is a video (mp4), not an image"),
    ],
)
def test_bad_images_are_rejected(facts: dict[str, Any], message: str) -> None:
    p = plan(i=image(**facts))
    assert p.action == "reject" and message in str(p.error)
    assert p.error_path == "/in/char.png"


def test_oversize_image_is_reencoded() -> None:
    assert plan(i=image(size_bytes=12 * 1024**2)).image_recipe == "format=jpeg"
    alpha = plan(i=image(size_bytes=20 * 1024**2, has_alpha=True, width=3000, height=4000))
    assert alpha.image.format == "png" and alpha.image.width is not None
    assert alpha.image.width < 3000
    assert plan(i=image(size_bytes=20 * 1024**2), provider="acedata").action == "ok"  # 50 MB


def test_a_still_image_is_not_a_driving_video() -> None:
    p = plan(image())
    assert p.action == "reject" and "is a still image (png), not a video" in str(p.error)


def test_probe_errors_become_rejections() -> None:
    failed = MediaError("unreadable: moov atom not found", path="/in/clip.mp4")
    p = plan(failed)
    assert (p.action, p.error, p.error_path) == (
        "reject",
        "unreadable: moov atom not found",
        "/in/clip.mp4",
    )


# --------------------------------------------------------------------------- probe parsing


def test_media_info_from_probe_json() -> None:
    doc = {
        "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.5", "size": "999",
                   "tags": {"major_brand": "qt  "}},
        "streams": [
            {"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
             "pix_fmt": "unknown", "avg_frame_rate": "30000/1001",
             "side_data_list": [{"rotation": -90}]},
            {"codec_type": "audio", "codec_name": "aac"},
        ],
    }  # fmt: skip
    info = media_info_from_probe(doc, source="x.mov")
    assert info is not None
    assert (info.format, info.width, info.height, info.pix_fmt) == ("mov", 1080, 1920, None)
    assert info.fps is not None and abs(info.fps - 29.97) < 0.01
    assert (info.duration, info.size_bytes, info.audio_codec) == (12.5, 999, "aac")
    assert media_info_from_probe({"streams": [{"codec_type": "audio"}]}, source="a") is None


def test_webm_and_mkv_are_told_apart_by_codec() -> None:
    def doc(codec: str) -> dict[str, Any]:
        return {"format": {"format_name": "matroska,webm", "duration": "4"},
                "streams": [{"codec_type": "video", "codec_name": codec, "width": 8, "height": 8}]}  # fmt: skip

    webm, mkv = (
        media_info_from_probe(doc("vp9"), source="a"),
        media_info_from_probe(doc("h264"), source="b"),
    )
    assert webm is not None and webm.format == "webm"
    assert mkv is not None and mkv.format == "mkv"
