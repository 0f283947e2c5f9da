"""metadata.jsonl from the state: one provenance line per downloaded result."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pipeline import outputs
from pipeline.jobs import State
from pipeline.planning import PlannedJob
from pipeline.providers.base import ProviderConfig
from pipeline.state import StateStore
from pipeline.state_values import JobRow


def metadata_for(row: JobRow, pj: PlannedJob, config: ProviderConfig) -> outputs.ResultMetadata:
    facts = json.loads(row.result) if row.result else {}
    job = pj.job
    return outputs.ResultMetadata(
        job_id=row.id,
        job_key=row.key,
        source_image=job.image.raw,
        driving_video=job.video.raw,
        source_image_sha256=pj.image_sha256,
        driving_video_sha256=pj.video_sha256,
        settings=job.settings.as_dict(),
        provider=config.name,
        model=config.model,
        task_id=row.task_id or "",
        output_sha256=row.output_sha256 or "",
        duration=row.duration,
        width=facts.get("width"),
        height=facts.get("height"),
        fps=facts.get("fps"),
        codec=facts.get("codec"),
        output_size=facts.get("size"),
        billed_seconds=row.billed_seconds,
        submitted_at=row.submitted_at,
        finished_at=row.finished_at,
        media_recipe=pj.media.key_recipe if pj.media else "",
    )


def rewrite_metadata(
    store: StateStore, planned: Mapping[str, PlannedJob], config: ProviderConfig, output_dir: Path
) -> Path:
    """Rewrite metadata.jsonl (atomically) for every done job of the manifest."""
    records = []
    for row in store.rows([State.DONE]):
        pj = planned.get(row.id)
        if pj is not None and row.output and row.task_id:
            records.append(outputs.metadata_record(metadata_for(row, pj, config)))
    return outputs.write_metadata(output_dir, records)
