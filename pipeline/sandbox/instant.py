"""Instant mode's one result: a small canned mp4, made once per sandbox, served from memory.

In instant mode (``instant: true`` in the profile, or ``SandboxServer(instant=True)``) nothing
is fetched, probed or rendered: every accepted task succeeds at once and shows it on its first
status query, and every result URL serves these same bytes. It exists for benchmarks of the
client: 2,000 jobs of create, poll and download must measure the client, not ffmpeg.

The clip is real (H.264 in mp4, ``+faststart``, one second, no audio), so a client that
verifies its downloads with ffprobe accepts it; it is shorter than any accepted driving clip
(3 s at least), so it never exceeds what a job is billed.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.media.probe import probe_file
from pipeline.media.tools import MediaTools, last_error_line, run_tool
from pipeline.sandbox.render import Rendered

SECONDS = 1.0
SIZE = "160x120"


def canned_argv(tools: MediaTools, out: Path) -> list[str]:
    return [
        tools.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc=size={SIZE}:rate=24:duration={SECONDS:g}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4", f"file:{out}",
    ]  # fmt: skip


def canned_result(tools: MediaTools, folder: Path) -> Rendered:
    """The canned clip under ``folder`` (made now unless an earlier sandbox left it there)."""
    out = folder / "instant.mp4"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        done = run_tool(canned_argv(tools, tmp), timeout=120)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"cannot make the instant-mode clip: {last_error_line(done.stderr)}")
        tmp.replace(out)
    info = probe_file(out, tools)
    data = out.read_bytes()
    return Rendered(out, info.duration or SECONDS, info.width, info.height, len(data), data=data)
