"""The environment's proxies: what the manifest's own error message tells a user to set.

A real forward proxy on loopback (absolute-form requests, forwarded over a real socket) stands
between a real ``run`` process and the sandbox; it records what passed through it.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    creates,
    job_entries,
    make_media,
    provider_block,
    sandbox,
    write_manifest,
)

from pipeline.transport.client import environment_proxies


class ForwardProxy(ThreadingHTTPServer):
    """Forwards ``GET http://host:port/path`` style requests and records ``(method, path)``."""

    daemon_threads = True

    def __init__(self) -> None:
        self.passed: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Forward)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardProxy

    def _forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        path = target.path + (f"?{target.query}" if target.query else "")
        upstream.request(self.command, path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.server.passed.append((self.command, target.path))
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.mark.parametrize(("no_proxy", "through"), [("", True), ("127.0.0.1", False)])
def test_a_run_goes_through_the_environments_proxy_unless_no_proxy_says(
    no_proxy: str, through: bool, proxy: ForwardProxy, media: Media, tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sandbox") as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m", provider_block("kie", srv), job_entries("kie", srv, media, ["a", "b"])
        )
        env = cli_env(HTTP_PROXY=proxy.url, NO_PROXY=no_proxy)
        proc = cli("run", manifest, env=env)
        assert proc.returncode == 0, proc.stderr
        assert creates(srv) == {"a": 1, "b": 1}
    paths = {path for _method, path in proxy.passed}
    if through:  # uploads, creates, polls and downloads all passed the proxy
        assert {
            "/api/file-stream-upload",
            "/api/v1/jobs/createTask",
            "/api/v1/jobs/recordInfo",
        } <= paths
        assert any(p.startswith("/results/") for p in paths), paths
    else:
        assert proxy.passed == []


def test_environment_proxies_follow_httpx_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    assert environment_proxies() == {}
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.corp:8080")
    monkeypatch.setenv("NO_PROXY", "localhost, 10.0.0.1,::1,.internal.corp,https://direct.example")
    assert environment_proxies() == {
        "https://": "http://proxy.corp:3128",
        "all://": "http://all.corp:8080",
        "all://localhost": None,
        "all://10.0.0.1": None,
        "all://[::1]": None,
        "all://*.internal.corp": None,
        "https://direct.example": None,
    }
    monkeypatch.setenv("NO_PROXY", "*")
    assert environment_proxies() == {}
