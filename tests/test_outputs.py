"""Verified downloads over a real loopback HTTP server, metadata.jsonl, and the redacted run.log."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loopback import http_client
from mediagen import make_image, make_video
from waiting import wait_until_async

from pipeline.dataset.names import PART_PREFIX
from pipeline.dataset.records import (
    RESERVED_KEYS,
    ResultMetadata,
    check_record_keys,
    metadata_record,
    write_metadata,
)
from pipeline.dataset.results import (
    ResultFile,
    classify_status,
    download_result,
    remove_partials,
    verify_existing,
)
from pipeline.errors import (
    BatchStopped,
    OutputConflictError,
    ResultExpiredError,
    ResultInvalidError,
    TransientError,
)
from pipeline.media.tools import MediaTools, find_tools
from pipeline.run.log import close_run_log, open_run_log
from pipeline.storage.fetch import disk_error
from pipeline.storage.urls import display_url

# --------------------------------------------------------------------------- loopback server


@dataclass
class Media:
    ok: bytes  # 2 s, 160x128
    other: bytes  # a different valid video, 3 s
    png: bytes


@dataclass
class Server:
    base: str
    release: threading.Event  # lets the slow stream finish


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    root = tmp_path_factory.mktemp("served")
    ok = make_video(root / "ok.mp4", seconds=2, width=160, height=128, fps=10, audio=False)
    other = make_video(root / "other.mp4", seconds=3, width=160, height=128, fps=10, audio=False)
    png = make_image(root / "still.png", 320, 320)
    return Media(ok.read_bytes(), other.read_bytes(), png.read_bytes())


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


def _handler(media: Media, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/ok.mp4":
                self._send(200, media.ok, Content_Type="video/mp4")
            elif path == "/other.mp4":
                self._send(200, media.other)
            elif path == "/garbage":
                self._send(200, b"<html><body>Access denied</body></html>" * 50)
            elif path == "/truncated.mp4":
                self._send(200, media.ok[: len(media.ok) // 2])  # the moov box is at the end
            elif path == "/still.png":
                self._send(200, media.png)
            elif path == "/empty":
                self._send(200, b"")
            elif path.startswith("/status/"):
                self._send(int(path.rsplit("/", 1)[1]), b"nope", Retry_After="7")
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/nolength")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/nolength":  # HTTP/1.0: the body ends when the connection closes
                self.send_response(200)
                self.end_headers()
                self.wfile.write(media.ok)
            elif path == "/short":  # promises the whole file, sends half, closes
                self.send_response(200)
                self.send_header("Content-Length", str(len(media.ok)))
                self.end_headers()
                self.wfile.write(media.ok[: len(media.ok) // 2])
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", str(len(media.ok)))
                self.end_headers()
                self.wfile.write(media.ok[:4096])
                self.wfile.flush()
                release.wait(30)
            else:
                self._send(500, b"no route")

    return Handler


@pytest.fixture(scope="module")
def server(media: Media) -> Iterator[Server]:
    release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(media, release))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", release)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def fetch(
    url: str,
    target: Path,
    tools: MediaTools,
    *,
    expect: float | None = 10.0,
    replace: bool = False,
    job_id: str = "job1",
) -> ResultFile:
    async def go() -> ResultFile:
        async with http_client(timeout=20) as client:
            return await download_result(
                client,
                url,
                target,
                tools=tools,
                expect_seconds=expect,
                job_id=job_id,
                replace=replace,
            )

    return asyncio.run(go())


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- downloads


def test_download_streams_verifies_and_renames(
    server: Server, media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    target = tmp_path / "videos" / "job1.mp4"
    result = fetch(f"{server.base}/ok.mp4?sig=abc", target, tools)
    assert target.read_bytes() == media.ok  # byte for byte, never re-encoded
    assert result.path == target
    assert result.sha256 == hashlib.sha256(media.ok).hexdigest()
    assert result.size == len(media.ok)
    assert 1.5 <= result.duration <= 2.5
    assert (result.width, result.height, result.codec) == (160, 128, "h264")
    assert result.fps == pytest.approx(10)
    assert not result.adopted and result.replaced is None
    assert listing(tmp_path / "videos") == ["job1.mp4"]


def test_body_without_length_and_redirects_are_followed(
    server: Server, media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    result = fetch(f"{server.base}/redirect", tmp_path / "job1.mp4", tools)
    assert result.sha256 == hashlib.sha256(media.ok).hexdigest()


def test_a_shorter_result_is_kept_a_longer_one_refused(
    server: Server, tools: MediaTools, tmp_path: Path
) -> None:
    # The model may use only part of the motion: 2 s for 10 s billed is a good result.
    short = fetch(f"{server.base}/ok.mp4", tmp_path / "a.mp4", tools, expect=10.0, job_id="a")
    assert short.duration < 3
    with pytest.raises(ResultInvalidError, match=r"job b: result is 2\.\d+ s long.*0\.3 s billed"):
        fetch(f"{server.base}/ok.mp4", tmp_path / "b.mp4", tools, expect=0.3, job_id="b")
    assert listing(tmp_path) == ["a.mp4"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/garbage", "not a readable video"),
        ("/truncated.mp4", "not a readable video"),
        ("/still.png", "is not a video"),
        ("/empty", "empty"),
        ("/status/400", "HTTP 400"),
    ],
)
def test_unusable_bodies_are_invalid_results(
    server: Server, tools: MediaTools, tmp_path: Path, path: str, words: str
) -> None:
    with pytest.raises(ResultInvalidError, match=words) as caught:
        fetch(server.base + path, tmp_path / "job1.mp4", tools)
    assert "job job1" in str(caught.value)
    assert listing(tmp_path) == []  # the temp file is gone too


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_gone_result_urls_are_expired(
    server: Server, tools: MediaTools, tmp_path: Path, status: int
) -> None:
    with pytest.raises(ResultExpiredError) as caught:
        fetch(f"{server.base}/status/{status}?X-Amz-Signature=s3cr3t", tmp_path / "j.mp4", tools)
    assert caught.value.http_status == status
    assert "s3cr3t" not in str(caught.value)  # signed query strings stay out of messages
    assert listing(tmp_path) == []


def test_server_errors_are_transient_with_retry_after(
    server: Server, tools: MediaTools, tmp_path: Path
) -> None:
    with pytest.raises(TransientError) as caught:
        fetch(f"{server.base}/status/503", tmp_path / "j.mp4", tools)
    assert not isinstance(caught.value, ResultExpiredError)
    assert caught.value.retry_after == 7


def test_body_shorter_than_content_length_is_transient(
    server: Server, tools: MediaTools, tmp_path: Path
) -> None:
    with pytest.raises(TransientError, match="job job1: result download"):
        fetch(f"{server.base}/short", tmp_path / "job1.mp4", tools)
    assert listing(tmp_path) == []


def test_connection_refused_is_transient(tools: MediaTools, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientError, match="ConnectError"):
        fetch(f"http://127.0.0.1:{port}/x.mp4", tmp_path / "j.mp4", tools)


def test_cancelled_download_removes_its_temp_file(
    server: Server, tools: MediaTools, tmp_path: Path
) -> None:
    async def go() -> None:
        async with http_client(timeout=30) as client:
            task = asyncio.create_task(
                download_result(
                    client,
                    f"{server.base}/slow",
                    tmp_path / "job1.mp4",
                    tools=tools,
                    expect_seconds=None,
                    job_id="job1",
                    chunk=1024,
                )
            )
            part = f"{PART_PREFIX}job1-"

            async def temp_file_exists() -> bool:
                return any(name.startswith(part) for name in os.listdir(tmp_path))

            await wait_until_async(temp_file_exists, what="the download's temp file mid-stream")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert listing(tmp_path) == []


def test_unwritable_output_directory_stops_the_batch(
    server: Server, tools: MediaTools, tmp_path: Path
) -> None:
    blocker = tmp_path / "videos"
    blocker.write_bytes(b"a file where the videos directory should be")
    with pytest.raises(BatchStopped, match="cannot write") as caught:
        fetch(f"{server.base}/ok.mp4", blocker / "job1.mp4", tools)
    assert caught.value.exit_code == 3


# --------------------------------------------------------------------------- never overwrite


def test_identical_existing_result_is_adopted(
    server: Server, media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    target = tmp_path / "job1.mp4"
    target.write_bytes(media.ok)
    inode = target.stat().st_ino
    result = fetch(f"{server.base}/ok.mp4", target, tools)
    assert result.adopted and result.path == target
    assert target.stat().st_ino == inode  # not rewritten
    assert listing(tmp_path) == ["job1.mp4"]


def test_different_existing_result_is_a_conflict_and_the_new_one_is_kept(
    server: Server, media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    target = tmp_path / "job1.mp4"
    target.write_bytes(media.other)
    with pytest.raises(OutputConflictError, match=r"job job1: .*already holds a different video"):
        fetch(f"{server.base}/ok.mp4", target, tools)
    assert target.read_bytes() == media.other
    kept = list((tmp_path / "conflicts").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == media.ok  # paid for: never thrown away
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PART_PREFIX)]


def test_replace_moves_the_old_result_aside(
    server: Server, media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    target = tmp_path / "job1.mp4"
    target.write_bytes(media.other)
    result = fetch(f"{server.base}/ok.mp4", target, tools, replace=True)
    assert target.read_bytes() == media.ok
    assert result.replaced is not None and result.replaced.parent == tmp_path / "replaced"
    assert re.fullmatch(r"job1\.\d{8}T\d{6}Z\.mp4", result.replaced.name)
    assert result.replaced.read_bytes() == media.other
    # A second replace within the same second does not clobber the first one moved aside.
    target.write_bytes(media.other)
    again = fetch(f"{server.base}/ok.mp4", target, tools, replace=True)
    assert again.replaced is not None and again.replaced != result.replaced
    assert len(list((tmp_path / "replaced").iterdir())) == 2


# --------------------------------------------------------------------------- resume


def test_verify_existing_adopts_only_good_files(
    media: Media, tools: MediaTools, tmp_path: Path
) -> None:
    good = tmp_path / "good.mp4"
    good.write_bytes(media.ok)
    found = verify_existing(good, tools=tools, expect_seconds=5.0)
    assert found is not None and found.sha256 == hashlib.sha256(media.ok).hexdigest()
    assert found.size == len(media.ok) and found.width == 160
    assert verify_existing(tmp_path / "absent.mp4", tools=tools, expect_seconds=5.0) is None
    assert verify_existing(good, tools=tools, expect_seconds=0.2) is None  # longer than billed
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(media.ok[: len(media.ok) // 2])
    assert verify_existing(broken, tools=tools, expect_seconds=None) is None


def test_remove_partials_only_touches_temp_files(tmp_path: Path) -> None:
    (tmp_path / f"{PART_PREFIX}job1-abc").write_bytes(b"x")
    (tmp_path / "job1.mp4").write_bytes(b"y")
    assert remove_partials(tmp_path) == 1
    assert listing(tmp_path) == ["job1.mp4"]
    assert remove_partials(tmp_path / "missing") == 0


# --------------------------------------------------------------------------- pure policy


def test_classify_status() -> None:
    def kind(status: int) -> type | None:
        error = classify_status(status, job_id="j", where="https://cdn/x.mp4")
        return None if error is None else type(error)

    assert kind(200) is None and kind(206) is None
    assert {kind(s) for s in (401, 403, 404, 410)} == {ResultExpiredError}
    assert {kind(s) for s in (408, 429, 500, 502, 503, 504)} == {TransientError}
    assert {kind(s) for s in (300, 400, 405, 418)} == {ResultInvalidError}


def test_display_url_drops_the_signed_query() -> None:
    shown = display_url("https://user:pw@cdn.example.com/r/out.mp4?X-Amz-Signature=abc&token=t")
    assert shown == "https://cdn.example.com/r/out.mp4"


def test_disk_full_stops_the_batch() -> None:
    full = disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("/o/videos/x"))
    assert isinstance(full, BatchStopped) and full.exit_code == 3
    assert str(full).startswith("disk full writing /o/videos/x")
    other = disk_error(OSError(errno.EROFS, "Read-only file system"), Path("/o/videos/x"))
    assert str(other) == "cannot write /o/videos/x: Read-only file system"


# --------------------------------------------------------------------------- metadata.jsonl


def meta(job_id: str, prompt: str = "", **overrides: Any) -> ResultMetadata:
    values: dict[str, Any] = {
        "job_id": job_id,
        "job_key": "k" * 32,
        "source_image": "images/alice.png",
        "driving_video": "videos/salsa.mp4",
        "source_image_sha256": "a" * 64,
        "driving_video_sha256": "b" * 64,
        "settings": {
            "mode": "std",
            "character_orientation": "video",
            "keep_original_sound": True,
            "prompt": prompt,
            "trim": {"start": 0.0, "end": None},
        },
        "provider": "kie",
        "model": "kling-2.6/motion-control",
        "task_id": f"task-{job_id}",
        "output_sha256": "c" * 64,
        "duration": 5.0,
        "width": 720,
        "height": 1280,
        "billed_seconds": 5.0,
        "submitted_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:03:00Z",
    }
    values.update(overrides)
    return ResultMetadata(**values)


def test_metadata_record_follows_the_videofolder_convention() -> None:
    record = metadata_record(meta("alice-salsa", media_recipe="trim:0-10"))
    assert record["file_name"] == "videos/alice-salsa.mp4"
    assert not RESERVED_KEYS & record.keys()
    for key in ("job_id", "job_key", "source_image", "driving_video", "source_image_sha256",
                "driving_video_sha256", "trim", "settings", "provider", "model", "task_id",
                "output_sha256", "duration", "width", "height", "billed_seconds",
                "submitted_at", "finished_at", "media_recipe"):  # fmt: skip
        assert key in record, key
    assert record["trim"] is None  # nothing was cut; the request is settings.trim
    assert record["settings"]["trim"] == {"start": 0.0, "end": None}
    cut = metadata_record(meta("cut", trim={"start": 0.0, "end": 9.75}))
    assert cut["trim"] == {"start": 0.0, "end": 9.75}
    assert record["settings"]["prompt"] == ""
    # Every row has the same keys: the loader infers one schema from the first rows.
    assert metadata_record(meta("bob")).keys() == record.keys()


@pytest.mark.parametrize("key", ["video", "image", "driving_file_name", "file_names"])
def test_keys_the_loader_would_misread_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        check_record_keys({"file_name": "videos/a.mp4", "job_id": "a", key: "x"})
    with pytest.raises(ValueError, match="file_name"):
        check_record_keys({"job_id": "a"})


def test_write_metadata_sorted_utf8_and_atomic(tmp_path: Path) -> None:
    prompt = 'Ünïcödé dance 💃 "quoted"\nnew line'
    records = [metadata_record(meta(j, prompt)) for j in ("zed", "alice", "mid")]
    path = write_metadata(tmp_path, records)
    raw = path.read_bytes()
    assert "💃".encode() in raw  # ensure_ascii=False: readable, still valid JSON
    lines = raw.decode("utf-8").splitlines()
    assert [json.loads(line)["job_id"] for line in lines] == ["alice", "mid", "zed"]
    assert json.loads(lines[0])["settings"]["prompt"] == prompt
    inode = path.stat().st_ino

    write_metadata(tmp_path, records[:1])
    assert path.stat().st_ino != inode  # a new file renamed over the old, not rewritten in place
    assert [json.loads(line)["job_id"] for line in path.read_text().splitlines()] == ["zed"]
    before = path.read_bytes()

    bad = {**records[0], "video": "x"}
    with pytest.raises(ValueError, match="video"):
        write_metadata(tmp_path, [records[1], bad])
    with pytest.raises(ValueError, match="two metadata records for job alice"):
        write_metadata(tmp_path, [records[1], records[1]])
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["metadata.jsonl"]


def test_write_metadata_with_no_results_writes_an_empty_file(tmp_path: Path) -> None:
    assert write_metadata(tmp_path, []).read_bytes() == b""


# --------------------------------------------------------------------------- run.log

KEY = "kie-SECRET-0123456789abcdef"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJhayJ9.c2lnbmF0dXJlLXZhbHVl"


def test_run_log_redacts_messages_arguments_and_exceptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = open_run_log(tmp_path, [KEY])
    try:
        log.info(f"key in the message {KEY}")
        log.warning("key as an argument: %s, header %s", KEY, f"Authorization: Bearer {KEY}x")
        log.getChild("kie").info("child logger: %r", {"token": JWT})
        try:
            raise RuntimeError(f"provider echoed {KEY}")
        except RuntimeError:
            log.exception("request failed")
        log.info("bad format %d", "not a number", KEY)
    finally:
        close_run_log(log)
    text = (tmp_path / "run.log").read_text(encoding="utf-8")
    assert KEY not in text and JWT not in text and "SECRET" not in text
    assert "key in the message ***" in text
    assert "key as an argument: ***, header Authorization: Bearer ***" in text
    assert "RuntimeError: provider echoed ***" in text and "Traceback" in text
    assert "child logger" in text
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO key in the message", text)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err  # nothing leaked through the root logger


def test_run_log_appends_across_runs_without_duplicate_lines(tmp_path: Path) -> None:
    first = open_run_log(tmp_path, [])
    first.info("run one")
    second = open_run_log(tmp_path, [])  # the same directory again: one handler, not two
    second.info("run two")
    close_run_log(second)
    close_run_log(first)
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["run one", "run two"]


def test_run_log_does_not_touch_the_root_logger(tmp_path: Path) -> None:
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = logging.getLogger()
    catch = Catch()
    root.addHandler(catch)
    try:
        log = open_run_log(tmp_path, [KEY])
        log.info("only in run.log %s", KEY)
        close_run_log(log)
    finally:
        root.removeHandler(catch)
    assert seen == []
