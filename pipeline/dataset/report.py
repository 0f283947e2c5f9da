"""The batch report: ``report.html``, a self-contained contact sheet of every job.

People check generated datasets by looking. This module owns the data the page is made of
(:class:`ReportJob`, :class:`ReportTotals`), the thumbnails beside it (extracted with ffmpeg,
cached, in a bounded pool) and the atomic write; :mod:`pipeline.dataset.report_html` owns
the markup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.dataset.report_data import ReportJob, ReportTotals, Thumbs
from pipeline.dataset.report_html import render
from pipeline.errors import ConfigError, StateError
from pipeline.jobs import State
from pipeline.manifest.model import Manifest
from pipeline.media.tools import MediaTools, find_tools
from pipeline.settings import Settings
from pipeline.state.database import state_path
from pipeline.state.store import StateStore

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
THUMBS_DIR = Path("report") / "thumbs"
THUMB_HEIGHT = 160
STRIP_FRAMES = 4
STRIP_GAP = 4
_FFMPEG_TIMEOUT = 60.0


@dataclass(frozen=True)
class _Extraction:
    """One thumbnail to make: ``kind`` is image, driving or result."""

    kind: str
    source: Path
    target: Path
    duration: float | None = None


def write_report(
    output_dir: Path,
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    *,
    tools: MediaTools,
    title: str,
) -> Path:
    """Write ``<output_dir>/report.html`` (atomically) and its thumbnails; return its path.

    A thumbnail that cannot be made (missing file, unreadable media) becomes a placeholder on
    the page and a warning in the log: the report is for looking at a batch, broken parts
    included, so it never fails because of one job's media.
    """
    output_dir = Path(output_dir)
    thumbs_dir = output_dir / THUMBS_DIR
    try:
        thumbs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {thumbs_dir}: {exc.strerror or exc}") from exc
    planned = [_plan(job, thumbs_dir) for job in jobs]
    unique = {e.target: e for job_plan in planned for e in job_plan.values()}
    made = _extract_all(tools, list(unique.values()))
    per_job = [
        Thumbs(
            **{
                kind: e.target.relative_to(output_dir).as_posix()
                for kind, e in job_plan.items()
                if e.target in made
            }
        )
        for job_plan in planned
    ]
    page = render(jobs, totals, title=title, thumbs=per_job, output_dir=output_dir)
    target = output_dir / REPORT_NAME
    _write_atomic(target, page.encode("utf-8"))
    return target


# --------------------------------------------------------------------------- thumbnails


def _thumb_name(kind: str, source: Path) -> str:
    # Named by the source file, not the job: a matrix of 50 images x 100 clips needs 150 input
    # thumbnails, not 10,000, and odd job ids never reach the file system.
    digest = hashlib.sha256(f"{kind}:{source.absolute()}".encode()).hexdigest()[:12]
    return f"{kind[0]}-{digest}.jpg"


def _plan(job: ReportJob, thumbs_dir: Path) -> dict[str, _Extraction]:
    sources = {"image": job.image_path, "driving": job.video_path, "result": job.output_path}
    plan: dict[str, _Extraction] = {}
    for kind, source in sources.items():
        if source is None:
            continue
        source = Path(source)
        duration = job.duration if kind == "result" else None
        plan[kind] = _Extraction(kind, source, thumbs_dir / _thumb_name(kind, source), duration)
    return plan


def _extract_all(tools: MediaTools, work: list[_Extraction]) -> set[Path]:
    """Make every missing or stale thumbnail; return the targets that exist afterwards."""
    if not work:
        return set()
    with ThreadPoolExecutor(max_workers=min(len(work), os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda e: _extract_one(tools, e), work))
    failed = [p for p in problems if p is not None]
    if failed:
        # One line for the batch, not 5,000: a report of a half-run batch is normal.
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        log.warning("report: %d placeholder thumbnails: %s%s", len(failed), failed[0], more)
        for problem in failed:
            log.debug("report: %s", problem)
    return {e.target for e, problem in zip(work, problems, strict=True) if problem is None}


def _is_fresh(target: Path, source: Path) -> bool:
    try:
        return target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        return False


def _extract_one(tools: MediaTools, e: _Extraction) -> str | None:
    """Make one thumbnail unless a fresh one exists; return what went wrong, or None."""
    if not e.source.is_file():
        return f"{e.kind} {e.source} is missing"
    if _is_fresh(e.target, e.source):
        return None
    scale = f"scale=-2:{THUMB_HEIGHT}"
    if e.kind == "image":
        # Character cut-outs are often transparent PNGs; JPEG has no alpha, so flatten on white
        # (otherwise the hidden colour under the transparency shows).
        flatten = "split[fg][bg0];[bg0]drawbox=c=white:replace=1:t=fill[bg];[bg][fg]overlay"
        inputs, graph = ["-i", str(e.source)], f"[0:v]{scale},format=rgba,{flatten}[v]"
    else:
        duration = e.duration or _probe_duration(tools, e.source)
        if duration is None:
            return f"cannot read the duration of {e.source}"
        # Seek each input rather than decode the whole clip: a 30 s clip costs 4 seeks.
        count = STRIP_FRAMES if e.kind == "result" else 1
        inputs = []
        for i in range(count):
            at = duration * (i + 0.5) / count if count > 1 else duration * 0.3
            inputs += ["-ss", f"{at:.3f}", "-i", str(e.source)]
        # A white gap after each frame but the last, so the strip reads as separate moments.
        gap = f",pad=iw+{STRIP_GAP}:ih:0:0:white"
        scaled = ";".join(
            f"[{i}:v]{scale},setsar=1{gap if i < count - 1 else ''}[s{i}]" for i in range(count)
        )
        joined = "".join(f"[s{i}]" for i in range(count))
        graph = f"{scaled};{joined}hstack=inputs={count}[v]" if count > 1 else f"[0:v]{scale}[v]"
    tmp = e.target.with_name(f".{e.target.name}.{os.getpid()}.tmp")
    args = [tools.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs]
    args += ["-filter_complex", graph, "-map", "[v]", "-frames:v", "1", "-q:v", "5"]
    args += ["-f", "mjpeg", str(tmp)]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=_FFMPEG_TIMEOUT, check=False)
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no frame"]
            return f"ffmpeg could not read {e.source}: {detail[0]}"
        tmp.replace(e.target)
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no thumbnail for {e.source}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _probe_duration(tools: MediaTools, source: Path) -> float | None:
    args = [tools.ffprobe, "-v", "error", "-protocol_whitelist", "file"]
    args += ["-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(source)]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=_FFMPEG_TIMEOUT, check=False)
        value = float(proc.stdout.decode().strip())
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return value if value > 0 else None


# --------------------------------------------------------------------------- atomic write


def _write_atomic(target: Path, data: bytes) -> None:
    """tmp in the same directory -> fsync -> rename -> fsync the directory.

    A reader (or a crash) sees the old page or the new one, never half of one.
    """
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)  # mkstemp makes 0600; the page is meant to be opened and shared
        tmp.replace(target)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- from the state


def report_batch(manifest: Manifest, settings: Settings) -> Path:
    """Write ``report.html`` for the manifest's output directory from its state."""
    output_dir = manifest.output_dir
    if not state_path(output_dir).exists():
        raise StateError(f"no state in {output_dir}: run the batch first")
    budget = manifest.budget
    jobs: list[ReportJob] = []
    seconds = 0.0
    cost: float | None = 0.0
    first: str | None = None
    last: str | None = None
    with StateStore.open(output_dir, readonly=True) as store:
        counts = store.counts()
        for row in store.rows():
            spec = row.spec
            settings_doc = spec.get("settings", {})
            output = output_dir / row.output if row.output else None
            if row.state is State.DONE:
                billed = row.billed_seconds or 0.0
                seconds += billed
                price = budget.cost(settings_doc.get("mode", "std"), billed)
                cost = None if price is None or cost is None else cost + price
            if row.submitted_at:
                first = min(first or row.submitted_at, row.submitted_at)
            if row.finished_at:
                last = max(last or row.finished_at, row.finished_at)
            jobs.append(
                ReportJob(
                    id=row.id,
                    state=row.state,
                    image=spec.get("image", ""),
                    video=spec.get("video", ""),
                    image_path=_local(spec.get("image", "")),
                    video_path=_local(spec.get("video", "")),
                    output_path=output if output and output.is_file() else None,
                    settings=settings_doc,
                    billed_seconds=row.billed_seconds,
                    duration=row.duration,
                    provider=spec.get("provider", manifest.provider.name),
                    model=spec.get("model", manifest.provider.model),
                    task_id=row.task_id,
                    error=row.error,
                    applied=_applied(row.inputs),
                )
            )
    totals = ReportTotals(
        done=counts[State.DONE],
        failed=counts[State.FAILED],
        needs_attention=counts[State.NEEDS_ATTENTION],
        other=sum(counts.values())
        - counts[State.DONE]
        - counts[State.FAILED]
        - counts[State.NEEDS_ATTENTION],
        seconds_billed=round(seconds, 3),
        estimated_cost=None if cost is None or not budget.price_per_second else round(cost, 4),
        currency=budget.currency,
        wall_time_seconds=_span(first, last),
    )
    return write_report(output_dir, jobs, totals, tools=find_tools(settings), title=manifest.name)


def _applied(inputs: str | None) -> dict[str, Any] | None:
    """The video recipe a job was sent with (state ``inputs``), for the report."""
    if not inputs:
        return None
    try:
        doc = json.loads(inputs)
    except ValueError:
        return None
    recipe = doc.get("video_recipe") if isinstance(doc, dict) else None
    return recipe if isinstance(recipe, dict) else None


def _local(text: str) -> Path | None:
    if not text or text.startswith(("http://", "https://")):
        return None
    return Path(text)


def _span(first: str | None, last: str | None) -> float | None:
    if not first or not last:
        return None
    try:
        return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    except ValueError:
        return None
