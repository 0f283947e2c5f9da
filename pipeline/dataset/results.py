"""The output directory as a dataset: verified result videos (the lines of metadata.jsonl are
:mod:`pipeline.dataset.records`).

Layout (design.md §2)::

    <output_dir>/videos/<job_id>.mp4        as served: tmp -> fsync -> verify -> rename
    <output_dir>/videos/replaced/...        earlier results moved aside by an explicit replace
    <output_dir>/videos/conflicts/...       a paid result that found another video in its place
    <output_dir>/metadata.jsonl             one line per result, rewritten atomically
    <output_dir>/run.log                    redacted log (:mod:`pipeline.run.log`)

A paid result is never lost and never silently overwritten: a download that finds the same bytes
at its target adopts them, one that finds other bytes raises :class:`OutputConflictError` (keeping
the new video under ``conflicts/``) unless the caller asked for ``replace``. Hugging Face's
VideoFolder builds rows from ``metadata.jsonl``, so videos under ``replaced/`` and ``conflicts/``
(which have no row) are not part of the dataset.

How the runner should treat each failure of :func:`download_result`:

* :class:`ResultExpiredError` (401/403/404/410): re-query the task for a fresh URL, then retry.
* :class:`TransientError` (transport errors, timeouts, 408/425/429/5xx, short body, too slow,
  past the deadline; :class:`UnreachableError` when no answer came): retry later.
* :class:`ResultInvalidError` (a malformed URL or port, not http(s), a redirect loop or too many
  redirects, not a video, longer than billed, too big, other statuses): the provider served
  something unusable; refreshing the URL once is worth it, then fail the job.
* :class:`BatchStopped` (disk full, output directory unwritable): stop the batch.

The download itself (size cap, deadline, slow-transfer rule, redirects, temp file) is
:mod:`pipeline.storage.fetch`, shared with input downloads
(:func:`pipeline.storage.uploads.download_input`).
* :class:`OutputConflictError`: the job needs attention (rename it or replace explicitly).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from pipeline.dataset.names import CONFLICTS_DIR, PART_PREFIX, REPLACED_DIR, VIDEOS_DIR
from pipeline.errors import (
    MediaError,
    OutputConflictError,
    ProviderError,
    ResultExpiredError,
    ResultInvalidError,
    TransientError,
)
from pipeline.media.hashing import sha256_file
from pipeline.media.isobmff import mp4_info
from pipeline.media.probe import MediaInfo, probe_file
from pipeline.media.tools import MediaTools
from pipeline.run.crashpoints import crash_point
from pipeline.storage.fetch import Limits, disk_error, download, fsync_dir
from pipeline.storage.urls import display_url

#: A result may be this much longer than the seconds billed (container rounding, last GOP).
#: Shorter is fine: the model may use only part of a hard motion.
DURATION_SLACK = 1.5
#: A 30 s 1080p result is ~100 MB; a body past this is not a result but a runaway stream.
MAX_RESULT_BYTES = 2 * 1024**3

_EXPIRED = frozenset({401, 403, 404, 410})
_RETRYABLE = frozenset({408, 425, 429})


def video_path(output_dir: Path, job_id: str) -> Path:
    return Path(output_dir) / VIDEOS_DIR / f"{job_id}.mp4"


def dataset_file_name(job_id: str) -> str:
    """``file_name`` of a metadata row: relative to metadata.jsonl, with forward slashes."""
    return f"{VIDEOS_DIR}/{job_id}.mp4"


@dataclass(frozen=True)
class ResultFile:
    """A verified result video at its final path."""

    path: Path
    sha256: str
    size: int
    duration: float
    width: int
    height: int
    fps: float | None
    codec: str
    adopted: bool = False
    """The same bytes were already at ``path``; nothing was written."""
    replaced: Path | None = None
    """Where an earlier, different video at ``path`` was moved (``replace=True`` only)."""
    mtime_ns: int | None = None
    """The published file's time stamp (the output check's), when it was read with it."""


# --------------------------------------------------------------------------- verification


def result_problem(info: MediaInfo, *, expect_seconds: float | None) -> str | None:
    """Why a probed result is unusable, or None when it is a good video (pure)."""
    if info.kind != "video" or not info.video_codec:
        return f"is not a video (ffprobe found {info.kind} {info.format or 'data'})"
    if info.width <= 0 or info.height <= 0:
        return "has a video stream without dimensions"
    if info.duration is None or info.duration <= 0:
        return "has no duration"
    if expect_seconds is not None and info.duration > expect_seconds + DURATION_SLACK:
        return (
            f"is {info.duration:.2f} s long, more than the {expect_seconds:g} s billed "
            f"+ {DURATION_SLACK:g} s"
        )
    return None


def _verify(
    path: Path, *, tools: MediaTools, expect_seconds: float | None, job_id: str
) -> MediaInfo:
    # The structural check answers for the MP4s providers serve (no ffprobe process, ~0.2 ms);
    # anything it does not fully understand goes to ffprobe, as every result did before.
    info = mp4_info(path)
    try:
        info = info or probe_file(path, tools, job_id=job_id)
    except MediaError as exc:
        # exc.reason, not str(exc): the temp file's name means nothing to the user.
        raise ResultInvalidError(
            f"job {job_id}: result is not a readable video: {exc.reason}"
        ) from None
    problem = result_problem(info, expect_seconds=expect_seconds)
    if problem:
        raise ResultInvalidError(f"job {job_id}: result {problem}")
    return info


def _result(path: Path, info: MediaInfo, sha256: str, size: int) -> ResultFile:
    return ResultFile(
        path=path,
        sha256=sha256,
        size=size,
        duration=info.duration or 0.0,
        width=info.width,
        height=info.height,
        fps=info.fps,
        codec=info.video_codec,
    )


def verify_existing(
    target: Path, *, tools: MediaTools, expect_seconds: float | None
) -> ResultFile | None:
    """The video already at ``target`` when it verifies (resume: adopt, do not download again)."""
    target = Path(target)
    if not target.is_file():
        return None
    try:
        info = _verify(target, tools=tools, expect_seconds=expect_seconds, job_id=target.stem)
        return _result(target, info, sha256_file(target), target.stat().st_size)
    except (ResultInvalidError, OSError):
        return None


# --------------------------------------------------------------------------- download


def classify_status(
    status: int, *, job_id: str, where: str, retry_after: float | None = None
) -> ProviderError | None:
    """The error for an HTTP status of the result URL, or None for 2xx (pure)."""
    if 200 <= status < 300:
        return None
    text = f"job {job_id}: result download from {where} answered HTTP {status}"
    if status in _EXPIRED:
        return ResultExpiredError(text, http_status=status)
    if status in _RETRYABLE or status >= 500:
        return TransientError(text, http_status=status, retry_after=retry_after)
    return ResultInvalidError(text, http_status=status)


async def download_result(
    client: httpx.AsyncClient,
    url: str,
    target: Path,
    *,
    tools: MediaTools,
    expect_seconds: float | None,
    job_id: str,
    replace: bool = False,
    chunk: int = 1 << 20,
    max_bytes: int = MAX_RESULT_BYTES,
    limits: Limits | None = None,
) -> ResultFile:
    """Stream ``url`` to a temp file beside ``target``, verify it, then rename it into place.

    The download follows :mod:`pipeline.storage.fetch` (``limits``: ``max_bytes`` with its default
    deadline, speed and redirect rules unless given). The temp file
    (``.part-<job_id>-<random>``) is removed on any failure, cancellation included.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, target.parent) from None
    tmp = target.parent / f"{PART_PREFIX}{job_id}-{secrets.token_hex(6)}"
    try:
        sha256, size = await _fetch(
            client, url, tmp, job_id=job_id, chunk=chunk, limits=limits or Limits(max_bytes)
        )
        # One worker-thread hop for verify, rename and stat: under load each hop waits a turn
        # of a busy event loop, and a download holds one of the few download slots meanwhile.
        return await asyncio.to_thread(
            _verify_and_publish, tmp, target, sha256, size, tools=tools,
            expect_seconds=expect_seconds, job_id=job_id, replace=replace,
        )  # fmt: skip
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


