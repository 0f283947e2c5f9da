"""Media preparation: the pure plan of one job's inputs, and its execution with ffmpeg.

:func:`plan_media` decides, from probe facts and limits only, what must happen to a job's inputs
before anything is spent: nothing, trim, convert, strip the audio, or reject. Its recipes are
deterministic strings that become part of the job key. :func:`prepare` executes them into a
content-addressed cache, so a rerun reuses the prepared files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ffmpeg

from pipeline.errors import MediaError
from pipeline.jobs import Job
from pipeline.media import (
    ANALYZE_DURATION,
    FILE_PROTOCOLS,
    FORMAT_WHITELIST,
    PROBE_SIZE,
    Limits,
    MediaInfo,
    MediaTools,
    ToolTimeout,
    last_error_line,
    probe_file,
    run_bounded,
    run_tool,
    sha256_file,
)

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
    try:
        video_recipe, video_steps, billed = _plan_video(job, video, limits, has_sound_field)
        image_recipe, image_steps = _plan_image(image, limits)
    except _Reject as rejected:
        return MediaPlan(
            job_id=job.id,
            action="reject",
            steps=("reject",),
            billed_seconds=0.0,
            error=rejected.message,
            error_path=rejected.path,
            limits=limits,
            video_info=video_info,
            image_info=image_info,
        )
    steps = (*video_steps, *image_steps)
    actions = {_STEP_ACTION[s] for s in steps}
    action: Action = next((a for a in _ACTION_ORDER if a in actions), "ok")
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
    job: Job, given: MediaInfo | MediaError, limits: Limits, has_sound_field: bool
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
    trim = job.settings.trim
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
    strip = info.has_audio and not job.settings.keep_original_sound and not has_sound_field
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


# --------------------------------------------------------------------------- execution

#: x264 speed/size trade-off for prepared clips; not part of the recipe (a faster preset changes
#: bytes, never what the clip is), so it may be tuned without changing job keys.
X264_PRESET = "veryfast"


@dataclass(frozen=True)
class PreparedMedia:
    """The files to send for one job: the sources themselves when nothing had to change."""

    image: Path
    video: Path
    video_duration: float | None = None
    """ffprobe's measurement of the prepared clip, when it was prepared."""


_HASHES: dict[tuple[str, int, int], str] = {}


def source_sha256(path: Path) -> str:
    """sha256 of a source file, memoised on (path, size, mtime) so a batch hashes each once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def cached_path(cache_dir: Path, source_hash: str, recipe: str, ext: str) -> Path:
    """``<cache_dir>/<source_sha256>-<recipe_hash>.<ext>``: content plus recipe, nothing else."""
    recipe_hash = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return cache_dir / f"{source_hash}-{recipe_hash}.{ext}"


def prepare(
    plan: MediaPlan, tools: MediaTools, cache_dir: Path, *, timeout: float = 900.0
) -> PreparedMedia:
    """Execute a plan's recipes into ``cache_dir`` (reused on reruns); rejected plans raise."""
    plan.raise_for_error()
    if plan.image_info is None or plan.video_info is None or plan.limits is None:
        raise MediaError("plan has no probe facts to prepare from", job_id=plan.job_id)
    cache_dir.mkdir(parents=True, exist_ok=True)
    image = Path(plan.image_info.source)
    video = Path(plan.video_info.source)
    duration = None
    try:
        if not plan.image.is_identity:
            image = _prepare_image(
                plan.image, plan.image_info, plan.limits, tools, cache_dir, timeout
            )
        if not plan.video.is_identity:
            video, duration = _prepare_video(
                plan.video, plan.video_info, plan.limits, tools, cache_dir, timeout
            )
    except MediaError as exc:
        raise MediaError(exc.reason, job_id=plan.job_id, path=exc.path) from None
    return PreparedMedia(image=image, video=video, video_duration=duration)


async def prepare_many(
    plans: Sequence[MediaPlan],
    tools: MediaTools,
    cache_dir: Path,
    *,
    limit: int | None = None,
) -> list[PreparedMedia | MediaError]:
    """Prepare many jobs off the event loop, at most ``limit`` (CPU count) ffmpeg runs at once.

    Results keep the order of ``plans``; a rejected or failed job yields its MediaError.
    """
    return await run_bounded(plans, lambda plan: prepare(plan, tools, cache_dir), limit=limit)


def _run_ffmpeg(stream: Any, tools: MediaTools, timeout: float, source: str) -> None:
    argv = stream.global_args("-hide_banner", "-loglevel", "error", "-nostdin").compile(
        cmd=tools.ffmpeg, overwrite_output=True
    )
    try:
        done = run_tool(argv, timeout=timeout)
    except ToolTimeout as exc:
        raise MediaError(f"preparing failed: {exc}", path=source) from None
    if done.returncode != 0:
        raise MediaError(f"preparing failed: {last_error_line(done.stderr)}", path=source)


