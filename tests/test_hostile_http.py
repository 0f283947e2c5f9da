"""A hostile or broken provider hurts one call, never the process: real sockets, byte by byte.

Each server here misbehaves on purpose (endless bodies, a zip bomb, a trickle, garbage, ids no
one can store) and every outcome must be an error of the pipeline's own tree, classified so a
create is never sent twice and a poll never stalls.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from loopback import Loopback, endless, head, http_client, raw, redirect, refused_url, trickle

from pipeline.errors import (
    AmbiguousError,
    BadReplyError,
    ConfigError,
    PipelineError,
    UnreachableError,
)
from pipeline.jobs import Handle, InputRef, Job, JobSettings
from pipeline.providers import acedata, kie, kling
from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import Credentials, InputURLs, Provider, ProviderConfig
from pipeline.providers.common import MAX_TASK_ID, checked_task_id, task_id_problem
from pipeline.providers.http import MAX_REPLY_BYTES, Purpose, Reply, exchange
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider

T = TypeVar("T")
PROVIDERS = ["kie", "acedata", "kling"]
URLS = InputURLs("https://cdn.example/char.png", "https://cdn.example/dance.mp4")
KEY = "hostile-key-0123456789"
MODELS = {"kie": "kling-2.6/motion-control", "acedata": "kling-v2-6", "kling": "kling-v2-6"}
ACCEPTED: dict[str, Callable[[str], dict[str, Any]]] = {
    "kie": lambda tid: {"code": 200, "msg": "success", "data": {"taskId": tid}},
    "acedata": lambda tid: {"task_id": tid},
    "kling": lambda tid: {"code": 0, "message": "SUCCEED", "data": {"task_id": tid}},
}
RUNNING = {
    "kie": {"code": 200, "msg": "success", "data": {"taskId": "t", "state": "generating"}},
    "acedata": {"id": "t", "created_at": 1.0},
    "kling": {"code": 0, "data": {"task_id": "t", "task_status": "processing"}},
}


def job(kind: str) -> Job:
    ref_i, ref_v = (
        InputRef(URLS.image_url, url=URLS.image_url),
        InputRef(URLS.video_url, url=URLS.video_url),
    )
    return Job("alice-salsa", ref_i, ref_v, JobSettings(), provider=kind, model=MODELS[kind])


def make(kind: str, base_url: str, client: httpx.AsyncClient, **kw: Any) -> Provider:
    cfg = ProviderConfig(kind, MODELS[kind], base_url)
    if kind == "kie":
        return KieProvider(cfg, Credentials({"api_key": kw.pop("key", KEY)}), client, **kw)
    if kind == "acedata":
        return AceDataProvider(cfg, Credentials({"api_key": KEY}), client, **kw)
    return KlingProvider(cfg, Credentials({"access_key": KEY, "secret_key": KEY}), client, **kw)


def run(fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        # A generous per-read timeout: only the overall deadline may end a trickle.
        async with http_client(timeout=httpx.Timeout(10.0)) as client:
            return await fn(client)

    return asyncio.run(main())


def call(kind: str, base_url: str, purpose: str, **kw: Any) -> Any:
    async def go(client: httpx.AsyncClient) -> Any:
        provider = make(kind, base_url, client, **kw)
        if purpose == "create":
            return await provider.submit(job(kind), URLS, client_id="mp-1")
        return await provider.poll(Handle(kind, "t"))

    return run(go)


# --------------------------------------------------------------------------- scripted servers


def bomb(decoded: int) -> bytes:
    """gzip of ``decoded`` zero bytes, built without ever holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [packer.compress(zeros) for _ in range(decoded >> 20)]
    return b"".join([*parts, packer.flush()])


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


# --------------------------------------------------------------------------- size cap


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("purpose", "error"), [("poll", BadReplyError), ("create", AmbiguousError)]
)
def test_endless_body_is_abandoned_at_the_cap(kind: str, purpose: str, error: type) -> None:
    answer = json.dumps(ACCEPTED[kind]("t") if purpose == "create" else RUNNING[kind]).encode()
    with Loopback() as srv:
        srv.push(endless(answer, 64 * 1024 * 1024))
        with pytest.raises(error, match=f"over the {MAX_REPLY_BYTES} byte limit") as caught:
            call(kind, srv.base_url, purpose)
    assert ("job alice-salsa" if purpose == "create" else "task t") in str(caught.value)


def test_declared_length_over_the_cap_is_refused_before_reading() -> None:
    # The server announces 10 GiB and then sends nothing: waiting for it would end in a timeout.
    hang = threading.Event()

    def script(conn: socket.socket) -> None:
        conn.sendall(head(Content_Length=str(10 * 1024**3)))
        hang.wait(30)

    with Loopback() as srv:
        srv.push(script)
        try:
            with pytest.raises(BadReplyError, match="over the 4194304 byte limit"):
                call("kie", srv.base_url, "poll")
        finally:
            hang.set()


