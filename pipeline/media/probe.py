"""Safe probing of media files and URLs with ffprobe: what each input really is.

Every input is probed before anything is spent; :mod:`pipeline.media.tools` finds and runs
ffmpeg/ffprobe, :mod:`pipeline.media.limits` says what each provider accepts,
:mod:`pipeline.media.recipes` decides what to do with the facts and :mod:`pipeline.media.prepare`
does it.
"""

from __future__ import annotations

import asyncio
import json
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.errors import MediaError
from pipeline.media.threads import run_bounded
from pipeline.media.tools import MediaTools, ToolTimeout, last_error_line, run_tool
from pipeline.storage.fetch import Limits
from pipeline.storage.inputs import fetch_all, fetch_reason
from pipeline.storage.urls import display_url

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- probing limits

#: Bytes ffprobe may read to find the streams. The default 5 MB hides the pixel format of some
#: real clips (moov after a long mdat); 20 MB is still a hard bound on what one probe reads.
PROBE_SIZE = 20_000_000
#: Microseconds of media ffprobe may analyse; 10 s is the least that finds talkinghead_small's
#: pix_fmt, 30 s leaves room.
ANALYZE_DURATION = 30_000_000
#: Nothing we could ever prepare is this large; bigger (often sparse or hostile) files are
#: rejected from ``stat`` without reading a byte.
MAX_INPUT_BYTES = 4 * 1024**3
#: Demuxers a real input can need. Playlists (hls, concat, dash) and exotic demuxers are
#: refused: they open other files or URLs, and an HLS playlist makes ffprobe hang.
FORMAT_WHITELIST = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,asf,ogg,gif,apng,image2,"
    "jpeg_pipe,png_pipe,webp_pipe,bmp_pipe,tiff_pipe,gif_pipe,qoi_pipe,pam_pipe,ppm_pipe"
)
#: ffprobe reads local files only: http(s) inputs are fetched by the tool's own HTTP client
#: first (its timeouts, size cap, redirect rules; no host-name lookup inside a static ffprobe,
#: which crashes on one), see :func:`probe_url`.
FILE_PROTOCOLS = "file,pipe"


# --------------------------------------------------------------------------- probing

MediaKind = Literal["image", "video"]

_IMAGE_CODEC_FORMATS = {"mjpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp",
                        "tiff": "tiff", "gif": "gif", "apng": "png"}  # fmt: skip
_IMAGE_DEMUXERS = {"image2", "gif", "apng"}
_ALPHA_PIX_FMTS = ("rgba", "bgra", "argb", "abgr", "ya8", "ya16", "pal8", "yuva", "gbrap")
_WEBM_CODECS = {"vp8", "vp9", "av1"}


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe found in one input, from its data (never from its file name)."""

    source: str
    kind: MediaKind
    format: str
    """Detected format: ``jpeg png webp bmp gif tiff`` for images, ``mp4 mov mkv webm avi ...``
    for videos (a JPEG named ``.png`` is ``jpeg``)."""
    format_name: str
    """ffprobe's raw demuxer name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2``."""
    size_bytes: int
    width: int
    height: int
    """Display dimensions (a rotated phone clip has its sides swapped)."""
    duration: float | None = None
    fps: float | None = None
    video_codec: str = ""
    pix_fmt: str | None = None
    has_audio: bool = False
    audio_codec: str | None = None
    frame_count: int | None = None
    animated: bool = False
    has_alpha: bool = False

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @property
    def long_side(self) -> int:
        return max(self.width, self.height)

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def facts(self) -> dict[str, Any]:
        """Plain-data view for ``plan --json`` and metadata."""
        return asdict(self)

    def summary(self) -> str:
        """One line for ``plan``: ``mp4 480x480 33.62s 30fps h264/yuv420p aac 1.9MB``."""
        parts = [self.format, f"{self.width}x{self.height}"]
        if self.kind == "video":
            if self.duration is not None:
                parts.append(f"{self.duration:.2f}s")
            if self.fps:
                parts.append(f"{self.fps:g}fps")
            parts.append(f"{self.video_codec}/{self.pix_fmt or '?'}")
            parts.append(self.audio_codec or "no-audio")
        else:
            if self.has_alpha:
                parts.append("alpha")
            if self.animated:
                parts.append(f"animated({self.frame_count} frames)")
        parts.append(f"{self.size_bytes / 1e6:.1f}MB")
        return " ".join(parts)


