"""``<output_dir>/motion-pipeline.lock.json``: what regenerates or audits the dataset later.

In the spirit of ``dvc.lock``: the resolved manifest (every job after defaults and matrix
expansion, with its key, input hashes and preparation), the tool and schema versions, and the
provider's endpoint (credentials never: URLs are written without userinfo) and model. Rewritten
atomically at the start of every run, streamed job by job, so a 100,000-job batch never holds
the document in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.__version__ import __version__
from pipeline.manifest.model import StorageConfig
from pipeline.media.hashing import sha256_file
from pipeline.plan.build import Plan, PlannedJob
from pipeline.settings import public_url
from pipeline.state.schema import SCHEMA_VERSION
from pipeline.storage.atomic import write_atomic

LOCK_FILE = "motion-pipeline.lock.json"
LOCK_VERSION = 1
MANIFEST_VERSION = 1


def write_lock(plan: Plan) -> Path:
    m = plan.manifest
    head: dict[str, Any] = {
        "lock_version": LOCK_VERSION,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": {"name": "motion-pipeline", "version": __version__},
        "schema": {"manifest": MANIFEST_VERSION, "state": SCHEMA_VERSION},
        "manifest": {"path": str(m.path), "name": m.name, "sha256": _sha(m.path)},
        "provider": {
            "name": m.provider.name,
            "model": m.provider.model,
            "base_url": public_url(m.provider.base_url),
            "upload_url": public_url(m.provider.upload_url) if m.provider.upload_url else None,
            "options": dict(m.provider.options),
        },
        "budget": {
            "max_seconds": m.budget.max_seconds,
            "max_cost": m.budget.max_cost,
            "price_per_second": dict(m.budget.price_per_second),
            "currency": m.budget.currency,
        },
        "storage": _storage(m.storage),
    }
    return write_atomic(m.output_dir / LOCK_FILE, _chunks(head, plan))


def _storage(storage: StorageConfig | None) -> dict[str, Any] | None:
    """Where the inputs were handed to the provider from (the bucket's address, no credential:
    those come from the AWS chain and are never in the manifest)."""
    if storage is None:
        return None
    return {
        "kind": storage.kind,
        "bucket": storage.bucket,
        "prefix": storage.prefix,
        "endpoint_url": public_url(storage.endpoint_url) if storage.endpoint_url else None,
        "region": storage.region,
        "url_expires": storage.url_expires,
    }


def _chunks(head: dict[str, Any], plan: Plan) -> Iterator[bytes]:
    text = json.dumps(head, indent=1)
    yield (text[:-2] + ',\n "jobs": [\n').encode()
    for i, pj in enumerate(plan.jobs):
        sep = ",\n" if i else ""
        yield (sep + "  " + json.dumps(_job(pj), separators=(",", ":"))).encode()
    yield b"\n ]\n}\n"


def _job(pj: PlannedJob) -> dict[str, Any]:
    job, media = pj.job, pj.media
    return {
        "id": job.id,
        "key": pj.key,
        "line": job.line,
        "image": job.image.raw,
        "video": job.video.raw,
        "image_sha256": pj.image_sha256,
        "video_sha256": pj.video_sha256,
        "settings": job.settings.as_dict(),
        "action": pj.action,
        "preparation": {
            "video": media.video.as_dict() if media else None,
            "image": media.image.as_dict() if media else None,
        },
        "sent": pj.sent.as_dict() if pj.sent else None,
        "billed_seconds": pj.billed_seconds,
    }


def _sha(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
