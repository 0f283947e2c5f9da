"""One line of ``metadata.jsonl``: its fields, the keys the VideoFolder loader allows, and the
atomic rewrite of the file (one row per result, sorted by job id).

Hugging Face's VideoFolder builds one dataset row per line and a media column from
``file_name``; :func:`check_record_keys` refuses a key it would misread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dataset.names import METADATA_FILE
from pipeline.dataset.results import dataset_file_name
from pipeline.storage.atomic import write_atomic

#: VideoFolder names its own columns ``video`` (from ``file_name``) and ``image``; a metadata key
#: with one of these names would replace them.
RESERVED_KEYS = frozenset({"video", "image"})


@dataclass(frozen=True)
class ResultMetadata:
    """Everything one metadata.jsonl line says about one result (the runner maps its row here)."""

    job_id: str
    job_key: str
    source_image: str
    driving_video: str
    source_image_sha256: str
    driving_video_sha256: str
    settings: Mapping[str, Any]
    """:meth:`pipeline.jobs.JobSettings.as_dict` (prompt and trim included)."""
    provider: str
    model: str
    task_id: str
    output_sha256: str
    duration: float | None
    width: int | None
    height: int | None
    billed_seconds: float | None
    submitted_at: str | None
    finished_at: str | None
    trim: Mapping[str, Any] | None = None
    """The window actually cut from the driving video (``{start, end}`` in source seconds), or
    None when the clip was sent whole; the manifest's request is ``settings["trim"]``."""
    sent: Mapping[str, Any] | None = None
    """What the provider received: ``{"image": {...}, "video": {...}}`` with each file's sha256,
    size, duration and whether it was prepared (:class:`pipeline.plan.sending.Sent`)."""
    preparation: Mapping[str, Any] | None = None
    """The steps applied: ``{"video": {trim, scale, audio, ...}, "image": {format, scale}}``."""
    media_recipe: str = ""
    """The deterministic preparation applied to the driving video (trim, scale, audio strip)."""
    fps: float | None = None
    codec: str | None = None
    output_size: int | None = None


def metadata_record(meta: ResultMetadata) -> dict[str, Any]:
    """One metadata.jsonl line. Every row has the same keys, so the loader infers one schema."""
    record: dict[str, Any] = {
        "file_name": dataset_file_name(meta.job_id),
        "job_id": meta.job_id,
        "job_key": meta.job_key,
        "source_image": meta.source_image,
        "driving_video": meta.driving_video,
        "source_image_sha256": meta.source_image_sha256,
        "driving_video_sha256": meta.driving_video_sha256,
        "prepared_video_sha256": _sent(meta, "video", "sha256"),
        "prepared_video_size": _sent(meta, "video", "size"),
        "prepared_video_duration": _sent(meta, "video", "duration"),
        "prepared_image_sha256": _sent(meta, "image", "sha256"),
        "prepared_image_size": _sent(meta, "image", "size"),
        "media_recipe": meta.media_recipe,
        "preparation": dict(meta.preparation) if meta.preparation else None,
        "trim": dict(meta.trim) if meta.trim else None,
        "settings": dict(meta.settings),
        "provider": meta.provider,
        "model": meta.model,
        "task_id": meta.task_id,
        "output_sha256": meta.output_sha256,
        "output_size": meta.output_size,
        "duration": meta.duration,
        "width": meta.width,
        "height": meta.height,
        "fps": meta.fps,
        "codec": meta.codec,
        "billed_seconds": meta.billed_seconds,
        "submitted_at": meta.submitted_at,
        "finished_at": meta.finished_at,
    }
    check_record_keys(record)
    return record


def _sent(meta: ResultMetadata, role: str, fact: str) -> Any:
    entry = (meta.sent or {}).get(role)
    return entry.get(fact) if isinstance(entry, Mapping) else None


def check_record_keys(record: Mapping[str, Any]) -> None:
    """Refuse a row the VideoFolder loader would misread; raises ValueError (a programming error).

    ``video``/``image`` would replace the loader's own columns; any other ``*_file_name(s)`` key
    would be loaded as a second media column.
    """
    if not isinstance(record.get("file_name"), str):
        raise ValueError("metadata record without a file_name")
    for key in record:
        if key in RESERVED_KEYS:
            raise ValueError(f"metadata key {key!r} is reserved by the VideoFolder loader")
        if key != "file_name" and (key.endswith("_file_name") or key.endswith("file_names")):
            raise ValueError(f"metadata key {key!r} would be loaded as a media column")


def write_metadata(output_dir: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Rewrite ``<output_dir>/metadata.jsonl`` atomically, one row per result sorted by job_id."""
    rows = sorted(records, key=lambda r: str(r["job_id"]))
    seen: set[str] = set()
    for row in rows:
        check_record_keys(row)
        if row["job_id"] in seen:
            raise ValueError(f"two metadata records for job {row['job_id']}")
        seen.add(row["job_id"])
    target = Path(output_dir) / METADATA_FILE
    lines = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    return write_atomic(target, "".join(lines).encode("utf-8"))
