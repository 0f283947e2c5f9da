"""One streaming download with one set of safety checks, for results and inputs alike.

A result or input URL comes from outside (a provider's answer, a manifest), so the server behind
it may be hostile or broken. :func:`download` streams it to a new temporary file in the target
folder and hashes it on the way, and refuses, each with an error of :mod:`pipeline.errors`:

- a URL that cannot be requested (malformed, invalid port, not http(s)), a redirect loop, more
  than ``max_redirects`` redirects or a redirect to another scheme, a body over ``max_bytes``
  (refused early on Content-Length), an empty body: the caller's ``unusable`` error
  (:class:`~pipeline.errors.ResultInvalidError` for results, :class:`~pipeline.errors.InputError`
  for inputs);
- a status the caller's ``check_status`` rejects (408/425/429/5xx are transient for both);
- transport errors, a body shorter than its Content-Length, a transfer slower than
  ``min_rate`` on average once ``rate_grace`` has passed, the overall ``deadline``:
  :class:`~pipeline.errors.TransientError` (:class:`~pipeline.errors.UnreachableError` when no
  answer came at all);
- a full disk or an unwritable folder, at open, write, fsync (and rename, :func:`move_into`):
  :class:`~pipeline.errors.BatchStopped`, since every later job would hit the same disk.

The temporary file is removed on every failure path, cancellation included. Messages name the
job and show the URL only through :func:`~pipeline.storage.urls.display_url` (no query, no
userinfo).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pipeline.errors import (
    DISK_FULL_ERRNOS,
    BatchStopped,
    PipelineError,
    TransientError,
    UnreachableError,
)
from pipeline.settings import DEFAULTS
from pipeline.storage.bodies import BodyTooLarge, BodyUndecodable, BoundedDecoder
from pipeline.storage.headers import parse_retry_after
from pipeline.storage.urls import display_url, host_of, url_problem

MAX_REDIRECTS = 5
DEFAULT_DEADLINE = DEFAULTS.download_deadline
#: A result is ~100 MB at most; under 16 KiB/s it would take hours: give up, try again later.
MIN_RATE = 16 * 1024
RATE_GRACE = 30.0

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Unusable = Callable[[str], PipelineError]
"""Builds the caller's "this URL/body cannot be used" error from a reason (URL already shown)."""
StatusCheck = Callable[[int, float | None], PipelineError | None]
"""The caller's error for an HTTP status (and Retry-After), or None to accept the body."""


@dataclass(frozen=True)
class Limits:
    """What one download may cost: bytes, seconds, minimum average speed, redirects."""

    max_bytes: int
    deadline: float = DEFAULT_DEADLINE
    min_rate: float = MIN_RATE
    """Bytes per second, averaged from the start; 0 turns the rule off."""
    rate_grace: float = RATE_GRACE
    """Seconds before ``min_rate`` applies (connect, TLS, a CDN warming up)."""
    max_redirects: int = MAX_REDIRECTS


@dataclass(frozen=True)
class Fetched:
    """A finished download: the bytes are in the temporary file, synced."""

    sha256: str
    size: int


