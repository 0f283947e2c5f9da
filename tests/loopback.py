"""A scripted HTTP/1.1 server on 127.0.0.1 for provider-client tests: real sockets, real faults.

Each accepted connection reads one request, records it, and performs the next scripted action:
answer, close without answering, reset (RST), send half a body, hang, or run a callable that
writes whatever bytes it likes to the socket (trickles, endless bodies). It is deliberately
dumb so a test can produce exactly the byte-level fault it is about.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.transport import Http11Transport


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = self.body
        content_type = "application/json"
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
            content_type = "text/html"
        lines = [f"HTTP/1.1 {self.status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines.append(f"Content-Type: {content_type}")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ok(body: dict[str, Any] | list[Any] | str | bytes, **headers: str) -> Answer:
    return Answer(200, body, headers)


# Faults, as scripted actions.
CLOSE = "close"  # read the request, close without a byte of response
RESET = "reset"  # read the request, then RST the connection
PARTIAL = "partial"  # headers promise a body, half of it arrives, then close
HANG = "hang"  # read the request, never answer (client read timeout)

Script = Callable[[socket.socket], None]
"""A custom action: write anything to the connection; a client hanging up ends it quietly."""

Action = Answer | str | Script


class Loopback:
    """``with Loopback() as srv: srv.push(ok({...})); ... srv.requests``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def push(self, *actions: Action) -> Loopback:
        with self._lock:
            self._script.extend(actions)
        return self

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # Wake the blocked accept() with one last connection instead of polling with timeouts.
        with socket.create_connection(("127.0.0.1", self.port)):
            pass
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            request = _read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
                action: Action = (
                    self._script.popleft() if self._script else Answer(599, b"unscripted")
                )
            if isinstance(action, Answer):
                conn.sendall(action.encode())
            elif callable(action):
                with contextlib.suppress(OSError):  # the client gave up, as hostile tests expect
                    action(conn)
            elif action == RESET:
                # SO_LINGER with a zero timeout turns close() into a TCP RST.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif action == PARTIAL:
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"code": 2')
            elif action == HANG:
                self._stop.wait(10)
            # CLOSE: fall through and close.


def _read_request(conn: socket.socket) -> Recorded | None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Recorded(method, target, headers, body)


def refused_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Scripts for hostile servers: whole responses written byte by byte as a test needs them.


def head(status: int = 200, content_type: str = "application/json", **headers: str) -> bytes:
    """A status line and headers (``Content_Length`` means ``Content-Length``), connection closing."""
    lines = [f"HTTP/1.1 {status} X", "Connection: close", f"Content-Type: {content_type}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw(data: bytes, status: int = 200, **headers: str) -> Script:
    """Exactly these body bytes, with a matching Content-Length."""

    def script(conn: socket.socket) -> None:
        conn.sendall(head(status, Content_Length=str(len(data)), **headers) + data)

    return script


def endless(suffix: bytes, total: int, **headers: str) -> Script:
    """``total`` bytes of JSON whitespace, then ``suffix``, without a Content-Length: still a
    valid answer for whoever reads it all."""

    def script(conn: socket.socket) -> None:
        conn.sendall(head(**headers))
        block = b" " * 65536
        for _ in range(total // len(block)):
            conn.sendall(block)
        conn.sendall(suffix)

    return script


def trickle(
    body: bytes, every: float, stop: threading.Event, *, step: int = 1, headers_too: bool = False
) -> Script:
    """The answer ``step`` bytes at a time, one write every ``every`` seconds, until ``stop``."""

    def script(conn: socket.socket) -> None:
        status_and_headers = head(Content_Length=str(len(body)))
        data = status_and_headers + body
        if not headers_too:
            conn.sendall(status_and_headers)
            data = body
        for i in range(0, len(data), step):
            conn.sendall(data[i : i + step])
            if stop.wait(every):
                return

    return script


def redirect(location: str, status: int = 302) -> Answer:
    return Answer(status, b"", {"Location": location})


def http_client(**kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client on the transport every run uses (:class:`pipeline.transport.Http11Transport`),
    so a hostile-server test exercises the product's own HTTP stack; no proxy from the
    environment."""
    return httpx.AsyncClient(transport=Http11Transport(), trust_env=False, **kwargs)
