"""The pure plan of one job's inputs: what must happen to them before anything is spent.

:func:`plan_media` decides, from probe facts and limits only, whether a job's inputs go as they
are, are trimmed, converted, stripped of their audio, or rejected. Its recipes are deterministic
strings that become part of the job key; :mod:`pipeline.media.prepare` executes them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pipeline.errors import MediaError
from pipeline.jobs import Job, Trim
from pipeline.media.limits import Limits
from pipeline.media.probe import MediaInfo

Action = Literal["ok", "trim", "convert", "strip-audio", "reject"]
#: Most significant first: ``action`` is the first of these that any step maps to.
_ACTION_ORDER: tuple[Action, ...] = ("reject", "convert", "trim", "strip-audio", "ok")
_STEP_ACTION: dict[str, Action] = {
    "trim": "trim",
    "convert": "convert",
    "scale": "convert",
    "reencode": "convert",
    "strip-audio": "strip-audio",
    "image-convert": "convert",
    "image-reencode": "convert",
}
#: A clip cut *to the limit* ends this far under it: AAC frames (~23 ms) and frame rounding can
#: make ffprobe measure a cut a few ms longer than asked, and the result must never exceed it.
TRIM_MARGIN = 0.25
#: Single-frame formats that convert to PNG without loss (design.md: webp and bmp become png).
_LOSSLESS_IMAGE_FORMATS = {"webp", "bmp", "tiff", "gif", "png", "ppm", "pgm", "pbm", "qoi", "tga"}


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class VideoRecipe:
    """How to turn the source clip into what is sent; the identity recipe means "send as is"."""

    start: float = 0.0
    end: float | None = None
    """Cut window in source seconds; ``end=None`` means no trim."""
    width: int | None = None
    height: int | None = None
    """Scale target (even sides), when the source sides are outside the range or odd."""
    reencode_video: bool = False
    video_kbps: int | None = None
    """Bitrate cap for an oversize clip."""
    reencode_audio: bool = False
    strip_audio: bool = False
    to_mp4: bool = False

    @property
    def length(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        """What was done to the clip, for provenance: the window cut, the size, the audio."""
        return {
            "trim": None if self.end is None else {"start": self.start, "end": self.end},
            "scale": None if self.width is None else {"width": self.width, "height": self.height},
            "audio": "stripped" if self.strip_audio else "re-encoded" if self.reencode_audio
            else "kept",
            "video_reencoded": self.reencode_video,
            "video_kbps": self.video_kbps,
            "container": "mp4" if self.to_mp4 else None,
        }  # fmt: skip

    @property
    def is_identity(self) -> bool:
        return self.text == ""

    @property
    def text(self) -> str:
        """Deterministic description, e.g. ``trim=0.000-9.750;scale=340x396;audio=strip``."""
        parts = []
        if self.end is not None:
            parts.append(f"trim={self.start:.3f}-{self.end:.3f}")
        if self.width is not None:
            parts.append(f"scale={self.width}x{self.height}")
        if self.video_kbps is not None:
            parts.append(f"vbitrate={self.video_kbps}k")
        if self.reencode_video:
            parts.append("vcodec=h264")
        if self.strip_audio:
            parts.append("audio=strip")
        elif self.reencode_audio:
            parts.append("acodec=aac")
        if self.to_mp4:
            parts.append("container=mp4")
        return ";".join(parts)


@dataclass(frozen=True)
class ImageRecipe:
    format: str | None = None
    """Target format (``png``/``jpeg``) when the image must be rewritten."""
    width: int | None = None
    height: int | None = None

    @property
    def is_identity(self) -> bool:
        return self.format is None

    def as_dict(self) -> dict[str, Any]:
        scale = None if self.width is None else {"width": self.width, "height": self.height}
        return {"format": self.format, "scale": scale}

    @property
    def text(self) -> str:
        if self.format is None:
            return ""
        size = f";scale={self.width}x{self.height}" if self.width is not None else ""
        return f"format={self.format}{size}"


@dataclass(frozen=True)
class MediaPlan:
    """What happens to one job's inputs before submission; pure data, decided by plan_media."""

    job_id: str
    action: Action
    steps: tuple[str, ...]
    billed_seconds: float
    """Seconds of driving video that will be sent (after trimming); 0 when rejected."""
    video: VideoRecipe = field(default_factory=VideoRecipe)
    image: ImageRecipe = field(default_factory=ImageRecipe)
    error: str | None = None
    """Why the job is rejected: the measured value and the allowed range."""
    error_path: str | None = None
    limits: Limits | None = None
    video_info: MediaInfo | None = None
    image_info: MediaInfo | None = None

    @property
    def video_recipe(self) -> str:
        return self.video.text

    @property
    def image_recipe(self) -> str:
        return self.image.text

    @property
    def is_identity(self) -> bool:
        """Both inputs go as they are: nothing to prepare."""
        return self.video.is_identity and self.image.is_identity

    @property
    def key_recipe(self) -> str:
        """The ``recipe`` for :func:`pipeline.jobs.job_key`: empty when nothing is prepared."""
        if self.video.is_identity and self.image.is_identity:
            return ""
        return f"video[{self.video.text}];image[{self.image.text}]"

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise MediaError(self.error, job_id=self.job_id, path=self.error_path)


