"""metadata.jsonl from the state: one provenance line per downloaded result.

Results of the manifest's jobs go into ``metadata.jsonl``; a paid task the manifest no longer
names (an orphan, collected into ``videos/replaced/``) gets its line in a ``.json`` file beside
its video instead, so it is kept with its provenance but is not part of the dataset.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.dataset import records
from pipeline.jobs import InputRef, Job, JobSettings, State, Trim
from pipeline.plan.build import PlannedJob
from pipeline.providers.base import ProviderConfig
from pipeline.state.rows import JobRow
from pipeline.state.store import StateStore
from pipeline.storage.atomic import write_atomic


def metadata_for(row: JobRow, pj: PlannedJob, config: ProviderConfig) -> records.ResultMetadata:
    job = pj.job
    sent = _sent_doc(row, pj)
    return records.ResultMetadata(
        job_id=row.id,
        job_key=row.key,
        source_image=job.image.raw,
        driving_video=job.video.raw,
        source_image_sha256=pj.image_sha256,
        driving_video_sha256=pj.video_sha256,
        settings=job.settings.as_dict(),
        provider=config.name,
        model=config.model,
        **_result_fields(row, sent),
        media_recipe=pj.media.key_recipe if pj.media else "",
    )


def _result_fields(row: JobRow, sent: Mapping[str, Any]) -> dict[str, Any]:
    """What a metadata line takes from the job's row (its task and result) and from what its
    create sent: the same for a manifest job and for an orphan."""
    facts = json.loads(row.result) if row.result else {}
    video = sent.get("video_recipe") or {}
    return {
        "task_id": row.task_id or "",
        "output_sha256": row.output_sha256 or "",
        "duration": row.duration,
        "width": facts.get("width"),
        "height": facts.get("height"),
        "fps": facts.get("fps"),
        "codec": facts.get("codec"),
        "output_size": facts.get("size"),
        "billed_seconds": row.billed_seconds,
        "submitted_at": row.submitted_at,
        "finished_at": row.finished_at,
        "trim": video.get("trim"),
        "sent": {"image": sent.get("image"), "video": sent.get("video")},
        "preparation": {"video": video or None, "image": sent.get("image_recipe")},
    }


def _sent_doc(row: JobRow, pj: PlannedJob) -> dict[str, Any]:
    """What the create of this row sent (recorded at its intent), else what the plan would send."""
    if row.inputs:
        with contextlib.suppress(ValueError):
            doc = json.loads(row.inputs)
            if isinstance(doc, dict):
                return doc
    media = pj.media
    return {
        "video_recipe": media.video.as_dict() if media else None,
        "image_recipe": media.image.as_dict() if media else None,
        **(pj.sent.as_dict() if pj.sent else {}),
    }


def job_from_spec(row: JobRow, config: ProviderConfig) -> Job:
    """The job as the state remembers it (for a paid task the manifest no longer names)."""
    spec = row.spec
    settings = spec.get("settings") or {}
    trim = settings.get("trim") or {}
    return Job(
        id=row.id,
        image=InputRef(raw=str(spec.get("image", ""))),
        video=InputRef(raw=str(spec.get("video", ""))),
        settings=JobSettings(
            mode=settings.get("mode", "std"),
            character_orientation=settings.get("character_orientation", "video"),
            keep_original_sound=bool(settings.get("keep_original_sound", True)),
            prompt=str(settings.get("prompt", "")),
            trim=Trim(float(trim.get("start", 0)), trim.get("end")),
        ),
        provider=str(spec.get("provider") or config.name),
        model=str(spec.get("model") or config.model),
        line=int(spec.get("line") or 0),
    )


def record_from_row(row: JobRow, output_dir: Path) -> dict[str, object]:
    """A metadata line for a result from the state alone (orphans: no manifest job to ask)."""
    spec = row.spec
    sent: dict[str, Any] = {}
    if row.inputs:
        with contextlib.suppress(ValueError):
            sent = json.loads(row.inputs)
    meta = records.ResultMetadata(
        job_id=row.id,
        job_key=row.key,
        source_image=str(spec.get("image", "")),
        driving_video=str(spec.get("video", "")),
        source_image_sha256=str(spec.get("image_sha256") or ""),
        driving_video_sha256=str(spec.get("video_sha256") or ""),
        settings=spec.get("settings") or {},
        provider=str(spec.get("provider") or ""),
        model=str(spec.get("model") or ""),
        **_result_fields(row, sent),
    )
    record = records.metadata_record(meta)
    if row.output:  # relative to the sidecar: the video sits right beside it
        record["file_name"] = Path(row.output).name
    return record


def write_sidecar(row: JobRow, output_dir: Path) -> Path | None:
    """``<video>.json`` beside an orphan's video: its provenance, outside the dataset."""
    if not row.output:
        return None
    target = (output_dir / row.output).with_suffix(".json")
    text = json.dumps(record_from_row(row, output_dir), ensure_ascii=False, indent=1) + "\n"
    write_atomic(target, text.encode("utf-8"))
    return target


def rewrite_metadata(
    store: StateStore, planned: Mapping[str, PlannedJob], config: ProviderConfig, output_dir: Path
) -> Path:
    """Rewrite metadata.jsonl (atomically) for every done job of the manifest."""
    lines = []
    for row in store.rows([State.DONE]):
        pj = planned.get(row.id)
        if pj is not None and row.output and row.task_id:
            lines.append(records.metadata_record(metadata_for(row, pj, config)))
    return records.write_metadata(output_dir, lines)