def disk_error(exc: OSError, path: Path) -> BatchStopped:
    """A local write failure stops the batch: every later job would hit the same disk."""
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        return BatchStopped(f"disk full writing {path}: {reason}")
    return BatchStopped(f"cannot write {path}: {reason}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into(tmp: Path, target: Path) -> None:
    """Rename a finished download into place, durably; a disk failure stops the batch."""
    try:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise disk_error(exc, target) from None


async def download(
    client: httpx.AsyncClient,
    url: str,
    tmp: Path,
    *,
    job_id: str,
    label: str,
    limits: Limits,
    unusable: Unusable,
    check_status: StatusCheck,
    chunk: int = 1 << 20,
    on_block: Callable[[], None] | None = None,
) -> Fetched:
    """Stream ``url`` into the new file ``tmp``, checked as the module docstring says.

    ``label`` names the download in messages ("result download"); ``on_block`` runs after each
    block is written (crash tests kill the process there).
    """
    sink = _TempFile(tmp)
    state = _State(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline_at = started + limits.deadline
    prefix = f"job {job_id}: {label} from"
    try:
        try:
            async with asyncio.timeout_at(state.rate_limit(started, limits, deadline_at)) as timer:
                response = await _open(client, url, limits, unusable, state)
                try:
                    state.answered = True
                    error = check_status(
                        response.status_code, parse_retry_after(response.headers.get("retry-after"))
                    )
                    if error is not None:
                        raise error
                    decoder = _decoder(response, limits.max_bytes, unusable)
                    await sink.open()
                    pending = bytearray()
                    # No chunk_size: httpx would hold bytes back until a whole chunk arrived,
                    # hiding a trickle from the rate rule. Writes are batched to ``chunk``.
                    async for raw in response.aiter_raw():
                        state.received += len(raw)
                        timer.reschedule(state.rate_limit(started, limits, deadline_at))
                        pending += decoder.feed(raw)
                        if len(pending) >= chunk:
                            await _flush(sink, pending, state, on_block)
                    pending += decoder.finish()
                    await _flush(sink, pending, state, on_block)
                    size = decoder.size
                finally:
                    await response.aclose()
        except TimeoutError:
            where = display_url(state.url)
            if loop.time() >= deadline_at:
                what = f"did not finish within {limits.deadline:g} s"
            else:
                rate = state.received / max(loop.time() - started, 1e-9)
                what = f"too slow ({rate / 1024:.1f} KiB/s, under {limits.min_rate / 1024:g} KiB/s)"
            raise state.failure(f"{prefix} {where} {what} after {state.received} bytes") from None
        except BodyTooLarge:
            raise unusable(f"is over {limits.max_bytes} bytes") from None
        except BodyUndecodable as exc:
            raise unusable(f"cannot be decoded: {exc}") from None
        except httpx.HTTPError as exc:
            raise state.failure(
                f"{prefix} {display_url(state.url)} failed after {state.received} bytes: "
                f"{type(exc).__name__}"
            ) from None
        if size == 0:
            raise unusable("is empty (0 bytes)")
        if state.expected is not None and state.received != state.expected:
            raise TransientError(
                f"{prefix} {display_url(state.url)} ended after {state.received} of "
                f"{state.expected} bytes"
            )
        await sink.sync()  # outside the deadline: a slow disk is not a slow server
        sink.close(strict=True)
    except PipelineError:
        sink.discard()
        raise
    except Exception as exc:
        # The transport stack's own surprises (an ExceptionGroup, a stray OSError from a
        # socket) must fail this download, not the batch; the type is named to diagnose it.
        sink.discard()
        raise state.failure(
            f"{prefix} {display_url(state.url)} failed: {type(exc).__name__}: {exc}"[:400]
        ) from None
    except BaseException:  # cancelled: the temp file must not outlive the task
        sink.discard()
        raise
    return Fetched(state.digest.hexdigest(), size)


async def _flush(
    sink: _TempFile, pending: bytearray, state: _State, on_block: Callable[[], None] | None
) -> None:
    if not pending:
        return
    data = bytes(pending)
    pending.clear()
    state.digest.update(data)
    await sink.write(data)
    if on_block is not None:
        on_block()


class _State:
    """How far one download got: the current URL, whether it was answered, bytes counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered = False
        self.received = 0
        """Raw bytes off the network (what Content-Length counts and the rate rule measures)."""
        self.expected: int | None = None
        self.digest = hashlib.sha256()

    def rate_limit(self, started: float, limits: Limits, deadline_at: float) -> float:
        """When the average rate falls under ``min_rate`` at the bytes received so far."""
        if limits.min_rate <= 0:
            return deadline_at
        return min(deadline_at, started + max(limits.rate_grace, self.received / limits.min_rate))

    def failure(self, message: str) -> TransientError:
        if self.answered:
            return TransientError(message)
        host = host_of(self.url)
        return UnreachableError(message, host=host)


async def _open(
    client: httpx.AsyncClient, url: str, limits: Limits, unusable: Unusable, state: _State
) -> httpx.Response:
    """The first non-redirect response, following at most ``max_redirects`` http(s) hops."""
    seen = {url}
    for _ in range(limits.max_redirects + 1):
        problem = url_problem(state.url)
        if problem is not None:
            if state.url == url:
                raise unusable(f"cannot be requested: {problem}")
            raise unusable(f"redirects to a URL that cannot be requested: {problem}")
        try:
            # identity: the bytes on disk are the bytes served, and Content-Length counts them.
            request = client.build_request(
                "GET", state.url, headers={"Accept-Encoding": "identity"}
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise unusable(f"malformed URL ({type(exc).__name__})") from None
        response = await client.send(request, stream=True, follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECTS or location is None:
            state.expected = _content_length(response)
            return response
        await response.aclose()
        try:
            target = str(response.url.join(location))
        except (httpx.InvalidURL, ValueError):
            raise unusable("redirects to a malformed URL") from None
        if target in seen:
            raise unusable(f"redirects in a loop (back to {display_url(target)})")
        seen.add(target)
        state.url = target
    raise unusable(f"redirects more than {limits.max_redirects} times")


def _content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None  # counts compressed bytes; the raw count is still compared below
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _decoder(response: httpx.Response, max_bytes: int, unusable: Unusable) -> BoundedDecoder:
    expected = _content_length(response)
    if expected is not None and expected > max_bytes:
        raise unusable(f"is {expected} bytes, over {max_bytes}")
    try:
        # We asked for identity; a server that compresses anyway is decoded, with the same cap.
        return BoundedDecoder(response.headers.get("content-encoding"), max_bytes)
    except BodyUndecodable as exc:
        raise unusable(str(exc)) from None


class _TempFile:
    """A new file written from worker threads, closed only once no write is in flight.

    Closing a descriptor while a worker thread still writes to it would let the next
    ``open`` reuse the number and receive the rest of this write; so a cancelled download
    closes its file from the pending write's completion callback instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._created = False
        self._busy: asyncio.Future[Any] | None = None

    async def open(self) -> None:
        # From a worker thread: creating a file in a folder that other downloads are syncing
        # and renaming into waits for that folder (10% of a 2,000-job run's event loop when it
        # was done inline, bench/RESULTS.md).
        opening = asyncio.get_running_loop().run_in_executor(None, _create, self.path)
        try:
            self._fd = await asyncio.shield(opening)
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        except asyncio.CancelledError:
            # The thread may still create the file: the callback closes and removes it then.
            opening.add_done_callback(functools.partial(_undo_create, self.path))
            raise
        self._created = True

    async def write(self, data: bytes) -> None:
        if data and self._fd is not None:
            await self._run(_write_all, self._fd, data)

    async def sync(self) -> None:
        if self._fd is not None:
            await self._run(os.fsync, self._fd)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        busy = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        busy.add_done_callback(_retrieve)
        self._busy = busy
        try:
            # shield: a cancellation stops our wait, not the thread; close() waits for it.
            await asyncio.shield(busy)
        except OSError as exc:
            raise disk_error(exc, self.path) from None

    def close(self, *, strict: bool = False) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        busy = self._busy
        if busy is not None and not busy.done():
            busy.add_done_callback(lambda _: _close_quietly(fd))
            return
        if not strict:
            _close_quietly(fd)
            return
        try:
            os.close(fd)  # network filesystems may report a full disk only here
        except OSError as exc:
            raise disk_error(exc, self.path) from None

    def discard(self) -> None:
        self.close()
        if self._created:  # never a file someone else made under the same name
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _create(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o644)


def _undo_create(path: Path, future: asyncio.Future[int]) -> None:
    """A file created for a download cancelled meanwhile: nobody else knows it, so it goes."""
    if future.cancelled() or future.exception() is not None:
        return
    _close_quietly(future.result())
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A write that failed after its download was cancelled has no one left to hear it.
    if not future.cancelled():
        future.exception()
