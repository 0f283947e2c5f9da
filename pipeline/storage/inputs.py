"""http(s) inputs fetched to local files: for preparation by the run, for probing by the plan.

One function, :func:`download_input`, on the one streaming download of
:mod:`pipeline.storage.fetch`: the tool's own HTTP client, timeouts, size cap and redirect rules.
Files are named by their URL (``sha256(url)[:24]`` plus the URL's extension), so what the plan
fetched to probe is what the run prepares from, fetched once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from pipeline.errors import InputError, PipelineError, TransientError
from pipeline.media.hashing import sha256_text
from pipeline.storage.fetch import Limits, disk_error, download, move_into
from pipeline.storage.urls import display_url
from pipeline.transport import new_client

#: Largest input fetched for preparation: the providers' own video limit.
MAX_INPUT_BYTES = 100 * 1024 * 1024
_SUFFIX = re.compile(r"\.[a-z0-9]{1,7}")
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


async def download_input(
    client: httpx.AsyncClient,
    url: str,
    folder: Path,
    *,
    job_id: str,
    max_bytes: int = MAX_INPUT_BYTES,
    limits: Limits | None = None,
) -> Path:
    """Fetch an http(s) input that must be prepared before it is sent; cached by its URL.

    The one streaming download of :mod:`pipeline.storage.fetch` (``limits``: ``max_bytes`` with its
    default deadline, speed and redirect rules unless given) writes a temporary name that is
    renamed when complete, so a half download is never taken for the file. An unusable URL or
    answer is an :class:`InputError` (the user must fix the manifest), trouble that may pass is
    a :class:`TransientError`, a full or unwritable disk :class:`BatchStopped`.
    """
    where = display_url(url)
    target = input_file(url, folder)
    if await asyncio.to_thread(_nonempty, target):
        return target
    try:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, folder) from None
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}.part"

    def unusable(reason: str) -> InputError:
        return InputError(f"input {reason}", job_id=job_id, path=where)

    def check_status(status: int, retry_after: float | None) -> PipelineError | None:
        if 200 <= status < 300:
            return None
        if status in _TRANSIENT_STATUSES or status >= 500:
            return TransientError(
                f"job {job_id}: input download from {where} answered HTTP {status}",
                http_status=status,
                retry_after=retry_after,
            )
        return InputError(f"input URL answered HTTP {status}", job_id=job_id, path=where)

    try:
        await download(
            client, url, tmp, job_id=job_id, label="input download",
            limits=limits or Limits(max_bytes), unusable=unusable, check_status=check_status,
        )  # fmt: skip
        await asyncio.to_thread(move_into, tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return target


def input_file(url: str, folder: Path) -> Path:
    """Where :func:`download_input` keeps ``url`` in ``folder``."""
    return folder / f"{sha256_text(url)[:24]}{_suffix(url)}"


def _suffix(url: str) -> str:
    """The URL path's extension when it is a plain one (ffprobe and names rely on it), else ""."""
    try:
        suffix = Path(urlsplit(url).path).suffix.lower()
    except ValueError:  # a malformed URL: download() says what is wrong with it
        return ""
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:  # unreadable: the download below reports the folder properly
        return False


#: The job id :func:`fetch_all` downloads under (it serves every job naming the URL).
PLAN_JOB = "plan"


def fetch_reason(exc: PipelineError) -> str:
    """What went wrong fetching for the plan, without the stand-in job id."""
    if isinstance(exc, InputError):
        return exc.reason
    return str(exc).removeprefix(f"job {PLAN_JOB}: ")


def probe_client() -> httpx.AsyncClient:
    """The HTTP client planning fetches URL inputs with: the run's timeouts, no implicit
    redirects (:func:`~pipeline.storage.fetch.download` follows them by its own rules)."""
    return new_client(timeout=httpx.Timeout(60.0, connect=15.0))


async def fetch_all(
    urls: Sequence[str],
    folder: Path,
    *,
    limit: int = 4,
    limits: Limits | None = None,
) -> dict[str, Path | PipelineError]:
    """Fetch each URL into ``folder`` (as :func:`download_input` names it), at most ``limit`` at
    once; a failure is returned in place of its path, so one bad URL hides no verdict."""
    gate = asyncio.Semaphore(limit)
    out: dict[str, Path | PipelineError] = {}

    async with probe_client() as client:

        async def one(url: str) -> None:
            async with gate:
                try:
                    out[url] = await download_input(
                        client, url, folder, job_id=PLAN_JOB, limits=limits
                    )
                except PipelineError as exc:
                    out[url] = exc

        async with asyncio.TaskGroup() as tg:
            for url in dict.fromkeys(urls):
                tg.create_task(one(url))
    return out
