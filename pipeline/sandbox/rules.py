"""The model rules the sandbox enforces on submitted media, as the real services do (pure).

These are written out here on purpose instead of being read from ``specs/limits.json``: the
sandbox plays the remote service, so a mistake in the pipeline's own limits must show up as a
failed task here rather than being mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.media.probe import MediaInfo


@dataclass(frozen=True)
class ServiceRules:
    """Limits one protocol's service applies (providers.md §0, §1.2, §2.2, §3.2, §4, §5)."""

    image_formats: frozenset[str] = frozenset({"jpeg", "png"})
    image_max_bytes: int = 10 * 1024 * 1024
    image_min_side: int = 300
    image_max_side: int = 65536
    min_aspect: float = 0.4
    max_aspect: float = 2.5
    video_formats: frozenset[str] = frozenset({"mp4", "mov"})
    video_max_bytes: int = 100 * 1024 * 1024
    video_min_side: int = 340
    video_max_side: int = 3850
    min_duration: float = 3.0
    max_duration_image: float = 10.0
    max_duration_video: float = 30.0


RULES: dict[str, ServiceRules] = {
    "kie": ServiceRules(video_formats=frozenset({"mp4", "mov", "mkv"})),
    "acedata": ServiceRules(image_max_bytes=50 * 1024 * 1024),
    "kling": ServiceRules(),
    # fal and Replicate run Kling's own model: its limits, as providers.md section 0 gives them.
    "fal": ServiceRules(),
    "replicate": ServiceRules(),
}

# ffprobe's container duration can exceed the nominal length by a frame or an audio packet.
_DURATION_SLACK = 0.05


@dataclass(frozen=True)
class Breach:
    """Why the service refuses the media: a machine ``kind`` (fal's error type names are used
    as the sandbox's vocabulary), the input ``field`` at fault, and the human ``reason``."""

    kind: str
    field: str
    reason: str


def check_media(
    rules: ServiceRules, image: MediaInfo, video: MediaInfo, orientation: str
) -> str | None:
    """The reason the service would fail this task, or None when the inputs are acceptable."""
    breach = media_breach(rules, image, video, orientation)
    return None if breach is None else breach.reason


def media_breach(
    rules: ServiceRules, image: MediaInfo, video: MediaInfo, orientation: str
) -> Breach | None:
    """The rule the inputs break (the first one checked), or None when they are acceptable."""
    found = _image_breach(rules, image)
    if found is not None:
        return Breach(found[0], "image_url", found[1])
    found = _video_breach(rules, video, orientation)
    if found is not None:
        return Breach(found[0], "video_url", found[1])
    return None


def _image_breach(rules: ServiceRules, image: MediaInfo) -> tuple[str, str] | None:
    if image.kind != "image" or image.animated:
        return "image_load_error", f"image_url is not a still image (detected {image.format})"
    if image.format not in rules.image_formats:
        allowed = "/".join(sorted(rules.image_formats))
        return "unsupported_image_format", (
            f"image format {image.format} is not supported (allowed: {allowed})"
        )
    if image.size_bytes > rules.image_max_bytes:
        return "file_too_large", (
            f"image is {image.size_bytes / 1024**2:.1f} MB, "
            f"over the {rules.image_max_bytes // 1024**2} MB limit"
        )
    if image.short_side < rules.image_min_side or image.long_side > rules.image_max_side:
        kind = "image_too_small" if image.short_side < rules.image_min_side else "image_too_large"
        return kind, (
            f"image is {image.width}x{image.height}; each side must be "
            f"{rules.image_min_side}-{rules.image_max_side} px"
        )
    if not rules.min_aspect <= image.aspect <= rules.max_aspect:
        return "image_aspect_ratio", (
            f"image aspect ratio {image.aspect:.2f} is outside 1:2.5 to 2.5:1"
        )
    return None


def _video_breach(
    rules: ServiceRules, video: MediaInfo, orientation: str
) -> tuple[str, str] | None:
    if video.kind != "video":
        return "video_load_error", f"video_url is not a video (detected {video.format})"
    if video.format not in rules.video_formats:
        allowed = "/".join(sorted(rules.video_formats))
        return "unsupported_video_format", (
            f"video format {video.format} is not supported (allowed: {allowed})"
        )
    if video.size_bytes > rules.video_max_bytes:
        return "file_too_large", (
            f"video is {video.size_bytes / 1024**2:.1f} MB, "
            f"over the {rules.video_max_bytes // 1024**2} MB limit"
        )
    if video.short_side < rules.video_min_side or video.long_side > rules.video_max_side:
        return "video_resolution", (
            f"video is {video.width}x{video.height}; each side must be "
            f"{rules.video_min_side}-{rules.video_max_side} px"
        )
    duration = video.duration
    if duration is None:
        return "video_load_error", "video duration could not be determined"
    limit = rules.max_duration_image if orientation == "image" else rules.max_duration_video
    if duration < rules.min_duration:
        return "video_duration_too_short", (
            f"video duration {duration:.2f} s is shorter than {rules.min_duration:g} s"
        )
    if duration > limit + _DURATION_SLACK:
        return "video_duration_too_long", (
            f"video duration {duration:.2f} s exceeds {limit:g} s "
            f"allowed with character_orientation={orientation}"
        )
    return None
