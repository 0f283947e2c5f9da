"""No silent stall: a provider that cannot be reached stops the batch, naming the host."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    job_entries,
    make_media,
    out_dir,
    state_rows,
    write_manifest,
)

from pipeline.errors import UnreachableError
from pipeline.run.outage import Outage, WatchingTransport


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_streak_without_answers_becomes_an_outage() -> None:
    now = [100.0]
    outage = Outage(lambda: now[0], limit=60)
    outage.failed(UnreachableError("refused", host="api.example"))
    now[0] += 59
    outage.failed(UnreachableError("timed out", host="api.example"))
    assert outage.verdict() is None
    now[0] += 2
    verdict = outage.verdict()
    assert verdict is not None and "api.example" in verdict and "timed out" in verdict
    outage.answered()  # any answer ends the streak
    assert outage.verdict() is None


def test_only_the_providers_silence_opens_a_streak() -> None:
    """Refused counts; our own pool being full or our own request being unsendable does not,
    and neither does a host that is not the provider's."""
    faults: dict[str, Exception] = {
        "/refused": httpx.ConnectError("refused"),
        "/pool": httpx.PoolTimeout("pool busy"),
        "/header": httpx.LocalProtocolError("illegal header"),
    }

    def fail(request: httpx.Request) -> httpx.Response:
        raise faults[request.url.path]

    async def go() -> list[object]:
        outage = Outage(lambda: 0.0)
        watching = WatchingTransport(httpx.MockTransport(fail), outage, {"api.example"})
        seen = []
        async with httpx.AsyncClient(transport=watching) as client:
            for url in ("https://api.example/pool", "https://api.example/header",
                        "https://cdn.example/refused", "https://api.example/refused"):  # fmt: skip
                with pytest.raises(httpx.TransportError):
                    await client.get(url)
                seen.append(outage.streak and outage.streak.failures)
        return seen

    assert asyncio.run(go()) == [None, None, None, 1]


def test_unreachable_provider_stops_the_batch_naming_the_host(media: Media, tmp_path: Path) -> None:
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    provider = {"name": "kie", "base_url": base, "upload_url": base, "poll_interval": 0.1}
    manifest = write_manifest(tmp_path / "m", provider, job_entries("kie", None, media, ["a", "b"]))
    proc = cli("run", manifest, env=cli_env(MOTION_PIPELINE_OUTAGE_SECONDS="3"))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 3, said
    assert "provider unreachable" in said and "127.0.0.1" in said and "Traceback" not in said
    assert {r["state"] for r in state_rows(out_dir(manifest)).values()} == {"pending"}
    assert "provider unreachable" in (out_dir(manifest) / "run.log").read_text()
    # While it lasted, the display said what the batch waited for and when it would give up.
    assert "waiting: provider unreachable (127.0.0.1)" in proc.stderr
