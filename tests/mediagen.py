"""Test media made with real ffmpeg lavfi sources, so the suite needs no binary fixtures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.media.tools import find_tools

_TOOLS = None


def ffmpeg() -> str:
    global _TOOLS
    if _TOOLS is None:
        _TOOLS = find_tools()
    return _TOOLS.ffmpeg


def ffprobe() -> str:
    global _TOOLS
    if _TOOLS is None:
        _TOOLS = find_tools()
    return _TOOLS.ffprobe


def _run(args: list[str]) -> None:
    subprocess.run([ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_image(path: Path, width: int = 512, height: int = 768, *, color: str = "teal") -> Path:
    """A still image; the format follows the extension (png, jpg, webp, bmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"testsrc2=size={width}x{height}:rate=1,drawbox=c={color}@0.5:t=fill"
    _run(["-f", "lavfi", "-i", src, "-frames:v", "1", str(path)])
    return path


def make_video(
    path: Path,
    seconds: float = 4.0,
    width: int = 480,
    height: int = 640,
    *,
    fps: int = 15,
    audio: bool = True,
    extra: list[str] | None = None,
) -> Path:
    """A moving test pattern (and a tone when ``audio``); the container follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    if path.suffix in {".mp4", ".mov", ".mkv"}:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]
        if audio:
            args += ["-c:a", "aac", "-b:a", "64k"]
    args += [*(extra or []), "-shortest", str(path)]
    _run(args)
    return path


def make_alpha_image(path: Path, width: int = 400, height: int = 500) -> Path:
    """A half-transparent still (webp/png keep the alpha plane)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"color=c=red@0.4:size={width}x{height}:rate=1,format=rgba"
    pix = ["-pix_fmt", "yuva420p"] if path.suffix == ".webp" else ["-pix_fmt", "rgba"]
    _run(["-f", "lavfi", "-i", src, "-frames:v", "1", *pix, str(path)])
    return path


def drop_mp4_box(src: Path, dst: Path, box: bytes = b"moov") -> Path:
    """Copy an mp4 without one top-level box (a moov-less file is what a crashed recorder leaves)."""
    data = src.read_bytes()
    out = bytearray()
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if size < 8:
            break
        if kind != box:
            out += data[pos : pos + size]
        pos += size
    dst.write_bytes(bytes(out))
    return dst