class _Reject(Exception):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


# --------------------------------------------------------------------------- planning


def plan_media(
    job: Job,
    image: MediaInfo | MediaError,
    video: MediaInfo | MediaError,
    limits: Limits,
    *,
    has_sound_field: bool,
) -> MediaPlan:
    """Decide, from probe facts and limits only, how to make a job's inputs acceptable (pure).

    A probe failure passed in as a MediaError becomes a rejection of this job.
    """
    image_info = image if isinstance(image, MediaInfo) else None
    video_info = video if isinstance(video, MediaInfo) else None
    settings = job.settings
    video_part = _video_part(settings.trim, settings.keep_original_sound, video, limits,
                             has_sound_field)  # fmt: skip
    image_part = video_part if isinstance(video_part, _Reject) else _image_part(image, limits)
    if isinstance(image_part, _Reject):  # the video's rejection (checked first), or the image's
        return MediaPlan(job_id=job.id, action="reject", steps=("reject",), billed_seconds=0.0,
                         error=image_part.message, error_path=image_part.path, limits=limits,
                         video_info=video_info, image_info=image_info)  # fmt: skip
    video_recipe, video_steps, billed = cast(tuple[VideoRecipe, tuple[str, ...], float], video_part)
    image_recipe, image_steps = image_part
    steps = (*video_steps, *image_steps)
    action = _action(steps)
    return MediaPlan(
        job_id=job.id,
        action=action,
        steps=steps,
        billed_seconds=round(billed, 3),
        video=video_recipe,
        image=image_recipe,
        limits=limits,
        video_info=video_info,
        image_info=image_info,
    )


# Each input's half of the decision depends on that input and a few settings only, so in a
# matrix (100 images x 1,000 clips) it is made once per input, not once per job. A rejection is
# remembered too, and raised again for every job that sends the input.


@functools.lru_cache(maxsize=256)
def _action(steps: tuple[str, ...]) -> Action:
    actions = {_STEP_ACTION[s] for s in steps}
    return next((a for a in _ACTION_ORDER if a in actions), "ok")


@functools.lru_cache(maxsize=8192)
def _video_part(
    trim: Trim, keep_sound: bool, video: MediaInfo | MediaError, limits: Limits, sound_field: bool
) -> tuple[VideoRecipe, tuple[str, ...], float] | _Reject:
    try:
        recipe, steps, billed = _plan_video(trim, keep_sound, video, limits, sound_field)
    except _Reject as rejected:
        return _Reject(rejected.message, rejected.path)  # kept without its traceback
    return recipe, tuple(steps), billed


@functools.lru_cache(maxsize=8192)
def _image_part(
    image: MediaInfo | MediaError, limits: Limits
) -> tuple[ImageRecipe, tuple[str, ...]] | _Reject:
    try:
        recipe, steps = _plan_image(image, limits)
    except _Reject as rejected:
        return _Reject(rejected.message, rejected.path)
    return recipe, tuple(steps)


def _unreadable(info: MediaInfo | MediaError, slot: str) -> MediaInfo:
    if isinstance(info, MediaError):
        raise _Reject(info.reason, info.path or slot)
    return info


def _even(value: float, *, up: bool) -> int:
    return int(math.ceil(value / 2) * 2) if up else max(2, int(round(value / 2) * 2))


def _fit_sides(info: MediaInfo, min_side: int, max_side: int) -> tuple[int, int] | None:
    """Scaled (width, height) keeping the aspect, or None when the sides are already in range."""
    short, long = info.short_side, info.long_side
    if min_side <= short and long <= max_side:
        return None
    factor = min_side / short if short < min_side else max_side / long
    if short * factor < min_side - 0.5 or long * factor > max_side + 0.5:
        raise _Reject(
            f"video is {info.width}x{info.height}: no scaling fits both sides into "
            f"{min_side}..{max_side} px",
            info.source,
        )
    up = factor > 1
    width, height = info.width * factor, info.height * factor
    if info.width <= info.height:
        return _even(width, up=up), _even(height, up=False)
    return _even(width, up=False), _even(height, up=up)