def _is_url(source: Path | str) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _stat_size(path: Path, job_id: str | None) -> int:
    """Size from ``stat``, before any read: empty, special and absurdly large files stop here."""
    try:
        st = path.stat()
    except OSError as exc:
        raise MediaError(f"cannot read: {exc.strerror}", job_id=job_id, path=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError("not a regular file", job_id=job_id, path=str(path))
    if st.st_size == 0:
        raise MediaError("empty file (0 bytes)", job_id=job_id, path=str(path))
    if st.st_size > MAX_INPUT_BYTES:
        raise MediaError(
            f"file is {st.st_size / 1024**3:.1f} GiB, over the "
            f"{MAX_INPUT_BYTES // 1024**3} GiB any input may have",
            job_id=job_id,
            path=str(path),
        )
    return st.st_size


def ffprobe_argv(tools: MediaTools, target: str, *, extra: Sequence[str] = ()) -> list[str]:
    return [
        tools.ffprobe,
        "-v", "error",
        "-probesize", str(PROBE_SIZE),
        "-analyzeduration", str(ANALYZE_DURATION),
        "-protocol_whitelist", FILE_PROTOCOLS,
        "-format_whitelist", FORMAT_WHITELIST,
        *extra,
        "-show_format", "-show_streams",
        "-of", "json",
        target,
    ]  # fmt: skip


def probe_file(
    source: Path | str,
    tools: MediaTools,
    *,
    timeout: float = 20.0,
    job_id: str | None = None,
    fetch_limits: Limits | None = None,
) -> MediaInfo:
    """Probe one local file (``Path`` or path string) or http(s) URL; hostile input -> MediaError.

    The size comes from ``stat`` before anything is read; ffprobe runs with bounded probe size,
    a protocol whitelist (local files only) and a hard timeout on its whole process group. A URL
    is first fetched to a temporary file (:func:`probe_url`).
    """
    if _is_url(source):
        return probe_url(
            str(source), tools, timeout=timeout, job_id=job_id, fetch_limits=fetch_limits
        )
    path = Path(source)
    return probe_local(path, tools, timeout=timeout, job_id=job_id)


def probe_url(
    url: str,
    tools: MediaTools,
    *,
    timeout: float = 20.0,
    job_id: str | None = None,
    fetch_limits: Limits | None = None,
) -> MediaInfo:
    """Fetch ``url`` with the tool's own HTTP client into a temporary folder, probe the local
    copy, remove it. ``fetch_limits``: the download's caps (default: an input's 100 MB)."""
    with tempfile.TemporaryDirectory(prefix="mp-probe-") as folder:
        fetched = asyncio.run(fetch_all([url], Path(folder), limits=fetch_limits))[url]
        if not isinstance(fetched, Path):
            raise MediaError(
                f"could not be fetched: {fetch_reason(fetched)}",
                job_id=job_id,
                path=display_url(url),
            )
        return probed_as(url, probe_local(fetched, tools, timeout=timeout, job_id=job_id))


def probed_as(url: str, info: MediaInfo) -> MediaInfo:
    """The facts of a fetched copy, told as the URL's own (its text stays its identity)."""
    return replace(info, source=url)


def probe_local(
    path: Path, tools: MediaTools, *, timeout: float = 20.0, job_id: str | None = None
) -> MediaInfo:
    """Probe one local file (see :func:`probe_file`)."""
    size = _stat_size(path, job_id)
    # A leading "-" or a "proto:" prefix would be read by ffprobe as an option or protocol.
    name = str(path)
    target = "file:" + str(path.resolve())
    try:
        done = run_tool(ffprobe_argv(tools, target), timeout=timeout)
    except ToolTimeout as exc:
        raise MediaError(f"unreadable: {exc}", job_id=job_id, path=name) from None
    if done.returncode < 0:
        raise MediaError(
            f"unreadable: ffprobe died with signal {-done.returncode}", job_id=job_id, path=name
        )
    if done.returncode != 0:
        reason = last_error_line(done.stderr).replace(f"{target}: ", "")
        raise MediaError(f"unreadable: {reason}", job_id=job_id, path=name)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        raise MediaError(
            "unreadable: ffprobe gave no usable answer", job_id=job_id, path=name
        ) from None
    info = media_info_from_probe(doc, source=name, size_bytes=size)
    if info is None:
        raise MediaError("unreadable: no video or image stream found", job_id=job_id, path=name)
    if info.format_name in {"gif", "apng"}:
        info = _count_frames(info, tools, target, timeout=timeout)
    elif info.format == "webp":
        info = replace(info, animated=_webp_is_animated(path))
    return info


def _rate(text: str | None) -> float | None:
    if not text or "/" not in text:
        return None
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den)
    except (ValueError, ZeroDivisionError):
        return None
    return value or None


