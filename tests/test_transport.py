"""The run's HTTP/1.1 transport against real loopback servers that answer byte by byte.

Each test starts an asyncio server on 127.0.0.1 whose handler writes exactly the bytes the case
is about (keep-alive, chunked, close-delimited, cut-off, oversized, slow, early close), and talks
to it through ``httpx.AsyncClient(transport=Http11Transport(...))``, the way a run does.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from waiting import wait_until_async

from pipeline.transport import Http11Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server: counts connections, records request heads and bodies."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.release = asyncio.Event()
        self.closed = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                self.closed += 1

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]]:
        """One request head, and its body when it has a Content-Length or is chunked."""
        head = await reader.readuntil(b"\r\n\r\n")
        line, *rest = head[:-4].split(b"\r\n")
        headers = {k.decode().lower(): v.decode().strip() for k, _, v in
                   (h.partition(b":") for h in rest)}  # fmt: skip
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
        self.requests.append((line, headers, body))
        return line, headers


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_alive(body: bytes = b"hello", *, held: bool = False) -> Handler:
    """Answers every request on the connection with ``body`` (Content-Length framing); ``held``:
    only once the test sets ``release``."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        while True:
            try:
                await s.read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if held:
                await s.release.wait()
            writer.write(response(body))
            await writer.drain()

    return handler