@pytest.mark.parametrize("kind", ["endless", "gzip-bomb"])
def test_memory_stays_near_the_cap(kind: str) -> None:
    cap = 1024 * 1024
    script = (
        endless(b"{}", 32 * 1024 * 1024)
        if kind == "endless"
        else raw(bomb(64 * 1024 * 1024), Content_Encoding="gzip")
    )

    async def go(client: httpx.AsyncClient) -> Reply:
        return await exchange(client, "GET", srv.base_url, what="probe", purpose="query",
                              secrets=[], max_bytes=cap)  # fmt: skip

    with Loopback() as srv:
        srv.push(script)
        tracemalloc.start()
        try:
            with pytest.raises(BadReplyError, match=f"over the {cap} byte limit"):
                run(go)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * cap, f"peak {peak} bytes for a {cap} byte cap"


# --------------------------------------------------------------------------- deadline


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "status-line"])
def test_trickling_server_cannot_stall_a_poll(
    kind: str, headers_too: bool, stop: threading.Event
) -> None:
    answer = json.dumps(RUNNING[kind]).encode()
    with Loopback() as srv:
        srv.push(trickle(answer + b" " * 100_000, 0.01, stop, headers_too=headers_too))
        with pytest.raises(UnreachableError, match=r"no complete answer within 0\.5 s") as caught:
            call(kind, srv.base_url, "poll", deadlines={"query": 0.5})
    assert caught.value.host == "127.0.0.1"


@pytest.mark.parametrize("kind", PROVIDERS)
def test_trickling_create_is_ambiguous(kind: str, stop: threading.Event) -> None:
    answer = json.dumps(ACCEPTED[kind]("t")).encode()
    with Loopback() as srv:
        srv.push(trickle(answer + b" " * 100_000, 0.01, stop))
        with pytest.raises(AmbiguousError, match="job alice-salsa: connection failed after"):
            call(kind, srv.base_url, "create", deadlines={"create": 0.5})
        assert len(srv.requests) == 1  # it was sent: never blindly again


@pytest.mark.parametrize("kind", PROVIDERS)
def test_refused_poll_is_unreachable_with_the_host_only(kind: str) -> None:
    with pytest.raises(UnreachableError) as caught:
        call(kind, refused_url().replace("://", "://someone:hunter2@"), "poll")
    assert caught.value.host == "127.0.0.1"
    assert "hunter2" not in str(caught.value)


# --------------------------------------------------------------------------- garbage


GARBAGE = {
    "not-utf8": raw(b'{"code": 200, "data": {"state": "\xff\xfe"}}'),
    "nested": raw(b"[" * 200_000),
    "truncated-deflate": raw(
        zlib.compress(b'{"code": 200}' * 100)[:-20], Content_Encoding="deflate"
    ),
    "corrupt-gzip": raw(b"\x1f\x8bnot gzip at all", Content_Encoding="gzip"),
    "unknown-encoding": raw(b"{}", Content_Encoding="br"),
    "html": raw(b"<html>maintenance</html>"),
}


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_is_a_bad_reply_for_polls_and_ambiguous_for_creates(kind: str, name: str) -> None:
    with Loopback() as srv:
        srv.push(GARBAGE[name], GARBAGE[name])
        with pytest.raises(BadReplyError):
            call(kind, srv.base_url, "poll")
        with pytest.raises(AmbiguousError):
            call(kind, srv.base_url, "create")


@pytest.mark.parametrize("kind", PROVIDERS)
def test_redirects_are_answers_not_second_requests(kind: str) -> None:
    with Loopback() as srv:
        srv.push(redirect("/elsewhere"), redirect("/elsewhere"))
        with pytest.raises(AmbiguousError):
            call(kind, srv.base_url, "create")
        with pytest.raises(BadReplyError):
            call(kind, srv.base_url, "poll")
        assert len(srv.requests) == 2  # nothing was sent to /elsewhere


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("base", ["http://127.0.0.1:99999", "http://[::1", "ftp://127.0.0.1"])
def test_impossible_base_url_is_a_config_error(kind: str, base: str) -> None:
    for purpose in ("poll", "create"):
        with pytest.raises(ConfigError, match="bad provider URL"):
            call(kind, base, purpose)


def test_key_that_cannot_be_a_header_is_a_config_error_without_the_key() -> None:
    with Loopback() as srv:
        with pytest.raises(ConfigError, match="cannot encode the request") as caught:
            call("kie", srv.base_url, "poll", key="ключ-0123456789")
        assert srv.requests == []
    assert "ключ" not in str(caught.value)


# --------------------------------------------------------------------------- task ids