def _float(value: object) -> float | None:
    try:
        result = float(value)  # type: ignore[arg-type]  # ffprobe gives str/number/None
    except (TypeError, ValueError):
        return None
    return result if result == result and result >= 0 else None  # drops NaN


def _rotation(stream: Mapping[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(_float(abs(side["rotation"])) or 0)
    return int(_float((stream.get("tags") or {}).get("rotate")) or 0)


def _container(format_name: str, fmt_tags: Mapping[str, Any], codec: str) -> str:
    if format_name.startswith("mov,mp4"):
        return "mov" if str(fmt_tags.get("major_brand", "")).strip() == "qt" else "mp4"
    if format_name.startswith("matroska"):
        return "webm" if codec in _WEBM_CODECS else "mkv"
    return format_name.split(",", 1)[0]


def media_info_from_probe(
    doc: Mapping[str, Any], *, source: str, size_bytes: int = 0
) -> MediaInfo | None:
    """Build a :class:`MediaInfo` from ffprobe's ``-show_format -show_streams`` JSON (pure).

    Returns None when there is no visual stream at all. ``size_bytes`` from ``stat`` wins over
    the size ffprobe reports (which for URLs is all there is).
    """
    fmt = doc.get("format") or {}
    streams = doc.get("streams") or []
    visual = [s for s in streams if s.get("codec_type") == "video"
              and (s.get("disposition") or {}).get("attached_pic") != 1]  # fmt: skip
    if not visual:
        return None
    video = visual[0]
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    format_name = str(fmt.get("format_name", ""))
    codec = str(video.get("codec_name", ""))
    is_image = format_name in _IMAGE_DEMUXERS or format_name.endswith("_pipe")
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if _rotation(video) % 180 == 90:
        width, height = height, width
    pix_fmt = video.get("pix_fmt") or None
    if pix_fmt == "unknown":
        pix_fmt = None
    size = size_bytes or int(_float(fmt.get("size")) or 0)
    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    if is_image:
        image_format = _IMAGE_CODEC_FORMATS.get(codec, codec)
        return MediaInfo(
            source=source,
            kind="image",
            format=image_format,
            format_name=format_name,
            size_bytes=size,
            width=width,
            height=height,
            duration=duration if format_name in {"gif", "apng"} else None,
            fps=_rate(video.get("avg_frame_rate")),
            video_codec=codec,
            pix_fmt=pix_fmt,
            frame_count=1,
            has_alpha=bool(pix_fmt and pix_fmt.startswith(_ALPHA_PIX_FMTS)),
        )
    nb_frames = _float(video.get("nb_frames"))
    return MediaInfo(
        source=source,
        kind="video",
        format=_container(format_name, fmt.get("tags") or {}, codec),
        format_name=format_name,
        size_bytes=size,
        width=width,
        height=height,
        duration=duration,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        video_codec=codec,
        pix_fmt=pix_fmt,
        has_audio=audio is not None,
        audio_codec=str(audio.get("codec_name")) if audio is not None else None,
        frame_count=int(nb_frames) if nb_frames is not None else None,
    )


def _count_frames(info: MediaInfo, tools: MediaTools, target: str, *, timeout: float) -> MediaInfo:
    """GIF/APNG may be animated: count the packets of the first stream (these files are small)."""
    extra = ["-count_packets", "-select_streams", "v:0"]
    try:
        done = run_tool(ffprobe_argv(tools, target, extra=extra), timeout=timeout)
        streams = json.loads(done.stdout).get("streams") or [{}]
        count = int(streams[0].get("nb_read_packets", 1))
    except (ToolTimeout, ValueError, TypeError):
        raise MediaError("unreadable: cannot count its frames", path=info.source) from None
    return replace(info, frame_count=count, animated=count > 1)


def _webp_is_animated(path: Path) -> bool:
    """An extended WebP (``VP8X``) has an animation flag; ffmpeg 6 cannot decode such files."""
    with path.open("rb") as handle:
        head = handle.read(21)
    return head[12:16] == b"VP8X" and bool(head[20] & 0x02)


async def probe_many(
    sources: Sequence[Path | str],
    tools: MediaTools,
    *,
    limit: int | None = None,
    probe_timeout: float = 20.0,
) -> list[MediaInfo | MediaError]:
    """Probe many inputs concurrently, off the event loop, at most ``limit`` (CPU count) at once.

    Results keep the order of ``sources``; a bad input yields its MediaError instead of raising,
    so one hostile file does not hide the verdict on the others.
    """
    return await run_bounded(
        sources, lambda source: probe_file(source, tools, timeout=probe_timeout), limit=limit
    )
