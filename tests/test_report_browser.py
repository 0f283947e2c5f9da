"""report.html as a person sees it: rendered by headless Chromium, driven over WebDriver.

Chromium and chromedriver come from Debian (``chromium``, ``chromium-driver``; ``.ci/run``
installs them). chromedriver is spoken to over its loopback HTTP API with httpx, so the test
needs no browser-automation package. Without Chromium the test is skipped locally, visibly, and
fails under CI.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mediagen import make_image, make_video

from pipeline.dataset.report import write_report
from pipeline.dataset.report_data import ReportJob, ReportTotals
from pipeline.jobs import State
from pipeline.media.tools import find_tools

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
]
READY_WITHIN = 60.0  # seconds; a shared 2-core machine can be slow to start a browser


@pytest.fixture
def chrome() -> tuple[str, str]:
    """(chromium, chromedriver); asked for first, so a skip costs no media generation."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "headless Chromium not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{why}: required under CI")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Browser:
    """The few WebDriver commands this test needs."""

    def __init__(self, http: httpx.Client, session: str) -> None:
        self.http = http
        self.session = session

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/session/{self.session}{path}", json=body)
        response.raise_for_status()
        return response.json()["value"]

    def open(self, page: Path) -> None:
        self._call("POST", "/url", {"url": page.as_uri()})

    def js(self, script: str) -> Any:
        return self._call("POST", "/execute/sync", {"script": script, "args": []})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path

    def wait_for(self, script: str) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while not self.js(script):
            if time.monotonic() > deadline:
                raise AssertionError(f"page never satisfied: {script}")
            time.sleep(0.1)


@contextmanager
def browser(
    chrome: tuple[str, str], tmp_path: Path, *, javascript: bool = True
) -> Iterator[Browser]:
    chromium, driver = chrome
    port = free_port()
    log = (tmp_path / "chromedriver.log").open("wb")
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=log, stderr=log)
    # trust_env=False: no proxy variable may route this loopback traffic anywhere else.
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            try:
                if http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"chromedriver did not start; see {log.name}")
            time.sleep(0.1)
        profile = tmp_path / f"profile-{'js' if javascript else 'nojs'}"
        options: dict[str, Any] = {
            "binary": chromium,
            "args": [*CHROME_FLAGS, f"--user-data-dir={profile}"],
        }
        if not javascript:
            options["prefs"] = {"profile.managed_default_content_settings.javascript": 2}
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        created = http.post("/session", json=caps)
        created.raise_for_status()
        session = Browser(http, created.json()["value"]["sessionId"])
        try:
            yield session
        finally:
            http.delete(f"/session/{session.session}")
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """A sandbox-sized batch: two results generated, one job refused by moderation."""
    media = tmp_path / "media"
    out = tmp_path / "out"
    image = make_image(media / "alice.png", 320, 480)
    clip = make_video(media / "salsa.mp4", 3, 240, 320, audio=False)
    results = {
        name: make_video(out / "videos" / f"{name}.mp4", 3, 240, 320, audio=False)
        for name in ("alice-salsa", "bob-salsa")
    }
    common: dict[str, Any] = {
        "image": "images/alice.png",
        "video": "videos/salsa.mp4",
        "image_path": image,
        "video_path": clip,
        "settings": {"mode": "std", "character_orientation": "video", "prompt": "dance"},
        "provider": "sandbox",
        "model": "kling-2.6/motion-control",
    }
    jobs = [
        ReportJob(
            id=name,
            state=State.DONE,
            output_path=path,
            billed_seconds=3.0,
            duration=3.0,
            task_id=f"task-{name}",
            error=None,
            **common,
        )
        for name, path in results.items()
    ]
    jobs.append(
        ReportJob(
            id="carol-salsa",
            state=State.FAILED,
            output_path=None,
            billed_seconds=None,
            duration=None,
            task_id="task-carol",
            error="Content moderation: the image was flagged <nsfw>",
            **common,
        )
    )
    totals = ReportTotals(2, 1, 0, 0, 6.0, 0.42, "USD", 125.0)
    return write_report(out, jobs, totals, tools=find_tools(), title="sandbox-batch")


