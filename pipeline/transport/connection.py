"""One HTTP/1.1 client connection on an asyncio protocol: write a request, read one response.

Why not httpcore: a run makes thousands of small API calls and downloads through one pool, and
profiles (bench/RESULTS.md) showed httpcore, anyio and h11 taking most of the run's CPU: the pool
asks every idle socket whether it is readable (a ``getpeername`` and a ``select`` each) at every
request start and end, and every byte goes through three layers of stream objects. Here the event
loop itself tells the connection when the server closed it (``eof_received``), bytes land in one
buffer, and a response is parsed with a few ``bytes`` operations.

The rules followed (RFC 9112): a response to HEAD and a 1xx, 204 or 304 status have no body;
``Transfer-Encoding`` ending in ``chunked`` wins over ``Content-Length``; a body with neither runs
to the end of the connection; differing or non-numeric lengths, a malformed status line or header,
a head over :data:`MAX_HEAD` bytes are protocol errors. Every fault is raised as the httpx
exception httpx's own transport would raise (``ConnectError``, ``ReadTimeout``,
``RemoteProtocolError`` ...), so callers classify them the same way.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

#: Largest response head (status line and headers) read; h11, httpx's parser, allows 16 KiB.
MAX_HEAD = 64 * 1024
#: Largest chunk-size line (with extensions) or trailer section of a chunked body.
MAX_LINE = 8 * 1024
#: Informational (1xx) answers accepted before the real one: an endless stream is an attack.
MAX_INFORMATIONAL = 8
#: Unread bytes held before the socket stops being read (a download faster than the disk).
HIGH_WATER = 1 << 20

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FORBIDDEN = re.compile(rb"[\r\n\x00]")
_NO_BODY = frozenset({204, 304})


def encode_head(request: httpx.Request) -> bytes:
    """The request line and headers; a CR, LF or NUL in any of them is refused before sending
    (a header value built from a manifest must not smuggle a second request)."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _FORBIDDEN.search(value):
            raise httpx.LocalProtocolError(f"illegal header {name[:40]!r}", request=request)
        lines.append(name + b": " + value)
    if _FORBIDDEN.search(target) or b" " in target:
        raise httpx.LocalProtocolError("illegal request target", request=request)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Head:
    """A parsed response head and how its body is framed."""

    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status")

    def __init__(self, raw: bytes, method: str) -> None:
        lines = re.split(rb"\r?\n", raw.lstrip(b"\r\n"))  # a stray CRLF before it is allowed
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}")
        minor, status, reason = match.groups()
        self.status = int(status)
        self.reason = reason or b""
        self.headers: list[tuple[bytes, bytes]] = []
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        connection = b""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):  # also an obs-fold (leading space)
                raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
            value = value.strip(b" \t")
            self.headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif lower == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif lower == b"connection":
                connection += b"," + value.lower()
        self.chunked = False
        self.length: int | None = None
        if method == "HEAD" or self.status < 200 or self.status in _NO_BODY:
            self.length = 0  # whatever the headers say: they describe a body not sent
        elif codings:
            if codings != [b"chunked"]:  # gzip as a transfer coding: nothing decodes it
                raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding {codings!r}")
            self.chunked = True
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise httpx.RemoteProtocolError("invalid Content-Length")
            self.length = int(next(iter(lengths)))
        tokens = {t.strip() for t in connection.split(b",")}
        delimited = self.length is None and not self.chunked
        self.keep_alive = (
            minor == b"1"
            and b"close" not in tokens
            and not delimited
            and self.status != 101  # the connection now speaks another protocol
            and not (codings and lengths)  # a request-smuggling shape: answer it, never reuse
        )


