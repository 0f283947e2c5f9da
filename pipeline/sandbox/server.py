"""The sandbox's HTTP server: stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive, loopback default."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from pipeline.errors import ConfigError
from pipeline.media.tools import MediaTools, find_tools
from pipeline.sandbox.app import SandboxApp
from pipeline.sandbox.callbacks import CallbackRecord
from pipeline.sandbox.faults import PROTOCOLS
from pipeline.sandbox.keys import SandboxKeys
from pipeline.sandbox.ledger import Ledger
from pipeline.sandbox.profile import FaultProfile
from pipeline.sandbox.wire import Pace, Reply, Request, json_reply

log = logging.getLogger("pipeline.sandbox")

MAX_BODY = 256 * 1024 * 1024
_CHUNK = 256 * 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of a benchmark at concurrency 64 must not be refused
    app: SandboxApp
    base_url: str
    connections: set[socket.socket]
    connections_lock: threading.Lock
    stopping: threading.Event
    """Set by stop(): a trickling answer gives up instead of outliving the server."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (a Ctrl-C'd run) is normal, not a traceback on
        # the sandbox's terminal; anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "motion-pipeline-sandbox"
    timeout = 120  # an idle keep-alive connection ends after this, freeing its thread
    server: _HTTPServer
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's own, written by flush_headers()

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in one write (see _send); without NODELAY a second small write
        # would still wait for the peer's delayed ACK (about 40 ms on loopback), per request.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self._send(json_reply(400, {"code": 400, "msg": str(exc)}))
            self.close_connection = True
            return
        host = self.headers.get("Host")
        base = f"http://{host}" if host else self.server.base_url
        req = Request.parse(self.command, self.path, dict(self.headers.items()), body, base)
        try:
            reply = self.server.app.handle(req)
        except Exception:  # a sandbox bug must answer 500 and keep serving, like a real server
            log.exception("sandbox: unexpected error answering %s %s", self.command, req.path)
            reply = json_reply(500, {"code": 500, "msg": "sandbox internal error"})
        if reply.reset:
            self._reset()
            return
        try:
            self._send(reply)
        except OSError:
            # The client hung up on a huge or trickled body, as a careful client should.
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError(f"request body of {length} bytes is over the sandbox's limit")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()
            if len(data) > MAX_BODY:
                raise ValueError("request body is over the sandbox's limit")

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: the client sees
        # "connection reset by peer" with no answer byte, as when a proxy dies mid-request.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())

    def _send(self, reply: Reply) -> None:
        length: int | None = len(reply.body)
        start, status = 0, reply.status
        headers = dict(reply.headers)
        if reply.file is not None:
            size = reply.file.stat().st_size
            start, length, status, extra = _range(self.headers.get("Range"), size)
            headers.update(extra)
            headers["Accept-Ranges"] = "bytes"
        elif reply.stream is not None:
            length = reply.length  # None: chunked, the reader learns the size only by counting
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if reply.file is None and reply.stream is None and reply.pace is None:
            # The common case, an answer in memory: status, headers and body in one write, one
            # syscall and one TCP segment (BaseHTTPRequestHandler buffers headers in this list).
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(reply.body)
            self.flush_headers()
            return
        self.end_headers()
        if self.command == "HEAD" or status == 416:
            return
        for block in _blocks(reply, start, length or 0):
            self._write(block, reply.pace, chunked=length is None)
        if length is None:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, block: bytes, pace: Pace | None, *, chunked: bool) -> None:
        step = pace.chunk if pace is not None else max(len(block), 1)
        for i in range(0, len(block), step):
            piece = block[i : i + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if pace is not None and self.server.stopping.wait(pace.seconds):
                raise ConnectionAbortedError("the sandbox is stopping")


def _blocks(reply: Reply, start: int, length: int) -> Iterator[bytes]:
    """The body of ``reply`` in blocks: its bytes, a range of its file, or its stream."""
    if reply.stream is not None:
        yield from reply.stream()
    elif reply.file is None:
        yield reply.body
    else:
        with reply.file.open("rb") as handle:
            handle.seek(start)
            remaining = length
            while remaining > 0:
                block = handle.read(min(_CHUNK, remaining))
                if not block:
                    return
                yield block
                remaining -= len(block)


def _range(header: str | None, size: int) -> tuple[int, int, int, dict[str, str]]:
    """(start, length, status, headers) for an optional single ``Range: bytes=`` request."""
    if not header or not header.startswith("bytes=") or "," in header:
        return 0, size, 200, {}
    first, _, last = header[6:].strip().partition("-")
    try:
        if first:
            start = int(first)
            end = int(last) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        return 0, size, 200, {}
    end = min(end, size - 1)
    if start >= size or start > end:
        return 0, 0, 416, {"Content-Range": f"bytes */{size}"}
    return start, end - start + 1, 206, {"Content-Range": f"bytes {start}-{end}/{size}"}


class SandboxServer:
    """A running sandbox on ``host:port`` (0 = a free port); use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: SandboxKeys | None = None,
        faults: FaultProfile | None = None,
        protocols: tuple[str, ...] | list[str] = PROTOCOLS,
        data_dir: Path | str | None = None,
        tools: MediaTools | None = None,
        instant: bool | None = None,
    ) -> None:
        """``instant`` (when given) overrides the profile's ``instant`` switch (:mod:`.instant`)."""
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown or not protocols:
            raise ConfigError(
                f"sandbox protocol {unknown[0] if unknown else '(none)'!r} is not one of "
                f"{', '.join(PROTOCOLS)}"
            )
        self.host = host
        self._port = port
        self._own_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="mp-sandbox-") if data_dir is None else data_dir
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        profile = faults or FaultProfile()
        if instant is not None:
            profile = dataclasses.replace(profile, instant=instant)
        self.app = SandboxApp(
            keys=keys or SandboxKeys(),
            profile=profile,
            protocols=tuple(protocols),
            data_dir=self.data_dir,
            tools=tools or find_tools(),
        )
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ledger(self) -> Ledger:
        return self.app.ledger

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def render_count(self) -> int:
        """ffmpeg renders actually run (identical jobs share one)."""
        return self.app.renderer.render_count

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """Every callback delivered (or dropped, forged...) so far, in order (:mod:`.callbacks`)."""
        return self.app.callbacks.records()

    def file_url(self, path: Path | str) -> str:
        """An http URL on the sandbox that serves a local file (input URLs for tests)."""
        return self.app.file_url(self.base_url, Path(path))

    def expire_results(self) -> int:
        """Expire every result URL issued so far; a new status query issues fresh ones."""
        return self.app.store.expire()

    def start(self) -> SandboxServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_Server", (_HTTPServer,), {"address_family": family})
        try:
            httpd = server_class((self.host, self._port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"sandbox cannot listen on {self.host}:{self._port}: {exc.strerror}"
            ) from None
        self.app.port = httpd.server_address[1]
        self.app.base_url = self.base_url
        httpd.app = self.app
        httpd.base_url = self.base_url
        httpd.connections = set()
        httpd.connections_lock = threading.Lock()
        httpd.stopping = threading.Event()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"sandbox-{self.port}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.stopping.set()
            httpd.shutdown()
            httpd.server_close()
            with httpd.connections_lock:
                open_connections = list(httpd.connections)
            for conn in open_connections:  # idle keep-alive connections would linger otherwise
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.app.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer({self.base_url}, protocols={self.app.protocols})"


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    protocols: tuple[str, ...] | list[str] = PROTOCOLS,
    faults_path: Path | str | None = None,
    *,
    keys: SandboxKeys | None = None,
    data_dir: Path | str | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    instant: bool = False,
) -> None:
    """Run a sandbox until SIGINT/SIGTERM (or ``stop`` is set); first prints its base URL.

    Signal handlers are installed only when called from the main thread, and restored after.
    """
    profile = FaultProfile.load(faults_path) if faults_path else FaultProfile()
    stream = out or sys.stdout
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop is not None:  # always set above; a closure does not keep that narrowing
            stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with SandboxServer(host, port, keys=keys, faults=profile, protocols=protocols,
                           data_dir=data_dir, instant=instant or None) as server:  # fmt: skip
            print(f"sandbox listening on {server.base_url}", file=stream, flush=True)
            print(f"protocols: {', '.join(server.app.protocols)}", file=stream, flush=True)
            if server.app.profile.instant:
                print("instant mode: no media checks, no renders", file=stream, flush=True)
            while not stop.wait(0.5):
                pass
            print(f"sandbox stopped; {len(server.ledger)} tasks accepted", file=stream, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
