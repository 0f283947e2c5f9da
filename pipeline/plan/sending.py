"""What the provider will receive for each job: the very files (or URLs), their hashes and sizes,
and the prepared clip's measured length, which is what the provider bills.

Planning prepares the local inputs that need it (trim, convert, scale, strip audio) into the
content-addressed cache, once per source and recipe however many jobs share them, and measures
the results with ffprobe. So ``plan`` estimates the bill of the clips that will really be sent,
preparation problems show before anything is spent, and the run sends these files as they are.
A URL input that needs preparation is fetched and prepared by the run; its seconds are the
recipe's until then (``measured`` is False).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BatchStopped, MediaError
from pipeline.media.hashing import FileHasher
from pipeline.media.prepare import prepare
from pipeline.media.probe import MediaInfo, probe_file
from pipeline.media.recipes import MediaPlan
from pipeline.media.threads import run_bounded
from pipeline.media.tools import MediaTools


@dataclass(frozen=True)
class Sent:
    """One input as the provider receives it."""

    path: str | None
    """The local file that is uploaded (the source itself, or its prepared copy); None for a
    URL passed through."""
    url: str | None
    sha256: str
    """Content hash of what is sent; a URL passed through is identified by its text."""
    size: int
    duration: float | None
    prepared: bool
    """Made by preparation (its bytes are not the source's)."""
    content_type: str = "application/octet-stream"
    """From what the bytes are (probed, or the recipe's format), never from the file name."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
}


def content_type(detected: str, path: str | None = None) -> str:
    """The MIME type of a detected format (``jpeg``, ``mp4``...), else of the file's suffix."""
    suffix = Path(path).suffix.lstrip(".").lower() if path else ""
    return CONTENT_TYPES.get(detected) or CONTENT_TYPES.get(suffix, "application/octet-stream")


@dataclass(frozen=True)
class SentMedia:
    image: Sent | None
    video: Sent | None
    """None for an input the run still has to fetch and prepare (a URL that needs it)."""
    measured: bool

    @property
    def billed_seconds(self) -> float | None:
        """The prepared clip's own length: the provider's bill."""
        if self.video is None or self.video.duration is None:
            return None
        return round(self.video.duration, 3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image.as_dict() if self.image else None,
            "video": self.video.as_dict() if self.video else None,
        }


def as_is(info: MediaInfo, sha256: str, *, url: str | None) -> Sent:
    """An input sent unchanged."""
    return Sent(
        path=None if url else info.source,
        url=url,
        sha256=sha256,
        size=info.size_bytes,
        duration=info.duration,
        prepared=False,
        content_type=content_type(info.format, info.source),
    )


def prepare_all(
    plans: list[MediaPlan],
    tools: MediaTools,
    folder: Path,
    hasher: FileHasher,
) -> dict[str, tuple[Path, Path, float | None] | MediaError]:
    """Prepare every plan (each distinct source and recipe once), keyed by ``job_id``.

    A job whose media cannot be prepared gets its MediaError; a full disk stops (BatchStopped).
    """
    unique: dict[str, MediaPlan] = {}
    for plan in plans:
        unique.setdefault(_identity(plan, hasher), plan)
    keys = list(unique)
    done = _run(list(unique.values()), tools, folder, hasher)
    by_identity = dict(zip(keys, done, strict=True))
    return {plan.job_id: by_identity[_identity(plan, hasher)] for plan in plans}


def _run(
    plans: list[MediaPlan], tools: MediaTools, folder: Path, hasher: FileHasher
) -> list[tuple[Path, Path, float | None] | MediaError]:
    import asyncio

    stopped: list[BatchStopped] = []

    def one(plan: MediaPlan) -> tuple[Path, Path, float | None]:
        try:
            got = prepare(plan, tools, folder, hasher=hasher)
        except BatchStopped as exc:
            stopped.append(exc)
            raise MediaError(str(exc), job_id=plan.job_id) from None
        return got.image, got.video, got.video_duration

    results = asyncio.run(run_bounded(plans, one))
    if stopped:
        raise stopped[0]
    return results


def _identity(plan: MediaPlan, hasher: FileHasher) -> str:
    """Source content and recipes: two jobs with the same identity send the same files."""
    image = plan.image_info.source if plan.image_info else ""
    video = plan.video_info.source if plan.video_info else ""
    return "\x1f".join((image, plan.image.text, video, plan.video.text))


def prepared(
    path: Path, hasher: FileHasher, tools: MediaTools, *, duration: float | None, fmt: str
) -> Sent:
    """A prepared file as sent: hashed (cached by stat), measured when its length is unknown.
    ``fmt`` is the recipe's output format (``mp4``, ``png``, ``jpeg``)."""
    if duration is None and path.suffix == ".mp4":
        duration = probe_file(path, tools).duration
    return Sent(
        path=str(path),
        url=None,
        sha256=hasher.hash(path),
        size=path.stat().st_size,
        duration=duration,
        prepared=True,
        content_type=content_type(fmt, str(path)),
    )