VISIBLE_IDS = """
return Array.prototype.filter.call(document.querySelectorAll('#cards > article'),
  function (e) { return e.getClientRects().length > 0; })
  .map(function (e) { return e.querySelector('h2').firstChild.nodeValue; });
"""


def test_a_person_sees_totals_cards_thumbnails_and_reasons(
    chrome: tuple[str, str], report: Path, tmp_path: Path
) -> None:
    with browser(chrome, tmp_path) as b:
        b.open(report)
        b.wait_for("return Array.prototype.every.call(document.images, i => i.complete);")
        shot = b.screenshot(tmp_path / "report.png")

        totals = dict(b.js("return Array.from(document.querySelectorAll('.tot div'), d => "
                           "[d.querySelector('dt').innerText, d.querySelector('dd').innerText]);"))  # fmt: skip
        assert totals["done"] == "2" and totals["failed"] == "1"
        assert totals["needs attention"] == "0"
        assert totals["seconds billed"] == "6.0 s" and totals["estimated cost"] == "0.42 USD"
        assert totals["wall time"] == "0:02:05"

        assert b.js(VISIBLE_IDS) == ["alice-salsa", "bob-salsa", "carol-salsa"]

        images = b.js("""return Array.from(document.querySelectorAll('#cards > article:first-child img'),
            i => [i.alt, i.naturalWidth, i.getBoundingClientRect().width,
                  i.getBoundingClientRect().bottom <= innerHeight]);""")  # fmt: skip
        assert [alt for alt, *_ in images] == ["image", "driving frame", "result frames"]
        assert all(
            natural > 0 and shown > 0 and on_screen for _, natural, shown, on_screen in images
        )

        reason = b.js("""var e = document.querySelector('#cards > article:last-child .err');
            return [e.innerText, e.getBoundingClientRect().height];""")  # fmt: skip
        assert reason[0] == "Content moderation: the image was flagged <nsfw>"
        assert reason[1] > 0

        links = b.js("return Array.from(document.querySelectorAll('#cards a'), a => a.href);")
        assert [Path(httpx.URL(link).path).name for link in links] == [
            "alice-salsa.mp4",
            "bob-salsa.mp4",
        ]
        assert all(Path(httpx.URL(link).path).is_file() for link in links)

        # The controls: filter by state, sort by job id.
        b.js("var f = document.getElementById('f'); f.value = 'failed';"
             "f.dispatchEvent(new Event('change'));")  # fmt: skip
        assert b.js(VISIBLE_IDS) == ["carol-salsa"]
        assert b.js("return document.getElementById('n').innerText;") == "1 of 3 shown"
        b.js("var f = document.getElementById('f'), o = document.getElementById('o');"
             "f.value = ''; f.dispatchEvent(new Event('change'));"
             "o.value = 'd'; o.dispatchEvent(new Event('change'));")  # fmt: skip
        assert b.js(VISIBLE_IDS) == ["carol-salsa", "bob-salsa", "alice-salsa"]

    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_the_page_reads_without_javascript(
    chrome: tuple[str, str], report: Path, tmp_path: Path
) -> None:
    with browser(chrome, tmp_path, javascript=False) as b:
        b.open(report)
        b.screenshot(tmp_path / "report-nojs.png")
        # WebDriver's own scripts still run; the page's script does not.
        assert b.js("return document.getElementById('n').innerText;") == ""
        assert b.js("return document.getElementById('bar').getClientRects().length;") == 0
        assert b.js(VISIBLE_IDS) == ["alice-salsa", "bob-salsa", "carol-salsa"]
        assert "flagged" in b.js("return document.querySelector('.err').innerText;")
