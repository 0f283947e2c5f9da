"""The one streaming download (pipeline.storage.fetch) behind result and input downloads, against servers
that loop, trickle, lie about lengths or never stop, and disks that fill up.

Results go through :func:`pipeline.dataset.results.download_result`, inputs through
:func:`pipeline.storage.uploads.download_input`; both must classify the same fault the same way (the
first refusal kind is ResultInvalidError for one and InputError for the other).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopback import Answer, Loopback, Script, head, http_client, raw, redirect, trickle
from waiting import wait_until_async

from pipeline.dataset.results import download_result
from pipeline.errors import (
    BatchStopped,
    InputError,
    PipelineError,
    ResultExpiredError,
    ResultInvalidError,
    TransientError,
    UnreachableError,
)
from pipeline.media.tools import find_tools
from pipeline.storage import fetch
from pipeline.storage.fetch import Limits
from pipeline.storage.uploads import download_input

BODY = bytes(range(256)) * 64  # 16 KiB of "input"
SECRET = "sig=s3cr3t-token"
FAST = Limits(max_bytes=1024 * 1024)


def fetch_input(url: str, folder: Path, limits: Limits = FAST) -> Path:
    async def go() -> Path:
        async with http_client(timeout=10) as client:
            return await download_input(client, url, folder, job_id="j1", limits=limits)

    return asyncio.run(go())


def fetch_result(url: str, folder: Path, limits: Limits = FAST) -> Any:
    async def go() -> Any:
        async with http_client(timeout=10) as client:
            return await download_result(
                client, url, folder / "j1.mp4", tools=find_tools(), expect_seconds=None,
                job_id="j1", limits=limits,
            )  # fmt: skip

    return asyncio.run(go())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def both(url: str, tmp_path: Path, limits: Limits = FAST) -> tuple[PipelineError, PipelineError]:
    """The errors a result download and an input download of ``url`` end with."""
    caught: list[PipelineError] = []
    for name, fn in (("results", fetch_result), ("inputs", fetch_input)):
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        with pytest.raises(PipelineError) as info:
            fn(url, folder, limits)
        assert leftovers(folder) == [], f"{name}: a temp file was left behind"
        caught.append(info.value)
    return caught[0], caught[1]


# --------------------------------------------------------------------------- URLs and redirects


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"http://127.0.0.1:99999/x.mp4?{SECRET}", "invalid port 99999"),
        (f"http://[::1/x.mp4?{SECRET}", "malformed URL"),
        (f"ftp://cdn.example/x.mp4?{SECRET}", "not an http(s) URL"),
        ("http:///x.mp4", "has no host"),
        ("http://cdn.example/" + "a" * 20_000, "characters long, over 16384"),
        ("", "empty"),
    ],
)
def test_urls_that_cannot_be_requested(tmp_path: Path, url: str, words: str) -> None:
    result, given = both(url, tmp_path)
    assert type(result) is ResultInvalidError and type(given) is InputError
    for error in (result, given):
        assert "job j1" in str(error) and words in str(error)
        assert "s3cr3t" not in str(error)


def test_redirect_loop(tmp_path: Path) -> None:
    with Loopback() as srv:
        srv.push(*[redirect(f"/loop?{SECRET}")] * 4)
        result, given = both(f"{srv.base_url}/loop?{SECRET}", tmp_path)
    assert type(result) is ResultInvalidError and type(given) is InputError
    assert "redirects in a loop" in str(result) and "redirects in a loop" in str(given)
    assert "s3cr3t" not in str(result) + str(given)


def test_five_redirects_are_followed_six_are_refused(tmp_path: Path) -> None:
    with Loopback() as srv:
        srv.push(*[redirect(f"/hop/{i + 1}") for i in range(5)], raw(BODY))
        path = fetch_input(f"{srv.base_url}/hop/0", tmp_path / "ok")
        assert path.read_bytes() == BODY
        srv.push(*[redirect(f"/hop/{i + 1}") for i in range(6)], raw(BODY))
        with pytest.raises(InputError, match="redirects more than 5 times"):
            fetch_input(f"{srv.base_url}/hop/0", tmp_path / "six")
    assert leftovers(tmp_path / "six") == []


@pytest.mark.parametrize(
    "location", ["ftp://cdn.example/x.mp4", "file:///etc/passwd", "http://h:0/"]
)
def test_redirect_to_another_scheme_or_port_is_refused(tmp_path: Path, location: str) -> None:
    with Loopback() as srv:
        srv.push(redirect(location), redirect(location))
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path)
    assert type(result) is ResultInvalidError and type(given) is InputError
    assert "redirects to a URL that cannot be requested" in str(result)


# --------------------------------------------------------------------------- size


def test_endless_body_without_length_stops_at_the_cap(tmp_path: Path) -> None:
    def endless_video(conn: socket.socket) -> None:
        conn.sendall(head(content_type="video/mp4"))
        block = bytes(65536)
        for _ in range(1024):  # 64 MiB unless the client hangs up first
            conn.sendall(block)

    with Loopback() as srv:
        srv.push(endless_video, endless_video)
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path)
    assert type(result) is ResultInvalidError and "is over 1048576 bytes" in str(result)
    assert type(given) is InputError and "is over 1048576 bytes" in str(given)


def test_declared_length_over_the_cap_is_refused_without_reading(tmp_path: Path) -> None:
    hang = threading.Event()

    def announce(conn: socket.socket) -> None:
        conn.sendall(head(content_type="video/mp4", Content_Length=str(10 * 1024**3)))
        hang.wait(30)

    with Loopback() as srv:
        srv.push(announce, announce)
        try:
            result, given = both(f"{srv.base_url}/x.mp4", tmp_path)
        finally:
            hang.set()
    assert "is 10737418240 bytes, over 1048576" in str(result)
    assert type(given) is InputError and "over 1048576" in str(given)


def test_compressed_body_is_bounded_too(tmp_path: Path) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join([packer.compress(bytes(1 << 20)) for _ in range(64)] + [packer.flush()])
    with Loopback() as srv:
        srv.push(raw(bomb, Content_Encoding="gzip"))
        with pytest.raises(InputError, match="is over 1048576 bytes"):
            fetch_input(f"{srv.base_url}/x.mp4", tmp_path)


def test_short_body_and_empty_body(tmp_path: Path) -> None:
    def short(conn: socket.socket) -> None:
        conn.sendall(head(Content_Length=str(len(BODY))) + BODY[:100])

    with Loopback() as srv:
        srv.push(short, short, raw(b""), raw(b""))
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path / "short")
        assert type(result) is TransientError and type(given) is TransientError
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path / "empty")
    assert type(result) is ResultInvalidError and "empty (0 bytes)" in str(result)
    assert type(given) is InputError and "empty (0 bytes)" in str(given)


# --------------------------------------------------------------------------- time


SLOW = Limits(max_bytes=1024 * 1024, min_rate=1024 * 1024, rate_grace=0.3)


def test_trickle_is_too_slow(tmp_path: Path, stop: threading.Event) -> None:
    with Loopback() as srv:
        srv.push(trickle(BODY * 8, 0.01, stop, step=64), trickle(BODY * 8, 0.01, stop, step=64))
        result, given = both(f"{srv.base_url}/x.mp4?{SECRET}", tmp_path, SLOW)
    for error in (result, given):
        assert type(error) is TransientError, error  # an answer came: not "unreachable"
        assert "job j1" in str(error) and "too slow" in str(error)
        assert "s3cr3t" not in str(error)


def test_silent_server_is_unreachable(tmp_path: Path, stop: threading.Event) -> None:
    def silent(conn: socket.socket) -> None:
        stop.wait(30)

    with Loopback() as srv:
        srv.push(silent, silent)
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path, SLOW)
    assert isinstance(result, UnreachableError) and result.host == "127.0.0.1"
    assert isinstance(given, UnreachableError)


def test_overall_deadline(tmp_path: Path, stop: threading.Event) -> None:
    limits = Limits(max_bytes=1024 * 1024, deadline=0.4, min_rate=0)
    with Loopback() as srv:
        srv.push(trickle(BODY, 0.01, stop, step=64))
        with pytest.raises(TransientError, match=r"did not finish within 0\.4 s"):
            fetch_input(f"{srv.base_url}/x.mp4", tmp_path, limits)
    assert leftovers(tmp_path) == []


def test_cancelled_input_download_leaves_nothing(tmp_path: Path, stop: threading.Event) -> None:
    async def go(url: str) -> None:
        async with http_client(timeout=10) as client:
            task = asyncio.create_task(download_input(client, url, tmp_path, job_id="j1"))

            async def temp_file_exists() -> bool:
                return any(name.endswith(".part") for name in os.listdir(tmp_path))

            await wait_until_async(temp_file_exists, what="the download's temp file mid-stream")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    tmp_path.mkdir(exist_ok=True)
    with Loopback() as srv:
        srv.push(trickle(BODY * 4, 0.01, stop, step=1024))
        asyncio.run(go(f"{srv.base_url}/x.mp4"))
    assert leftovers(tmp_path) == []


def test_download_cancelled_while_its_file_is_being_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is created from a worker thread; a cancel that lands meanwhile must still
    close and remove it once the thread finishes (no stray .part, no leaked descriptor)."""
    entered, release = threading.Event(), threading.Event()
    real_create = fetch._create

    def slow_create(path: Path) -> int:
        entered.set()
        release.wait(60)
        return real_create(path)

    monkeypatch.setattr(fetch, "_create", slow_create)

    async def go(url: str) -> None:
        async with http_client(timeout=10) as client:
            task = asyncio.create_task(download_input(client, url, tmp_path, job_id="j1"))

            async def creating() -> bool:
                return entered.is_set()

            await wait_until_async(creating, what="the temp file being created")
            fds = len(os.listdir("/proc/self/fd"))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()

            async def undone() -> bool:
                return leftovers(tmp_path) == [] and len(os.listdir("/proc/self/fd")) <= fds

            await wait_until_async(undone, what="the created file closed and removed")

    tmp_path.mkdir(exist_ok=True)
    with Loopback() as srv:
        srv.push(Answer(200, BODY))
        asyncio.run(go(f"{srv.base_url}/x.mp4"))
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("status", "result_kind", "input_kind"),
    [
        (429, TransientError, TransientError),
        (503, TransientError, TransientError),
        (425, TransientError, TransientError),
        (404, ResultExpiredError, InputError),
        (418, ResultInvalidError, InputError),
    ],
)
def test_statuses(tmp_path: Path, status: int, result_kind: type, input_kind: type) -> None:
    with Loopback() as srv:
        answer = Answer(status, b"no", {"Retry-After": "7"})
        srv.push(answer, answer)
        result, given = both(f"{srv.base_url}/x.mp4", tmp_path)
    assert type(result) is result_kind and type(given) is input_kind
    if input_kind is TransientError:
        assert given.retry_after == 7  # type: ignore[attr-defined]


