"""report.html: escaping, atomic write, size at 5,000 jobs, real thumbnails, missing media."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from mediagen import ffmpeg, ffprobe, make_image, make_video

from pipeline.dataset.report import STRIP_GAP, THUMB_HEIGHT, write_report
from pipeline.dataset.report_data import ReportJob, ReportTotals
from pipeline.errors import ConfigError
from pipeline.jobs import State
from pipeline.media.tools import MediaTools, find_tools

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(2)>",
    "</article></main><script>alert(3)</script>",
]


class Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def named(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == name]


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    return tags


@pytest.fixture(scope="module")
def tools() -> MediaTools:
    return find_tools()


def settings(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mode": "std",
        "character_orientation": "video",
        "keep_original_sound": True,
        "prompt": "",
        "trim": {"start": 0, "end": None},
    }
    return {**base, **over}


def job(job_id: str = "alice-salsa", state: State = State.DONE, **over: Any) -> ReportJob:
    values: dict[str, Any] = {
        "id": job_id,
        "state": state,
        "image": "images/alice.png",
        "video": "videos/salsa.mp4",
        "image_path": None,
        "video_path": None,
        "output_path": None,
        "settings": settings(),
        "billed_seconds": 5.0,
        "duration": 5.04,
        "provider": "kie",
        "model": "kling-2.6/motion-control",
        "task_id": "0123456789abcdef0123456789abcdef",
        "error": None,
    }
    values.update(over)
    return ReportJob(**values)


TOTALS = ReportTotals(
    done=1,
    failed=0,
    needs_attention=0,
    other=0,
    seconds_billed=5.0,
    estimated_cost=0.35,
    currency="USD",
    wall_time_seconds=3723,
)


def test_every_user_string_is_escaped(tmp_path: Path, tools: MediaTools) -> None:
    jobs = [
        job(
            bad,
            State.FAILED if i % 2 else State.DONE,
            image=bad,
            video=bad,
            settings=settings(prompt=f"{i} {bad}", mode=bad, extra=bad),
            provider=bad,
            model=bad,
            task_id=bad,
            error=bad,
            output_path=tmp_path / "videos" / f"{bad}.mp4",
        )
        for i, bad in enumerate(HOSTILE)
    ]
    totals = dataclasses.replace(TOTALS, currency=HOSTILE[1])
    page = write_report(tmp_path, jobs, totals, tools=tools, title=HOSTILE[0]).read_text()

    for bad in HOSTILE:
        assert bad not in page
    tags = parse(page)
    # The only script is ours, no injected element or event handler exists, one card per job.
    assert len(tags.named("script")) == 1
    assert tags.named("img") == [] and tags.named("svg") == []
    assert not [a for _, attrs in tags.tags for a in attrs if a.startswith("on")]
    assert len(tags.named("article")) == len(HOSTILE)
    # The text is still there for the reader, as text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&#x27;&gt;&lt;svg onload=alert(2)&gt;" in page
    # Links are relative and percent-encoded, so a hostile file name cannot become a scheme.
    hrefs = [a["href"] for a in tags.named("a")]
    assert len(hrefs) == len(HOSTILE)
    assert all(h and h.startswith("videos/%") and ":" not in h for h in hrefs)


def test_csp_allows_only_the_page_own_script_and_style(tmp_path: Path, tools: MediaTools) -> None:
    page = write_report(tmp_path, [job()], TOTALS, tools=tools, title="t").read_text()
    metas = parse(page).named("meta")
    (csp,) = [m["content"] for m in metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp is not None
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src 'sha256-" in csp
    assert "http:" not in csp and "https:" not in csp


def test_write_replaces_the_page_atomically(tmp_path: Path, tools: MediaTools) -> None:
    first = write_report(tmp_path, [job()], TOTALS, tools=tools, title="first run")
    second = write_report(tmp_path, [job(), job("bob")], TOTALS, tools=tools, title="second run")

    assert first == second == tmp_path / "report.html"
    text = second.read_text()
    assert "second run" in text and "first run" not in text
    assert text.endswith("</html>\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "report.html"]
    assert second.stat().st_mode & 0o044 == 0o044  # readable by whoever opens the page


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, tools: MediaTools) -> None:
    (tmp_path / "report.html").mkdir()  # the rename cannot replace a directory

    with pytest.raises(ConfigError, match=r"cannot write .*report\.html"):
        write_report(tmp_path, [job()], TOTALS, tools=tools, title="t")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "report.html"]
    assert list((tmp_path / "report.html").iterdir()) == []


def test_5000_jobs_without_media_stay_under_2_mb(tmp_path: Path, tools: MediaTools) -> None:
    gone = tmp_path / "not-generated-yet"
    jobs = []
    for i in range(5000):
        person, dance = f"person_{i % 50:04d}", f"dance_{i // 50:04d}"
        job_id = f"{person}-{dance}-{'pro' if i % 2 else 'std'}"
        failed = i % 10 == 0
        jobs.append(
            job(
                job_id,
                State.FAILED if failed else State.DONE,
                image=f"images/{person}.png",
                video=f"videos/{dance}.mp4",
                image_path=gone / f"{person}.png",
                video_path=gone / f"{dance}.mp4",
                output_path=None if failed else gone / f"{job_id}.mp4",
                settings=settings(mode="pro" if i % 2 else "std", prompt="a person dancing"),
                error="Content moderation: the image was flagged (code 422)" if failed else None,
            )
        )

    page_path = write_report(tmp_path, jobs, TOTALS, tools=tools, title="dance-set-v1")

    size = page_path.stat().st_size
    assert size < 2_000_000, f"{size} bytes"
    tags = parse(page_path.read_text())
    assert len(tags.named("article")) == 5000
    assert tags.named("img") == []  # nothing to show: placeholders, not broken images
    assert list((tmp_path / "report" / "thumbs").iterdir()) == []


def probe_size(path: Path) -> tuple[int, int]:
    out = subprocess.run(
        [ffprobe(), "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "json", str(path)],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    stream = json.loads(out)["streams"][0]
    return stream["width"], stream["height"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    return {
        "image": make_image(root / "alice.png", 320, 480),
        "clip": make_video(root / "salsa.mp4", 3, 240, 320, audio=False),
        "result": make_video(root / "out" / "videos" / "alice.mp4", 3, 240, 320, audio=False),
    }


def done_job(media: dict[str, Path], **over: Any) -> ReportJob:
    values: dict[str, Any] = {
        "image_path": media["image"],
        "video_path": media["clip"],
        "output_path": media["result"],
        "duration": None,  # make the report measure it
    }
    return job("alice", **{**values, **over})


def test_thumbnails_are_extracted_from_real_media(
    media: dict[str, Path], tools: MediaTools
) -> None:
    out = media["result"].parent.parent
    page = write_report(out, [done_job(media)], TOTALS, tools=tools, title="t")

    srcs = [img["src"] for img in parse(page.read_text()).named("img")]
    assert len(srcs) == 3
    files = [out / str(src) for src in srcs]
    assert all(f.is_file() and f.parent == out / "report" / "thumbs" for f in files)
    image, driving, strip = (probe_size(f) for f in files)
    assert image[1] == driving[1] == strip[1] == THUMB_HEIGHT
    assert abs(image[0] - 320 * THUMB_HEIGHT / 480) <= 2
    assert driving[0] == 120
    assert strip[0] == 4 * 120 + 3 * STRIP_GAP  # four frames side by side
    assert all(img.get("loading") == "lazy" for img in parse(page.read_text()).named("img"))
    assert 'href="videos/alice.mp4"' in page.read_text()


def pixel(path: Path, x: int, y: int) -> tuple[int, int, int]:
    raw = subprocess.run(
        [ffmpeg(), "-v", "error", "-i", str(path), "-vf", f"format=rgb24,crop=1:1:{x}:{y}",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return raw[0], raw[1], raw[2]


def test_transparent_images_are_shown_on_white(tmp_path: Path, tools: MediaTools) -> None:
    # Fully transparent red around an opaque blue body: the red must not show.
    cutout = tmp_path / "cutout.png"
    src = "color=c=red@0.0:s=320x480,format=rgba,drawbox=x=80:y=80:w=160:h=320:c=blue:t=fill:replace=1"
    subprocess.run(
        [ffmpeg(), "-v", "error", "-f", "lavfi", "-i", src, "-frames:v", "1", str(cutout)],
        check=True,
    )
    write_report(tmp_path, [job(image_path=cutout)], TOTALS, tools=tools, title="t")

    (thumb,) = (tmp_path / "report" / "thumbs").iterdir()
    assert all(c > 235 for c in pixel(thumb, 2, 2)), pixel(thumb, 2, 2)
    r, g, b = pixel(thumb, 53, 80)
    assert b > 200 and r < 60 and g < 60


def test_thumbnails_are_cached_until_the_source_changes(
    media: dict[str, Path], tools: MediaTools, tmp_path: Path
) -> None:
    result = make_video(tmp_path / "videos" / "alice.mp4", 3, 240, 320, audio=False)
    jobs = [done_job(media, output_path=result)]
    write_report(tmp_path, jobs, TOTALS, tools=tools, title="t")
    thumbs = sorted((tmp_path / "report" / "thumbs").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in thumbs}

    write_report(tmp_path, jobs, TOTALS, tools=tools, title="t")
    assert {p.name: p.stat().st_mtime_ns for p in thumbs} == before

    newer = max(before.values()) + 5_000_000_000
    os.utime(result, ns=(newer, newer))  # a re-generated result must not keep its old picture
    write_report(tmp_path, jobs, TOTALS, tools=tools, title="t")
    after = {p.name: p.stat().st_mtime_ns for p in thumbs}
    changed = [name for name in before if after[name] != before[name]]
    assert [n[0] for n in changed] == ["r"]


def test_missing_and_unreadable_media_become_placeholders(
    tmp_path: Path, tools: MediaTools, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = tmp_path / "videos" / "broken.mp4"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not an mp4 file" * 100)
    jobs = [
        job("remote", image="https://example.invalid/a.png", image_path=None),
        job("missing", image_path=tmp_path / "gone.png", video_path=tmp_path / "gone.mp4"),
        job("broken", output_path=garbage, video_path=garbage),
        job("waiting", State.PENDING, billed_seconds=None, duration=None, task_id=None),
    ]

    page = write_report(tmp_path, jobs, TOTALS, tools=tools, title="t").read_text()

    tags = parse(page)
    assert len(tags.named("article")) == 4
    assert tags.named("img") == []
    assert page.count("<i>no image</i>") == 4 and page.count("<i>no result</i>") == 4
    assert "placeholder thumbnails" in caplog.text and "gone.png" in caplog.text
    assert 'href="videos/broken.mp4"' in page  # the file is linked even if it will not play
    assert list((tmp_path / "report" / "thumbs").iterdir()) == []  # no half-written thumbnail


def test_failed_and_needs_attention_jobs_show_their_reason(
    tmp_path: Path, tools: MediaTools
) -> None:
    jobs = [
        job("ok"),
        job("flagged", State.FAILED, error="moderation: image rejected"),
        job("unsure", State.NEEDS_ATTENTION, error="create timed out after send; resolve it"),
        job("silent", State.FAILED, error=None),
        job("leaky", State.FAILED, error="401 for Bearer abcdefghijklmnop1234"),
    ]
    page = write_report(tmp_path, jobs, TOTALS, tools=tools, title="t").read_text()

    assert page.count("<p class=err>") == 4
    assert "<p class=err>moderation: image rejected</p>" in page
    assert "<p class=err>create timed out after send; resolve it</p>" in page
    assert "<p class=err>no reason was recorded</p>" in page
    assert "abcdefghijklmnop1234" not in page


def test_totals_and_shared_settings_open_the_page(tmp_path: Path, tools: MediaTools) -> None:
    jobs = [job("a", settings=settings(mode="pro")), job("b")]
    totals = ReportTotals(7, 2, 1, 3, 1234.5, 98.76, "EUR", 3723.4)
    page = write_report(tmp_path, jobs, totals, tools=tools, title="set").read_text()

    head = page[page.index('<dl class="tot">') : page.index("<main")]
    for text in ["<dd>7</dd>", "<dd>2</dd>", "<dd>1</dd>", "<dd>3</dd>", "1234.5 s", "98.76 EUR"]:
        assert text in head
    assert "<dd>1:02:03</dd>" in head
    # What every job shares is said once at the top; what varies is on each card.
    assert "model <b>kling-2.6/motion-control</b>" in head and "mode <b>" not in head
    cards = page[page.index("<main") :]
    assert "kling-2.6" not in cards and "mode <b>pro</b>" in cards and "mode <b>std</b>" in cards


def test_unknown_totals_show_a_dash(tmp_path: Path, tools: MediaTools) -> None:
    totals = dataclasses.replace(TOTALS, estimated_cost=None, wall_time_seconds=None)
    page = write_report(tmp_path, [], totals, tools=tools, title="empty").read_text()

    assert page.count("<dd>—</dd>") == 2
    assert parse(page).named("article") == []
