"""The sandbox's "generation": a real H.264 mp4 made with ffmpeg from the image and the clip.

The result shows the character image beside the driving clip, for exactly the clip's duration,
with the clip's sound when it is kept. Hashes, probes and renders are cached (renders by image
hash, video hash, mode and sound), so a benchmark of thousands of identical jobs renders once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pipeline.errors import MediaError
from pipeline.media.hashing import sha256_file
from pipeline.media.probe import MediaInfo, probe_file
from pipeline.media.tools import MediaTools, last_error_line, run_tool

#: Output height per quality tier: real std/pro are 720p/1080p; the sandbox stays small.
HEIGHTS = {"std": 320, "pro": 480}
FPS = 24
_T = TypeVar("_T")
RENDER_TIMEOUT = 600.0


@dataclass(frozen=True)
class Rendered:
    """A finished render: the file and the facts the protocols report about it."""

    path: Path
    duration: float
    width: int
    height: int
    size_bytes: int
    data: bytes | None = field(default=None, repr=False, compare=False)
    """The file's bytes, when they are served from memory (instant mode)."""


def render_argv(
    tools: MediaTools,
    image: Path,
    video: Path,
    out: Path,
    *,
    height: int,
    duration: float,
    sound: bool,
) -> list[str]:
    """The ffmpeg command: [image | clip] side by side at ``height``, clip's length and audio."""
    graph = (
        f"[0:v]fps={FPS},scale=-2:{height},setsar=1[clip];"
        # The image is decoded once and its frame repeated by the loop filter: `-loop 1` would
        # re-read the file every frame, and a file with bytes after its end then never ends.
        f"[1:v]scale=-2:{height},setsar=1,format=yuv420p,loop=loop=-1:size=1:start=0[char];"
        "[char][clip]hstack=inputs=2:shortest=1,format=yuv420p[out]"
    )
    audio = ["-map", "0:a:0?", "-c:a", "aac", "-b:a", "64k"] if sound else ["-an"]
    return [
        tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-i", f"file:{video}",
        "-framerate", str(FPS), "-i", f"file:{image}",
        "-filter_complex", graph, "-map", "[out]", *audio,
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "30", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-t", f"{duration:.3f}",
        "-f", "mp4", f"file:{out}",
    ]  # fmt: skip


class Renderer:
    """Thread-safe caches of hashes, probes and renders under ``out_dir``."""

    def __init__(self, tools: MediaTools, out_dir: Path) -> None:
        self.tools = tools
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._probes: dict[object, Future[MediaInfo]] = {}
        self._renders: dict[object, Future[Rendered]] = {}
        self.render_count = 0
        """How many ffmpeg renders actually ran (the rest came from the cache)."""

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is None:
            cached = sha256_file(path)
            with self._lock:
                self._hashes[key] = cached
        return cached

    def probe(self, path: Path, digest: str) -> MediaInfo:
        """ffprobe facts of a file, once per content hash; MediaError when unreadable."""
        future, owner = self._claim(self._probes, digest)
        if owner:
            try:
                future.set_result(probe_file(path, self.tools))
            except MediaError as exc:
                future.set_exception(exc)
        return future.result()

    def render(
        self,
        image: Path,
        video: Path,
        *,
        image_sha: str,
        video_sha: str,
        video_info: MediaInfo,
        mode: str,
        sound: bool,
    ) -> Rendered:
        """The render for these inputs and settings, made now or taken from the cache.

        Raises RuntimeError with ffmpeg's last line when the render fails.
        """
        sound = sound and video_info.has_audio
        key = (image_sha, video_sha, mode, sound)
        future, owner = self._claim(self._renders, key)
        if owner:
            try:
                future.set_result(self._run(image, video, key, video_info, mode, sound))
            except Exception as exc:  # handed to every waiter, then re-raised by result()
                future.set_exception(exc)
        return future.result()

    def _claim(self, cache: dict[object, Future[_T]], key: object) -> tuple[Future[_T], bool]:
        # The first caller owns the work; concurrent callers wait on its Future, so two workers
        # never render the same thing twice.
        with self._lock:
            future = cache.get(key)
            if future is not None:
                return future, False
            future = Future[_T]()
            cache[key] = future
            return future, True

    def _run(
        self,
        image: Path,
        video: Path,
        key: tuple[str, str, str, bool],
        video_info: MediaInfo,
        mode: str,
        sound: bool,
    ) -> Rendered:
        name = f"{key[0][:16]}-{key[1][:16]}-{mode}-{'sound' if sound else 'mute'}.mp4"
        out = self.out_dir / name
        if out.is_file():  # rendered by an earlier sandbox on this data directory
            return self._rendered(out, video_info)
        tmp = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        duration = video_info.duration or 0.0
        argv = render_argv(
            self.tools, image, video, tmp, height=HEIGHTS.get(mode, 320),
            duration=duration, sound=sound,
        )  # fmt: skip
        done = run_tool(argv, timeout=RENDER_TIMEOUT)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"render failed: {last_error_line(done.stderr)}")
        tmp.replace(out)
        with self._lock:
            self.render_count += 1
        return self._rendered(out, video_info)

    def _rendered(self, out: Path, video_info: MediaInfo) -> Rendered:
        info = probe_file(out, self.tools)
        duration = info.duration or video_info.duration or 0.0
        return Rendered(out, duration, info.width, info.height, info.size_bytes)