def test_input_is_hashed_named_by_url_and_cached(tmp_path: Path) -> None:
    with Loopback() as srv:
        srv.push(raw(BODY, content_type="video/mp4"))
        url = f"{srv.base_url}/Dance.MP4?{SECRET}"
        first = fetch_input(url, tmp_path)
        again = fetch_input(url, tmp_path)  # no second request: it is on disk
        assert len(srv.requests) == 1
    assert first == again and first.suffix == ".mp4" and first.read_bytes() == BODY
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(BODY).digest()
    assert leftovers(tmp_path) == [first.name]


def test_hostile_suffix_never_reaches_the_file_name(tmp_path: Path) -> None:
    with Loopback() as srv:
        srv.push(raw(BODY))
        path = fetch_input(f"{srv.base_url}/x.m%00p4", tmp_path)
    assert path.suffix == "" and path.read_bytes() == BODY


# --------------------------------------------------------------------------- disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (root needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def big_answer() -> Script:
    return raw(bytes(1024 * 1024) * 4, content_type="video/mp4")


def test_full_disk_stops_the_batch_and_leaves_no_temp_file(small_disk: Path) -> None:
    limits = Limits(max_bytes=16 * 1024 * 1024)
    with Loopback() as srv:
        srv.push(big_answer(), big_answer())
        for fn, folder in ((fetch_input, small_disk / "inputs"), (fetch_result, small_disk / "v")):
            folder.mkdir()
            with pytest.raises(BatchStopped, match="disk full writing") as caught:
                fn(f"{srv.base_url}/x.mp4", folder, limits)
            assert str(folder) in str(caught.value) and caught.value.exit_code == 3
            assert leftovers(folder) == []


def test_read_only_disk_stops_the_batch(small_disk: Path) -> None:
    folder = small_disk / "inputs"
    folder.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with Loopback() as srv:
        srv.push(raw(BODY))
        with pytest.raises(BatchStopped, match=r"cannot write .*Read-only file system"):
            fetch_input(f"{srv.base_url}/x.mp4", folder)
