"""Test media made with real ffmpeg lavfi sources, so the suite needs no binary fixtures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.media import find_tools

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