class Connection(asyncio.Protocol):
    """One socket to one origin. The pool owns it; one request at a time uses it."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost: BaseException | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[Any] | None = None
        self._drained: asyncio.Future[Any] | None = None

    # -- what the event loop calls
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport: TCP or TLS

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- what the pool asks
    @property
    def reusable(self) -> bool:
        """Idle, open, and the server sent nothing unasked (else its bytes would be misread)."""
        t = self._transport
        return not self._eof and not self._buffer and t is not None and not t.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # no lingering: an abandoned body is not worth reading

    # -- one exchange
    async def send(self, request: httpx.Request, timeouts: dict[str, Any]) -> Head:
        """Write the request, return the final response head; the body is read with ``body``.

        ``timeouts`` are httpx's: ``write`` and ``read`` bound each wait for the socket (the
        ``stall`` of the methods below), not the exchange; whole-exchange deadlines are the
        callers' (providers/http.py, storage/fetch.py)."""
        head = encode_head(request)
        trace = request.extensions.get("trace")
        if trace is not None:  # the providers' "did it leave?" question (providers/http.py)
            await trace("http11.send_request_headers.started", {"request": request})
        write_error: httpx.TransportError | None = None
        try:
            await self._write_body(request, head, timeouts.get("write"))
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            # The server may have answered and closed early (413 to an upload): that answer,
            # if it came, is what the caller needs; only without one is the write error raised.
            write_error = exc
        read_timeout = timeouts.get("read")
        for _ in range(MAX_INFORMATIONAL + 1):
            try:
                raw = await self._read_head(read_timeout)
            except httpx.TransportError:
                if write_error is not None:
                    raise write_error from None
                raise
            parsed = Head(raw, request.method)
            if parsed.status >= 200 or parsed.status == 101:
                return parsed
            # 100 Continue, 103 Early Hints: informational, the real answer follows.
        raise httpx.RemoteProtocolError(f"more than {MAX_INFORMATIONAL} informational answers")

    async def _write_body(self, request: httpx.Request, head: bytes, stall: float | None) -> None:
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        pending = head
        async for part in request.stream:  # type: ignore[union-attr]  # an async client's stream
            if not part:
                continue
            if chunked:
                part = b"%x\r\n%b\r\n" % (len(part), part)
            if pending:  # one write for a small request: head and body in one segment
                part, pending = pending + part, b""
            await self._write(part, stall)
        if chunked:
            pending += b"0\r\n\r\n"
        if pending:
            await self._write(pending, stall)

    async def _write(self, data: bytes, stall: float | None) -> None:
        if self._eof or self._transport is None or self._transport.is_closing():
            raise httpx.WriteError(_lost_text(self._lost, "the connection closed while sending"))
        self._transport.write(data)
        if not self._writing_paused:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            if not await self._wait(self._drained, stall):
                raise httpx.WriteTimeout("timed out sending the request")
        finally:
            self._drained = None
        if self._eof:
            raise httpx.WriteError(_lost_text(self._lost, "the connection closed while sending"))

    async def _read_head(self, stall: float | None) -> bytes:
        scanned = 0
        while True:
            match = _HEAD_END.search(self._buffer, max(0, scanned - 3))
            if match is not None:
                raw = bytes(self._buffer[: match.start()])
                del self._buffer[: match.end()]
                return raw
            scanned = len(self._buffer)
            if scanned > MAX_HEAD:
                raise httpx.RemoteProtocolError(f"response head over {MAX_HEAD} bytes")
            if not await self._fill(stall):
                if scanned:
                    raise httpx.RemoteProtocolError("the server closed the connection mid-head")
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async def body(self, head: Head, stall: float | None) -> AsyncIterator[bytes]:
        """The raw body (still content-encoded), as the bytes arrive."""
        if head.chunked:
            parts = self._chunked(stall)
        elif head.length is None:  # delimited by the end of the connection
            parts = self._until_closed(stall)
        else:
            parts = self._counted(head.length, stall, "peer closed connection with {} body "
                                  "bytes still to send")  # fmt: skip
        async for part in parts:
            yield part

    async def _until_closed(self, stall: float | None) -> AsyncIterator[bytes]:
        while self._buffer or await self._fill(stall):
            yield self._take(len(self._buffer))

    async def _counted(self, size: int, stall: float | None, cut: str) -> AsyncIterator[bytes]:
        """Exactly ``size`` bytes; a close before them is a protocol error (``cut`` says it,
        with the bytes missing)."""
        while size > 0:
            if not self._buffer and not await self._fill(stall):
                raise httpx.RemoteProtocolError(cut.format(size))
            part = self._take(size)
            size -= len(part)
            yield part

    async def _chunked(self, stall: float | None) -> AsyncIterator[bytes]:
        while True:
            line = await self._line(stall)
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text):
                raise httpx.RemoteProtocolError(f"malformed chunk size {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            async for part in self._counted(size, stall, "peer closed connection mid-chunk"):
                yield part
            if await self._line(stall):
                raise httpx.RemoteProtocolError("chunk data longer than its size")
        trailers = 0
        while line := await self._line(stall):  # trailers: read and dropped
            trailers += len(line)
            if trailers > MAX_LINE:
                raise httpx.RemoteProtocolError("chunked trailers too long")

    async def _line(self, stall: float | None) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_LINE:
                raise httpx.RemoteProtocolError("chunk line too long")
            if not await self._fill(stall):
                raise httpx.RemoteProtocolError("peer closed connection mid-chunk")

    def _take(self, limit: int) -> bytes:
        if limit >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
        if self._reading_paused and len(self._buffer) < HIGH_WATER // 4 and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def _fill(self, stall: float | None) -> bool:
        """Wait for more bytes: False at a clean end of the connection, ReadError at a reset,
        ReadTimeout after ``stall`` seconds without any."""
        if not self._eof:
            if self._reading_paused and self._transport is not None:
                self._reading_paused = False
                self._transport.resume_reading()
            before = len(self._buffer)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if not await self._wait(self._waiter, stall):
                    raise httpx.ReadTimeout("timed out waiting for the server")
            finally:
                self._waiter = None
            if len(self._buffer) > before:
                return True
        if self._lost is not None:
            raise httpx.ReadError(_lost_text(self._lost, "connection lost"))
        return False

    @staticmethod
    async def _wait(future: asyncio.Future[Any], stall: float | None) -> bool:
        """Whether ``future`` finished within ``stall`` seconds (one timer, no extra task)."""
        if stall is None:
            await future
            return True
        timer = asyncio.get_running_loop().call_later(stall, expire, future)
        try:
            await future
        finally:
            timer.cancel()
        return future.result() is None


def expire(future: asyncio.Future[Any]) -> None:
    """A timer's end of a wait: the future's result False means "timed out"."""
    if not future.done():
        future.set_result(False)


def _lost_text(exc: BaseException | None, default: str) -> str:
    return f"{default} ({type(exc).__name__}: {exc})" if exc is not None else default
