"""Whose output directory this is, and what to do when its state is gone or its videos changed.

Decided before anything is sent (README "How a run keeps money safe"):

- **One directory, one manifest.** The state records the manifest's ``name``; a run of another
  manifest in the same ``output_dir`` is refused (exit 2). A directory without a state must hold
  nothing this tool did not write: a reused folder with a hand-written ``metadata.jsonl`` or
  other files is refused, not clobbered.
- **A lost state is rebuilt, never re-paid.** A missing or empty ``state.sqlite`` beside results
  is rebuilt from ``metadata.jsonl`` (every result line names its job, key and task id); videos
  with no metadata to say what they are stop the run instead. A state file that is not ours is
  refused.
- **Results are checked.** A done job whose video is gone or changed (size, or content when its
  time stamp moved) is collected again from its task (the changed file is moved aside to
  ``videos/replaced/``, never deleted); without a task id it needs attention.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.dataset.names import METADATA_FILE, REPLACED_DIR, VIDEOS_DIR
from pipeline.errors import ConfigError, StateError
from pipeline.jobs import State
from pipeline.media.hashing import sha256_file
from pipeline.state.database import STATE_FILE
from pipeline.state.rows import OutputRow, RestoredJob
from pipeline.state.store import StateStore

#: What this tool writes into an output directory; anything else there is somebody else's.
OWN_ENTRIES = frozenset(
    {
        VIDEOS_DIR, METADATA_FILE, "cache", "report", "report.html", "run.log", "state.lock",
        STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", f"{STATE_FILE}-journal",
        "state.reserve", "motion-pipeline.lock.json",
    }
)  # fmt: skip
MANIFEST_KEY = "manifest_name"
"""The ``meta`` entry of the state that says which manifest owns the directory."""
_RESULT_KEYS = ("file_name", "job_id", "job_key", "task_id", "output_sha256")


@dataclass(frozen=True)
class Claim:
    """What the run found in its output directory and will do about it before sending."""

    restore: tuple[RestoredJob, ...] = ()
    """Jobs to rebuild the lost state from (empty when the state is fine or the dir is new)."""


def claim(output_dir: Path, name: str) -> Claim:
    """Check that ``output_dir`` may be used by manifest ``name``; raise ConfigError if not."""
    state = output_dir / STATE_FILE
    present = _entries(output_dir)
    try:
        has_state = state.is_file() and state.stat().st_size > 0
    except OSError:
        has_state = False
    if has_state:
        return Claim()
    foreign = sorted(e for e in present if e not in OWN_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ConfigError(
            f"output directory {output_dir} holds files motion-pipeline did not write ({shown}); "
            "nothing was sent. Point output_dir at an empty or new folder, or move them away"
        )
    metadata = output_dir / METADATA_FILE
    videos = _videos(output_dir / VIDEOS_DIR)
    if metadata.is_file() and metadata.stat().st_size > 0:
        return Claim(restore=tuple(_rebuild(output_dir, metadata)))
    if videos:
        lost = "missing" if not state.exists() else "empty"
        raise ConfigError(
            f"{output_dir / VIDEOS_DIR} holds {len(videos)} video(s) but the state is {lost} and "
            f"there is no {METADATA_FILE} to rebuild it from: running would pay for them again. "
            "Restore state.sqlite, or move the videos away to start over; nothing was sent"
        )
    return Claim()


def apply(store: StateStore, found: Claim, name: str) -> int:
    """Rebuild what was lost and record (or check) the owner; returns the jobs restored."""
    owner = store.meta(MANIFEST_KEY)
    if owner is not None and owner != name:
        raise ConfigError(
            f"output directory {store.path.parent} belongs to manifest {owner!r}, not {name!r}; "
            "nothing was sent. Give this manifest its own output_dir (two manifests in one "
            "folder would overwrite each other's metadata.jsonl)"
        )
    restored = store.restore_jobs(found.restore) if found.restore else 0
    if owner is None:
        store.set_meta(MANIFEST_KEY, name)
    return restored


def _entries(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read output directory {folder}: {exc.strerror}") from None


def _videos(folder: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return [e.name for e in os.scandir(folder) if e.name.endswith(".mp4") and e.is_file()]
    return []


def _rebuild(output_dir: Path, metadata: Path) -> Iterator[RestoredJob]:
    """Done jobs from metadata.jsonl; a line that is not one of ours refuses the directory."""
    try:
        lines = metadata.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {metadata} to rebuild the lost state: {exc}") from None
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _our_line(line)
        if row is None:
            raise ConfigError(
                f"{metadata}:{number}: not a line motion-pipeline wrote, and the state is lost: "
                "nothing was sent. Point output_dir at an empty or new folder, or restore "
                "state.sqlite"
            )
        job_id = str(row["job_id"])
        if job_id in seen:
            continue
        seen.add(job_id)
        yield _restored(row)


def _our_line(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in _RESULT_KEYS):
        return None
    return row


def _restored(row: Mapping[str, Any]) -> RestoredJob:
    facts: dict[str, Any] = {k: row.get(k) for k in ("width", "height", "fps", "codec")}
    facts["size"] = row.get("output_size")
    facts["restored"] = True  # the video is hashed against the metadata before it counts
    spec = {
        "image": row.get("source_image", ""),
        "video": row.get("driving_video", ""),
        "image_sha256": row.get("source_image_sha256"),
        "video_sha256": row.get("driving_video_sha256"),
        "settings": row.get("settings") or {},
        "provider": row.get("provider"),
        "model": row.get("model"),
        "steps": [],
        "billed_seconds": row.get("billed_seconds"),
        "line": 0,
        "restored_from": METADATA_FILE,
    }
    return RestoredJob(
        id=str(row["job_id"]),
        key=str(row["job_key"]),
        state=State.DONE,
        spec=spec,
        task_id=str(row["task_id"]),
        output=str(row["file_name"]),
        output_sha256=str(row["output_sha256"]),
        duration=_number(row.get("duration")),
        billed_seconds=_number(row.get("billed_seconds")),
        result=json.dumps(facts),
        submitted_at=row.get("submitted_at"),
        finished_at=row.get("finished_at"),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- results on disk


@dataclass(frozen=True)
class Damage:
    job_id: str
    why: str
    """``missing`` or ``changed``."""


@dataclass(frozen=True)
class ResultCheck:
    damaged: list[Damage]
    stamps: dict[str, int]
    """Job id -> the time stamp of a video found intact, to record (the next check is a stat)."""


def check_results(output_dir: Path, rows: Iterable[OutputRow]) -> ResultCheck:
    """Done jobs whose video is gone or is not the one downloaded (cheap: stat first).

    The content is hashed only when the size matches but the time stamp moved, or for a job
    rebuilt from metadata.jsonl. A job checked for the first time by this version has its time
    stamp recorded without a hash (hashing a 100,000-video dataset at once would take hours).
    """
    suspects: list[tuple[OutputRow, Path, int]] = []
    found: list[Damage] = []
    stamps: dict[str, int] = {}
    for row in rows:
        if not row.output:
            continue
        path = output_dir / row.output
        try:
            st = path.stat()
        except OSError:
            found.append(Damage(row.id, "missing"))
            continue
        facts = _facts(row.result)
        size = facts.get("size")
        if isinstance(size, int) and size != st.st_size:
            found.append(Damage(row.id, "changed"))
        elif facts.get("restored") or ("mtime_ns" in facts and facts["mtime_ns"] != st.st_mtime_ns):
            suspects.append((row, path, st.st_mtime_ns))
        elif "mtime_ns" not in facts:
            stamps[row.id] = st.st_mtime_ns
    if suspects:
        with ThreadPoolExecutor(max_workers=min(len(suspects), os.cpu_count() or 2)) as pool:
            hashes = list(pool.map(lambda s: _hash_or_none(s[1]), suspects))
        for (row, _path, mtime), digest in zip(suspects, hashes, strict=True):
            if digest != row.output_sha256:
                found.append(Damage(row.id, "changed" if digest else "missing"))
            else:
                stamps[row.id] = mtime
    return ResultCheck(found, stamps)


def with_stamp(result: str | None, mtime_ns: int) -> str:
    """The result facts with the video's time stamp recorded (and no longer "restored")."""
    facts = _facts(result)
    facts.pop("restored", None)
    facts["mtime_ns"] = mtime_ns
    return json.dumps(facts)


def _facts(result: str | None) -> dict[str, Any]:
    with contextlib.suppress(ValueError, TypeError):
        facts = json.loads(result or "{}")
        if isinstance(facts, dict):
            return facts
    return {}


def _hash_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def set_aside(output_dir: Path, output: str, *, tag: str = "changed") -> Path | None:
    """Move a result out of the way into ``videos/replaced/`` (never delete it); None when it
    is already gone."""
    source = output_dir / output
    folder = output_dir / VIDEOS_DIR / REPLACED_DIR
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{source.stem}.{tag}-{stamp}{source.suffix}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():
            n += 1
            target = folder / f"{source.stem}.{tag}-{stamp}-{n}{source.suffix}"
        source.replace(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot move the changed result {source} aside: {exc.strerror}") from None
    return target
