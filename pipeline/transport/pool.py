"""The run's HTTP transport: a bounded pool of HTTP/1.1 connections behind httpx's client API.

httpx stays the interface (requests, responses, timeouts, exceptions, ``MockTransport`` in tests);
this replaces only what sits under ``httpx.AsyncHTTPTransport``. The pool holds at most
``max_connections`` sockets over all hosts. A request takes the most recently used idle
connection to its origin that the server has not closed (the event loop reports a close as it
happens; no socket is polled), opens one while under the limit, closes an idle connection to
another origin when at it, or waits up to the ``pool`` timeout (``httpx.PoolTimeout``). A
connection goes back to the pool only after its response was read to the end and both sides
allow keep-alive; anything else (an abandoned body, a cancelled request, a protocol error)
closes it. Idle connections expire after ``keepalive_expiry`` seconds, as httpx's do.

Not handled here, by design: HTTP/2, proxies (httpx mounts its own transport for a proxy it
finds in the environment), and ``Expect: 100-continue`` (nothing here sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from pipeline.transport.connection import Connection, Head, expire

Origin = tuple[str, str, int]


class Http11Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=Http11Transport())``: see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0
        """Connections open or opening, idle or in use: what the limit counts."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._in_use: set[Connection] = set()
        self.opened = 0
        """Connections opened so far (tests and benchmarks read it)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        if not url.host:
            raise httpx.UnsupportedProtocol("request URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        origin: Origin = (url.scheme, url.host, port)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        connection = await self._acquire(origin, timeouts)
        try:
            head = await connection.send(request, timeouts)
        except BaseException:  # cancelled, timed out, refused: the socket state is unknown
            self._discard(connection)
            raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_Body(self, connection, head, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    def idle(self) -> int:
        """Idle connections that could serve a request now (tests and benchmarks read it)."""
        now = asyncio.get_running_loop().time()
        return sum(
            c.reusable and now - c.idle_since < self.keepalive_expiry
            for connections in self._idle.values()
            for c in connections
        )

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in list(self._in_use):
            connection.close()
        self._in_use.clear()
        self._open = 0

    # -- the pool
    async def _acquire(self, origin: Origin, timeouts: dict[str, Any]) -> Connection:
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.get("pool") is None else loop.time() + timeouts["pool"]
        while True:
            reused = self._reuse(origin, loop.time())
            if reused is not None:
                return reused
            if self._open >= self.max_connections:
                self._evict_one()
            if self._open < self.max_connections:
                self._open += 1
                try:
                    connection = await self._connect(origin, timeouts.get("connect"))
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
                self._in_use.add(connection)
                return connection
            await self._wait_for_slot(deadline, loop)

    def _reuse(self, origin: Origin, now: float) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed by now
            if connection.reusable and now - connection.idle_since < self.keepalive_expiry:
                self._in_use.add(connection)
                return connection
            self._retire(connection)
        return None

    def _evict_one(self) -> None:
        """At the limit, make room by closing the longest-idle connection (any origin)."""
        oldest: list[Connection] | None = None
        for connections in self._idle.values():
            if connections and (oldest is None or connections[0].idle_since < oldest[0].idle_since):
                oldest = connections
        if oldest is not None:
            self._retire(oldest.pop(0))

    def _retire(self, connection: Connection) -> None:
        """Close a connection no request uses and give its place back to the limit."""
        connection.close()
        self._open -= 1

    async def _wait_for_slot(self, deadline: float | None, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if deadline is None else loop.call_at(deadline, expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken and cancelled at once: pass the turn on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        if waiter.result() is False:  # expire()'s mark
            raise httpx.PoolTimeout("no connection free in the pool in time")

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: Connection, keep_alive: bool) -> None:
        """A request is over: read to its end and both sides allow keep-alive, the connection
        may serve the next one; otherwise (or once aclose() closed it) it is closed."""
        if connection not in self._in_use:
            return  # closed by aclose() meanwhile
        self._in_use.discard(connection)
        if keep_alive and connection.reusable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            self._retire(connection)
        self._wake_one()

    def _discard(self, connection: Connection) -> None:
        self._release(connection, keep_alive=False)

    async def _connect(self, origin: Origin, within: float | None) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        connection = Connection(origin)
        try:
            async with asyncio.timeout(within):
                await loop.create_connection(
                    lambda: connection, host, port, ssl=tls,
                    server_hostname=host if tls is not None else None,
                    happy_eyeballs_delay=0.25,
                )  # fmt: skip
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            connection.close()
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        self.opened += 1
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # httpx's own default: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR.
            self._ssl = httpx.create_ssl_context()
        return self._ssl


class _Body(httpx.AsyncByteStream):
    """A response body that hands its connection back once read to the end."""

    def __init__(
        self, pool: Http11Transport, connection: Connection, head: Head, stall: float | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._head = head
        self._stall = stall
        self._settled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._settled:
            raise httpx.StreamConsumed()
        try:
            async for part in self._connection.body(self._head, self._stall):
                yield part
        except BaseException:
            self._settle(reusable=False)
            raise
        self._settle(reusable=True)

    async def aclose(self) -> None:
        self._settle(reusable=False)  # a no-op once read to the end

    def _settle(self, *, reusable: bool) -> None:
        if self._settled:
            return
        self._settled = True
        if reusable:
            self._pool._release(self._connection, self._head.keep_alive)
        else:
            self._pool._discard(self._connection)