async def _fetch(
    client: httpx.AsyncClient, url: str, tmp: Path, *, job_id: str, chunk: int, limits: Limits
) -> tuple[str, int]:
    """The one streaming download (:func:`pipeline.storage.fetch.download`), worded for a result."""
    where = display_url(url)

    def unusable(reason: str) -> ResultInvalidError:
        # The runner refreshes the URL once on this error, then fails the job.
        return ResultInvalidError(f"job {job_id}: result from {where} {reason}")

    def check_status(status: int, retry_after: float | None) -> ProviderError | None:
        return classify_status(status, job_id=job_id, where=where, retry_after=retry_after)

    fetched = await download(
        client, url, tmp, job_id=job_id, label="result download", limits=limits,
        unusable=unusable, check_status=check_status, chunk=chunk,
        on_block=lambda: crash_point("mid-download"),
    )  # fmt: skip
    return fetched.sha256, fetched.size


def _verify_and_publish(
    tmp: Path, target: Path, sha256: str, size: int, *, tools: MediaTools,
    expect_seconds: float | None, job_id: str, replace: bool,
) -> ResultFile:  # fmt: skip
    info = _verify(tmp, tools=tools, expect_seconds=expect_seconds, job_id=job_id)
    published = _publish(tmp, target, _result(tmp, info, sha256, size), replace=replace,
                         job_id=job_id)  # fmt: skip
    try:
        return dataclasses.replace(published, mtime_ns=target.stat().st_mtime_ns)
    except OSError:
        return published


def _publish(
    tmp: Path, target: Path, fresh: ResultFile, *, replace: bool, job_id: str
) -> ResultFile:
    """Rename the verified temp file to ``target``; never overwrite different bytes silently.

    The run lock guarantees one writer per output directory, so check-then-rename is enough.
    """
    moved: Path | None = None
    try:
        if os.path.lexists(target):
            existing = sha256_file(target)
            if existing == fresh.sha256:
                tmp.unlink()
                return dataclasses.replace(fresh, path=target, adopted=True)
            if not replace:
                kept = _set_aside(
                    tmp, target.parent / CONFLICTS_DIR, f"{job_id}.{fresh.sha256[:12]}"
                )
                raise OutputConflictError(
                    f"job {job_id}: {target} already holds a different video "
                    f"(sha256 {existing[:12]}); the new result (sha256 {fresh.sha256[:12]}) "
                    f"was kept as {kept}. Rename the job or replace explicitly."
                )
            moved = _set_aside(
                target, target.parent / REPLACED_DIR, f"{target.stem}.{_utc_stamp()}"
            )
        tmp.replace(target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise disk_error(exc, target) from None
    return dataclasses.replace(fresh, path=target, replaced=moved)


def _set_aside(path: Path, folder: Path, stem: str) -> Path:
    folder.mkdir(exist_ok=True)
    dest = folder / f"{stem}.mp4"
    n = 1
    while os.path.lexists(dest):  # two replaces within one second
        n += 1
        dest = folder / f"{stem}-{n}.mp4"
    path.replace(dest)
    fsync_dir(folder)
    return dest


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def remove_partials(videos_dir: Path) -> int:
    """Delete ``.part-*`` files a killed run left behind; call under the run lock. Returns count."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in Path(videos_dir).iterdir():
            if entry.name.startswith(PART_PREFIX) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
    return removed