WEIRD_IDS = {
    "empty": "",
    "long": "x" * 10_000,
    "surrogate": "\ud800",
    "escape": "ok\x1b[2Jgone",
    "bidi": "abc\u202edef",
    "padded": " task-1 ",
    "newline": "task\n1",
}
PARSE_CREATE = {
    "kie": kie.parse_create,
    "acedata": acedata.parse_create,
    "kling": kling.parse_create,
}


def accepted_reply(kind: str, task_id: object) -> Reply:
    body = ACCEPTED[kind](task_id)  # type: ignore[arg-type]
    return Reply(200, body, json.dumps(body))


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("name", sorted(WEIRD_IDS))
def test_unusable_task_id_in_an_accepted_create_is_ambiguous(kind: str, name: str) -> None:
    value = WEIRD_IDS[name]
    with pytest.raises(AmbiguousError) as caught:
        PARSE_CREATE[kind](accepted_reply(kind, value), what=f"{kind} create for job j1")
    message = str(caught.value)
    assert "job j1: the task id in the answer is unusable" in message
    assert f"{len(value)} characters" in message
    assert "resolve" in message
    assert len(message) < 400  # at most 80 characters of the id, escaped
    message.encode("utf-8")  # printable: no lone surrogate left
    assert not any(ch in message for ch in "\x1b\u202e\n")


@pytest.mark.parametrize("kind", PROVIDERS)
def test_good_ids_pass_and_ints_become_strings(kind: str) -> None:
    parse = PARSE_CREATE[kind]
    assert parse(accepted_reply(kind, "task_kling-2.6_1"), what="w") == "task_kling-2.6_1"
    assert parse(accepted_reply(kind, 867283741759111202), what="w") == "867283741759111202"
    assert parse(accepted_reply(kind, "y" * MAX_TASK_ID), what="w") == "y" * MAX_TASK_ID
    for bad in (True, 1.5, ["t"], {"id": "t"}):
        with pytest.raises(AmbiguousError):
            parse(accepted_reply(kind, bad), what="w")


def test_validator_rules_and_redaction() -> None:
    assert task_id_problem("a b") is None  # inner spaces are an opaque id's business
    assert task_id_problem("x" * (MAX_TASK_ID + 1)) == f"it is longer than {MAX_TASK_ID} characters"
    with pytest.raises(AmbiguousError) as caught:
        checked_task_id(f"\x00{KEY}", what="w", secrets=[KEY])
    assert KEY not in str(caught.value) and "\\x00***" in str(caught.value)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_lone_surrogate_escape_over_the_wire(kind: str) -> None:
    body = json.dumps(ACCEPTED[kind]("@@")).replace("@@", "\\ud800").encode()
    with Loopback() as srv:
        srv.push(raw(body))
        with pytest.raises(AmbiguousError, match="lone surrogate") as caught:
            call(kind, srv.base_url, "create")
    assert "\\ud800" in str(caught.value)


def test_kling_lookup_validates_the_id_it_finds() -> None:
    found = {"code": 0, "data": {"task_id": "\x07", "task_info": {"external_task_id": "mp-1"},
                                 "task_status": "processing"}}  # fmt: skip
    with pytest.raises(AmbiguousError, match="control"):
        kling.parse_lookup(Reply(200, found, json.dumps(found)), "mp-1", what="kling lookup")


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("kie", {"code": 200, "data": {"taskId": "someone-else", "state": "generating"}}),
        ("acedata", {"id": "someone-else", "created_at": 1.0}),
        ("kling", {"code": 0, "data": {"task_id": "someone-else", "task_status": "processing"}}),
    ],
)
def test_polls_keep_our_own_task_id(kind: str, body: dict[str, Any]) -> None:
    parse = {"kie": kie.parse_query, "acedata": acedata.parse_query, "kling": kling.parse_query}
    status = parse[kind](Reply(200, body, json.dumps(body)), "ours", what="w")
    assert status.task_id == "ours"


# --------------------------------------------------------------------------- nothing escapes


@pytest.mark.parametrize("purpose", ["create", "query", "upload"])
def test_exchange_raises_only_pipeline_errors(purpose: Purpose) -> None:
    async def go(client: httpx.AsyncClient, url: str) -> Reply | PipelineError:
        try:
            return await exchange(client, "POST", url, what="x", purpose=purpose, secrets=[],
                                  deadline=0.5, json={"a": 1})  # fmt: skip
        except PipelineError as exc:
            return exc

    with Loopback() as srv:
        srv.push(raw(b""))
        urls = [srv.base_url, "http://127.0.0.1:0/x", "http://h:-1/", "http://\x00/", "", "//h/x"]
        outcomes = [run(lambda c, u=url: go(c, u)) for url in urls]  # type: ignore[misc]
    assert isinstance(outcomes[0], Reply) and outcomes[0].status == 200
    assert all(isinstance(o, ConfigError) for o in outcomes[1:]), outcomes