def _into_cache(final: Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary name in the same directory, then rename: never a half file."""
    if final.is_file() and final.stat().st_size > 0:
        return final
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _prepare_image(
    recipe: ImageRecipe,
    info: MediaInfo,
    limits: Limits,
    tools: MediaTools,
    cache_dir: Path,
    timeout: float,
) -> Path:
    source = Path(info.source)
    ext = "png" if recipe.format == "png" else "jpg"
    final = cached_path(cache_dir, source_sha256(source), recipe.text, ext)

    def write(tmp: Path) -> None:
        stream = ffmpeg.input(
            f"file:{source.resolve()}",
            protocol_whitelist=FILE_PROTOCOLS,
            format_whitelist=FORMAT_WHITELIST,
        )
        video = stream["v:0"]
        if recipe.width is not None:
            video = video.filter("scale", recipe.width, recipe.height)
        if recipe.format == "png":
            pix_fmt = "rgba" if info.has_alpha else "rgb24"  # keep alpha: PNG can carry it
            out: dict[str, Any] = {"c:v": "png", "pix_fmt": pix_fmt}
        else:
            out = {"c:v": "mjpeg", "pix_fmt": "yuvj420p", "q:v": 2}
        output = ffmpeg.output(video, f"file:{tmp}", f="image2", update=1, frames=1, **out)
        _run_ffmpeg(output, tools, timeout, info.source)
        size = tmp.stat().st_size
        if size > limits.image.max_bytes:
            raise MediaError(
                f"prepared image is still {size / 1e6:.1f} MB, over the "
                f"{limits.image.max_bytes / 1e6:.0f} MB limit",
                path=info.source,
            )

    return _into_cache(final, write)


def _starts_on_keyframe(source: Path, start: float, tools: MediaTools, timeout: float) -> bool:
    """Whether a stream copy starting at ``start`` is exact: a video keyframe sits right there."""
    if start == 0:
        return True
    argv = [
        tools.ffprobe,
        "-v",
        "error",
        "-protocol_whitelist",
        FILE_PROTOCOLS,
        "-select_streams",
        "v:0",
        "-read_intervals",
        f"{max(0.0, start - 1):.3f}%+2",
        "-show_entries",
        "packet=pts_time,flags",
        "-of",
        "json",
        f"file:{source.resolve()}",
    ]
    try:
        done = run_tool(argv, timeout=timeout)
        packets = json.loads(done.stdout).get("packets") or []
    except (ToolTimeout, ValueError):
        return False
    return any(
        "K" in str(p.get("flags", "")) and abs(float(p.get("pts_time", -1)) - start) < 0.002
        for p in packets
    )


def _video_output(recipe: VideoRecipe, info: MediaInfo, tmp: Path, *, copy: bool) -> Any:
    source = Path(info.source)
    args: dict[str, Any] = {
        "protocol_whitelist": FILE_PROTOCOLS,
        "format_whitelist": FORMAT_WHITELIST,
        "probesize": PROBE_SIZE,
        "analyzeduration": ANALYZE_DURATION,
    }
    out: dict[str, Any] = {"f": "mp4", "movflags": "+faststart"}
    if recipe.end is not None:
        if recipe.start > 0:
            args["ss"] = f"{recipe.start:.3f}"
        # The length goes on the output: an input -t counts from the container start, and a
        # video track that starts late (talkinghead_small) would come out far too long.
        out["t"] = f"{recipe.end - recipe.start:.3f}"
    stream = ffmpeg.input(f"file:{source.resolve()}", **args)
    video = stream["v:0"]
    streams = [video]
    keep_audio = info.has_audio and not recipe.strip_audio
    if copy:
        out.update({"c": "copy", "avoid_negative_ts": "make_zero"})
        if keep_audio:
            streams.append(stream["a:0"])
        return ffmpeg.output(*streams, f"file:{tmp}", **out)
    if recipe.width is not None:
        streams[0] = video.filter("scale", recipe.width, recipe.height)
    out.update({"c:v": "libx264", "preset": X264_PRESET, "pix_fmt": "yuv420p"})
    if recipe.video_kbps is not None:
        kbps = recipe.video_kbps
        out.update({"b:v": f"{kbps}k", "maxrate": f"{kbps}k", "bufsize": f"{kbps * 2}k"})
    else:
        out["crf"] = 20
    if keep_audio:
        streams.append(stream["a:0"])
        out.update({"c:a": "aac", "b:a": "128k"})
    return ffmpeg.output(*streams, f"file:{tmp}", **out)


def _prepare_video(
    recipe: VideoRecipe,
    info: MediaInfo,
    limits: Limits,
    tools: MediaTools,
    cache_dir: Path,
    timeout: float,
) -> tuple[Path, float | None]:
    source = Path(info.source)
    final = cached_path(cache_dir, source_sha256(source), recipe.text, "mp4")
    # Stream copy is exact when nothing is re-encoded and the cut starts on a keyframe.
    copy = not (recipe.reencode_video or recipe.reencode_audio) and _starts_on_keyframe(
        source, recipe.start, tools, timeout
    )
    measured: list[float | None] = [None]

    def write(tmp: Path) -> None:
        for attempt_copy in (True, False) if copy else (False,):
            argv = _video_output(recipe, info, tmp, copy=attempt_copy)
            _run_ffmpeg(argv, tools, timeout, info.source)
            problem, measured[0] = _check_video(recipe, limits, tmp, tools)
            if problem is None:
                return
        raise MediaError(f"prepared clip {problem}", path=info.source)

    path = _into_cache(final, write)
    if measured[0] is None:
        measured[0] = probe_file(path, tools).duration
    return path, measured[0]


def _check_video(
    recipe: VideoRecipe, limits: Limits, prepared: Path, tools: MediaTools
) -> tuple[str | None, float | None]:
    """Measure the prepared clip with ffprobe: a trim lands in [length - 1 s, limit].

    Returns (problem or None, measured duration).
    """
    lim = limits.video
    try:
        got = probe_file(prepared, tools)
    except MediaError as exc:
        return f"is unreadable: {exc.reason}", None
    if got.size_bytes > lim.max_bytes:
        size = f"{got.size_bytes / 1e6:.1f} MB, over the {lim.max_bytes / 1e6:.0f} MB limit"
        return f"is {size}", got.duration
    length = recipe.length
    if length is not None:
        low, high = max(lim.min_duration, length - 1.0), lim.max_duration
        if got.duration is None or not low <= got.duration <= high:
            return f"measures {got.duration} s, outside {low:.3f}-{high:.3f} s", got.duration
    return None, got.duration
