"""Media preparation: executes a :class:`~pipeline.media.recipes.MediaPlan` with ffmpeg.

:func:`prepare` writes the plan's recipes into a content-addressed cache (source content hash
plus recipe), so a rerun reuses the prepared files; :func:`prepare_many` runs many jobs off the
event loop. What to prepare is decided by :func:`pipeline.media.recipes.plan_media`.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg

from pipeline.errors import DISK_FULL_ERRNOS, BatchStopped, MediaError
from pipeline.media.hashing import FileHasher, sha256_text
from pipeline.media.limits import Limits
from pipeline.media.probe import (
    ANALYZE_DURATION,
    FILE_PROTOCOLS,
    FORMAT_WHITELIST,
    PROBE_SIZE,
    MediaInfo,
    probe_file,
)
from pipeline.media.recipes import ImageRecipe, MediaPlan, VideoRecipe
from pipeline.media.threads import run_bounded
from pipeline.media.tools import MediaTools, ToolTimeout, last_error_line, run_tool

#: What ffmpeg prints (strerror(ENOSPC)) when its output's disk is full.
_NO_SPACE = "No space left on device"
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


#: Source hashes for cache names, kept for the process and keyed on each file's stat, so a
#: batch reads a source shared by many jobs once.
_SOURCE_HASHES = FileHasher()


def cached_path(cache_dir: Path, source_hash: str, recipe: str, ext: str) -> Path:
    """``<cache_dir>/<source_sha256>-<recipe_hash>.<ext>``: content plus recipe, nothing else."""
    recipe_hash = sha256_text(recipe)[:16]
    return cache_dir / f"{source_hash}-{recipe_hash}.{ext}"


def prepare(
    plan: MediaPlan,
    tools: MediaTools,
    cache_dir: Path,
    *,
    timeout: float = 900.0,
    hasher: FileHasher | None = None,
) -> PreparedMedia:
    """Execute a plan's recipes into ``cache_dir`` (reused on reruns); rejected plans raise.

    ``hasher``: the run's own (whose cache already knows the sources), so no source is read twice.
    """
    hashes = hasher or _SOURCE_HASHES
    plan.raise_for_error()
    if plan.image_info is None or plan.video_info is None or plan.limits is None:
        raise MediaError("plan has no probe facts to prepare from", job_id=plan.job_id)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, cache_dir) from None
    image = Path(plan.image_info.source)
    video = Path(plan.video_info.source)
    duration = None
    try:
        if not plan.image.is_identity:
            image = _prepare_image(
                plan.image, plan.image_info, plan.limits, tools,
                cache_dir, timeout, hashes.hash(image),
            )  # fmt: skip
        if not plan.video.is_identity:
            video, duration = _prepare_video(
                plan.video, plan.video_info, plan.limits, tools,
                cache_dir, timeout, hashes.hash(video),
            )  # fmt: skip
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
        if _NO_SPACE in done.stderr.decode(
            "utf-8", "replace"
        ):  # the disk, not the media: every job would hit it
            raise BatchStopped(f"disk full while preparing {source}: {_NO_SPACE}")
        raise MediaError(f"preparing failed: {last_error_line(done.stderr)}", path=source)


def _into_cache(final: Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary name in the same directory, then rename: never a half file."""
    if final.is_file() and final.stat().st_size > 0:
        return final
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise _write_error(exc, final) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return final


def _write_error(exc: OSError, path: Path) -> BatchStopped | MediaError:
    if exc.errno in DISK_FULL_ERRNOS:
        return BatchStopped(f"disk full writing {path}: {exc.strerror}")
    return MediaError(f"cannot write prepared file: {exc.strerror or exc}", path=str(path))


def _prepare_image(
    recipe: ImageRecipe,
    info: MediaInfo,
    limits: Limits,
    tools: MediaTools,
    cache_dir: Path,
    timeout: float,
    source_hash: str,
) -> Path:
    source = Path(info.source)
    ext = "png" if recipe.format == "png" else "jpg"
    final = cached_path(cache_dir, source_hash, recipe.text, ext)

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
    source_hash: str,
) -> tuple[Path, float | None]:
    source = Path(info.source)
    final = cached_path(cache_dir, source_hash, recipe.text, "mp4")
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