def _plan_video(
    trim: Trim,
    keep_sound: bool,
    given: MediaInfo | MediaError,
    limits: Limits,
    has_sound_field: bool,
) -> tuple[VideoRecipe, list[str], float]:
    info = _unreadable(given, "video")
    lim = limits.video
    if info.kind == "image" and not info.animated:
        raise _Reject(f"is a still image ({info.format}), not a video", info.source)
    duration = info.duration
    if not duration:
        raise _Reject("unreadable: ffprobe reports no duration", info.source)
    allowed = (
        f"allowed {lim.min_duration:g}-{lim.max_duration:g} s with "
        f"character_orientation={limits.orientation}"
    )
    start = trim.start
    if start >= duration:
        raise _Reject(
            f"trim start {start:g} s is past the end of the clip ({duration:.2f} s)", info.source
        )
    end = duration if trim.end is None else min(trim.end, duration)
    steps: list[str] = []
    cut_end: float | None = None
    if end - start > lim.max_duration:
        cut_end = start + lim.max_duration - TRIM_MARGIN
    elif start > 0 or end < duration:
        cut_end = end
    length = (cut_end if cut_end is not None else duration) - start
    if length < lim.min_duration:
        what = "trimmed duration" if not trim.is_identity else "duration"
        raise _Reject(
            f"{what} {length:.2f} s is under {lim.min_duration:g} s ({allowed})", info.source
        )
    if cut_end is not None:
        steps.append("trim")

    scaled = _fit_sides(info, lim.min_side, lim.max_side)
    if scaled is not None:
        steps.append("scale")
    codec_ok = info.kind == "video" and info.video_codec in lim.codecs
    to_mp4 = info.format not in lim.containers or not codec_ok
    strip = info.has_audio and not keep_sound and not has_sound_field
    audio_ok = not info.has_audio or strip or info.audio_codec in lim.audio_codecs
    if to_mp4 or not audio_ok:
        steps.append("convert")
    kbps = None
    if info.size_bytes * length / duration > lim.max_bytes * 0.95:
        # Aim at 85% of the cap, leaving room for audio (128k) and container overhead.
        kbps = max(100, int(lim.max_bytes * 8 * 0.85 / length / 1000) - 128)
        steps.append("reencode")
    reencode = scaled is not None or kbps is not None or not codec_ok
    if reencode and scaled is None and (info.width % 2 or info.height % 2):
        scaled = (info.width // 2 * 2, info.height // 2 * 2)  # H.264 4:2:0 needs even sides
    if strip:
        steps.append("strip-audio")
    if not steps:
        return VideoRecipe(), [], duration
    recipe = VideoRecipe(
        start=start if cut_end is not None else 0.0,
        end=cut_end,
        width=scaled[0] if scaled else None,
        height=scaled[1] if scaled else None,
        reencode_video=reencode,
        video_kbps=kbps,
        reencode_audio=not audio_ok or (reencode and info.has_audio and not strip),
        strip_audio=strip,
        to_mp4=info.format != "mp4",
    )
    return recipe, steps, length


def _plan_image(given: MediaInfo | MediaError, limits: Limits) -> tuple[ImageRecipe, list[str]]:
    info = _unreadable(given, "image")
    lim = limits.image
    if info.kind == "video":
        raise _Reject(f"is a video ({info.format}), not an image", info.source)
    if info.animated:
        raise _Reject(
            f"animated {info.format} ({info.frame_count} frames); use a still image", info.source
        )
    if info.short_side < lim.min_side:
        raise _Reject(
            f"image is {info.width}x{info.height}: shortest side {info.short_side} px "
            f"is under the {lim.min_side} px minimum",
            info.source,
        )
    if info.long_side > lim.max_side:
        raise _Reject(
            f"image is {info.width}x{info.height}: longest side {info.long_side} px "
            f"is over the {lim.max_side} px maximum",
            info.source,
        )
    if not lim.min_aspect <= info.aspect <= lim.max_aspect:
        raise _Reject(
            f"image is {info.width}x{info.height}: aspect ratio {info.aspect:.2f} is outside "
            f"{lim.min_aspect:g}..{lim.max_aspect:g} (1:2.5 to 2.5:1)",
            info.source,
        )
    lossless = info.format in _LOSSLESS_IMAGE_FORMATS or info.has_alpha
    if info.size_bytes > lim.max_bytes:
        if not info.has_alpha and "jpeg" in lim.formats:
            return ImageRecipe(format="jpeg"), ["image-reencode"]
        # Keep alpha: a smaller PNG. PNG size scales roughly with the pixel count.
        factor = math.sqrt(lim.max_bytes / info.size_bytes) * 0.9
        width, height = _even(info.width * factor, up=False), _even(info.height * factor, up=False)
        if min(width, height) < lim.min_side:
            raise _Reject(
                f"image is {info.size_bytes / 1e6:.1f} MB, over the "
                f"{lim.max_bytes / 1e6:.0f} MB limit, and cannot shrink enough "
                "while keeping its alpha",
                info.source,
            )
        return ImageRecipe(format="png", width=width, height=height), ["image-reencode"]
    if info.format not in lim.formats:
        return ImageRecipe(format="png" if lossless else "jpeg"), ["image-convert"]
    return ImageRecipe(), []