def once(raw: bytes, *, close: bool = True) -> Handler:
    """Reads one request, writes ``raw`` as it is, then closes (or keeps the socket open)."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(raw)
        await writer.drain()
        if not close:
            await s.release.wait()

    return handler


def client(transport: Http11Transport, **timeouts: float) -> httpx.AsyncClient:
    timeout = httpx.Timeout(timeouts.pop("default", 10.0), **timeouts)
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def until(predicate: Callable[[], object], what: str) -> None:
    async def check() -> object:
        return predicate()

    await wait_until_async(check, what=what)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 180)  # a hung case fails, it does not stall the suite

    return asyncio.run(main())


def bodies(handler: Handler, paths: list[str], **pool: Any) -> tuple[list[bytes], int]:
    """GET each path in turn from a server running ``handler``: the bodies, and how many
    connections the pool opened for them."""

    async def go() -> tuple[list[bytes], int]:
        async with Server(handler) as s:
            transport = Http11Transport(**pool)
            async with client(transport) as c:
                got = [(await c.get(s.url + path)).content for path in paths]
            return got, transport.opened

    return run(go())  # type: ignore[no-any-return]  # run() is as typed as its coroutine


# -- framing


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def go() -> None:
        async with Server(keep_alive(b"x" * 1000)) as s:
            pool = Http11Transport(max_connections=4)
            async with client(pool) as c:
                for n in range(20):
                    r = await c.get(f"{s.url}/n/{n}?q=1")
                    assert r.status_code == 200 and r.content == b"x" * 1000
            assert s.connections == 1 and pool.opened == 1
            assert s.requests[5][0] == b"GET /n/5?q=1 HTTP/1.1"

    run(go())


def test_chunked_body_with_extensions_and_trailers_then_reuse() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        for _ in range(2):
            await s.read_request(reader)
            writer.write(raw)

    assert bodies(handler, ["/", "/"]) == ([b"hello world"] * 2, 1)


def test_body_without_length_runs_to_the_close_and_is_not_reused() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in (b"one ", b"two ", b"three"):
            writer.write(part)
            await writer.drain()

    assert bodies(handler, ["/", "/"]) == ([b"one two three"] * 2, 2)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(response(b"hello"), id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            id="chunked",
        ),
    ],
)
def test_head_204_304_have_no_body_whatever_their_headers_say(raw: bytes) -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")  # HEAD: no body follows
        for status in ("204 No Content", "304 Not Modified"):
            await s.read_request(reader)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n".encode())
        await s.read_request(reader)
        writer.write(raw)

    async def go() -> None:
        async with Server(handler) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                head = await c.head(s.url)
                assert head.headers["content-length"] == "100" and head.content == b""
                assert (await c.get(s.url)).status_code == 204
                assert (await c.get(s.url)).status_code == 304
                assert (await c.get(s.url)).content == b"hello"
            assert pool.opened == 1

    run(go())


def test_no_body_answers_claiming_chunked_bodies_have_none_either() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        for status in ("200 OK", "304 Not Modified"):  # the first answers a HEAD
            await s.read_request(reader)
            writer.write(f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        await s.read_request(reader)
        writer.write(b"\r\n" + response(b"after"))  # a stray CRLF before a status line is allowed

    async def go() -> None:
        async with Server(handler) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                assert (await c.head(s.url)).content == b""
                assert (await c.get(s.url)).status_code == 304
                assert (await c.get(s.url)).content == b"after"
            assert pool.opened == 1

    run(go())


def test_switching_protocols_is_final_and_never_reused() -> None:
    async def go() -> None:
        raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        async with Server(once(raw, close=False)) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                assert (await c.get(s.url)).status_code == 101
                assert pool.idle() == 0
            s.release.set()

    run(go())


def test_informational_answers_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"

    async def go() -> None:
        answer = raw + response(b"{}", "Content-Type: application/json")
        async with Server(once(answer)) as s, client(Http11Transport()) as c:
            r = await c.get(s.url)
            assert r.status_code == 200 and r.json() == {}

    run(go())


def test_transfer_encoding_beats_content_length_and_the_connection_is_not_reused() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")  # fmt: skip

    async def go() -> None:
        async with Server(once(raw, close=False)) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                assert (await c.get(s.url)).content == b"hello"
                assert pool.idle() == 0
            s.release.set()

    run(go())


def test_bytes_after_a_complete_answer_make_the_connection_unusable() -> None:
    async def go() -> None:
        async with Server(once(response(b"ok") + b"HTTP/1.1 200 OK\r\n", close=False)) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                assert (await c.get(s.url)).content == b"ok"
                assert pool.idle() == 0
            s.release.set()

    run(go())


# -- faults


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", "6 body bytes still to send"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "mid-chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "mid-head"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "unsupported"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b", "unsupported"),
        (b"", "without sending a response"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + response(b"late"), "informational"),
    ],
)
def test_broken_answers_are_protocol_errors_and_free_their_slot(raw: bytes, message: str) -> None:
    async def go() -> None:
        async with Server(once(raw)) as bad, Server(keep_alive()) as good:
            pool = Http11Transport(max_connections=1)
            async with client(pool) as c:
                with pytest.raises(httpx.RemoteProtocolError, match=message):
                    await c.get(bad.url)
                assert (await c.get(good.url)).content == b"hello"  # the one slot is free again

    run(go())


def test_a_head_over_the_limit_is_refused_without_reading_on() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:  # headers forever
            writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await writer.drain()

    async def go() -> None:
        async with Server(handler) as s, client(Http11Transport()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="head over"):
                await c.get(s.url)

    run(go())


def test_a_server_that_stalls_is_a_read_timeout() -> None:
    async def go() -> None:
        async with Server(
            once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", close=False)
        ) as s:
            async with client(Http11Transport(), read=0.2) as c:
                with pytest.raises(httpx.ReadTimeout):
                    await c.get(s.url)
            s.release.set()

    run(go())


def test_refused_connection_is_a_connect_error() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with client(Http11Transport()) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")

    run(go())


def test_header_that_would_split_the_request_is_refused_before_sending() -> None:
    async def go() -> None:
        async with Server(keep_alive()) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                request = c.build_request("GET", s.url)
                request.headers["X-Prompt"] = "a\r\nGET /evil HTTP/1.1"
                with pytest.raises(httpx.LocalProtocolError):
                    await c.send(request)
                assert (await c.get(s.url)).content == b"hello"
            assert [r[0] for r in s.requests] == [b"GET / HTTP/1.1"]

    run(go())


def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(response(b"first"))  # claims keep-alive, then closes at once
        await writer.drain()

    async def go() -> None:
        async with Server(handler) as s:
            pool = Http11Transport(keepalive_expiry=3600)  # only the close ends it
            async with client(pool) as c:
                assert (await c.get(s.url)).content == b"first"
                await until(lambda: pool.idle() == 0, what="the close seen")
                assert (await c.get(s.url)).content == b"first"
            assert pool.opened == 2

    run(go())


def test_idle_connections_expire() -> None:
    async def go() -> None:
        async with Server(keep_alive()) as s:
            pool = Http11Transport(keepalive_expiry=0.05)
            async with client(pool) as c:
                await c.get(s.url)
                loop = asyncio.get_running_loop()
                expired = loop.time() + 0.06
                await until(lambda: loop.time() > expired, what="expiry passed")
                await c.get(s.url)
            assert pool.opened == 2

    run(go())


# -- the pool


def test_the_pool_bounds_connections_and_queues_the_rest() -> None:
    async def go() -> None:
        async with Server(keep_alive(b"done", held=True)) as s:
            pool = Http11Transport(max_connections=2)
            async with client(pool) as c:
                calls = [asyncio.create_task(c.get(f"{s.url}/{n}")) for n in range(5)]
                await until(lambda: len(s.requests) == 2, what="two requests in")
                assert s.connections == 2
                s.release.set()
                answers = await asyncio.gather(*calls)
            assert [a.content for a in answers] == [b"done"] * 5
            assert s.connections == 2 and len(s.requests) == 5

    run(go())


def test_a_full_pool_is_a_pool_timeout() -> None:
    async def go() -> None:
        async with Server(keep_alive(b"late", held=True)) as s:
            pool = Http11Transport(max_connections=1)
            async with client(pool, pool=0.1) as c:
                first = asyncio.create_task(c.get(s.url))
                await until(lambda: len(s.requests) == 1, what="first request in")
                with pytest.raises(httpx.PoolTimeout):
                    await c.get(s.url)
                s.release.set()
                assert (await first).content == b"late"

    run(go())


def test_at_the_limit_an_idle_connection_to_another_host_makes_room() -> None:
    async def go() -> None:
        async with Server(keep_alive(b"a")) as a, Server(keep_alive(b"b")) as b:
            pool = Http11Transport(max_connections=1)
            async with client(pool) as c:
                got = [(await c.get(s.url)).content for s in (a, b, a)]
            assert got == [b"a", b"b", b"a"] and pool.opened == 3

    run(go())


def test_a_cancelled_request_frees_its_slot_and_its_socket() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhal")
        await reader.read()  # until the client closes its end

    async def go() -> None:
        async with Server(handler) as slow, Server(keep_alive()) as good:
            pool = Http11Transport(max_connections=1)
            async with client(pool) as c:
                task = asyncio.create_task(c.get(slow.url))
                await until(lambda: len(slow.requests) == 1, what="request in")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert (await c.get(good.url)).content == b"hello"
            await until(lambda: slow.closed == 1, what="the server saw the close")

    run(go())


def test_an_abandoned_stream_closes_its_connection() -> None:
    async def go() -> None:
        async with Server(keep_alive(b"z" * 100_000)) as s:
            pool = Http11Transport()
            async with client(pool) as c:
                async with c.stream("GET", s.url) as r:
                    async for _ in r.aiter_raw():
                        break  # the rest is never read: the socket cannot serve another request
                assert (await c.get(s.url)).content == b"z" * 100_000
            assert pool.opened == 2

    run(go())


# -- bodies both ways


def test_large_body_streams_through_a_slow_reader_intact() -> None:
    blob = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def go() -> None:
        async with Server(keep_alive(blob)) as s, client(Http11Transport()) as c:
            digest, size = hashlib.sha256(), 0
            async with c.stream("GET", s.url) as r:
                async for part in r.aiter_raw():
                    digest.update(part)
                    size += len(part)
                    await asyncio.sleep(0)  # a consumer slower than loopback
            assert size == len(blob) and digest.digest() == hashlib.sha256(blob).digest()

    run(go())


def test_request_bodies_fixed_and_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"alpha-", b"", b"beta-", b"gamma"):
            yield part

    async def go() -> None:
        async with Server(keep_alive(b"ok")) as s:
            async with client(Http11Transport()) as c:
                await c.post(s.url, json={"prompt": "dance"})
                await c.post(s.url, content=parts())
                await c.post(s.url, files={"file": ("a.bin", b"\x00" * 70_000)})
            (_, h1, b1), (_, h2, b2), (_, h3, b3) = s.requests
            assert b1 == b'{"prompt":"dance"}' and h1["content-length"] == str(len(b1))
            assert h2["transfer-encoding"] == "chunked" and b2 == b"alpha-beta-gamma"
            assert b"\x00" * 70_000 in b3 and h3["content-type"].startswith("multipart/form-data")

    run(go())


# -- TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    return cert_path, key_path


def test_tls_verified_against_the_given_roots_and_refused_otherwise(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def go() -> None:
        served = Server(keep_alive(b"secret"))
        served._server = await asyncio.start_server(
            lambda r, w: _serve(served, r, w), "127.0.0.1", 0, ssl=server_ctx
        )
        port = served._server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}/"
        trusting = Http11Transport(ssl_context=ssl.create_default_context(cafile=str(cert)))
        async with client(trusting) as c:
            assert (await c.get(url)).content == b"secret"
            assert (await c.get(url)).content == b"secret"
        assert trusting.opened == 1
        async with client(Http11Transport()) as c:  # certifi's roots: this cert is nobody's
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(url)
        served._server.close()

    run(go())


async def _serve(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        await server.handler(reader, writer, server)
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
