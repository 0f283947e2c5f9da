"""From manifest entries to jobs: settings after defaults and matrix values (interned), job ids
(explicit, or derived from the file stems), and the regular-file check of inputs."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat as stat_mod
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.jobs import InputRef, Job, JobSettings, Trim
from pipeline.manifest.yamlsafe import PathKey
from pipeline.providers.base import ProviderConfig

ErrorAt = Callable[..., None]
"""``error(where, message, hint="")``: records a diagnostic at a manifest position."""
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def format_path(path: PathKey) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def assign_ids(specs: list[Spec], config: ProviderConfig, error: ErrorAt) -> list[Job]:
    """Jobs with their ids: explicit ones reserved first, derived ones from the file stems
    (plus a short hash where two would collide)."""
    # Explicit ids first: they are reserved, derived ids must not take them.
    taken: dict[str, PathKey] = {}
    for spec in specs:
        if spec.id is None:
            continue
        low = spec.id.lower()
        if low in taken:
            first = format_path(taken[low])
            error(
                (*spec.where, "id"),
                f"duplicate job id {spec.id!r}",
                f"first used at {first}; ids must be unique ignoring case",
            )
        taken.setdefault(low, (*spec.where, "id"))
    # Per input and per entry, not per job: a 100 x 1,000 matrix has 1,100 stems and one entry.
    cleaned: dict[str, tuple[str, str]] = {}
    derived = [_derived_id(spec, cleaned) for spec in specs]
    counts = Counter(low for spec, (_, low) in zip(specs, derived, strict=True) if spec.id is None)
    paths: dict[PathKey, str] = {}
    name, model = config.name, config.model
    jobs: list[Job] = []
    for spec, (base, low) in zip(specs, derived, strict=True):
        job_id = spec.id
        if job_id is None:
            job_id = base
            if counts[low] > 1 or low in taken:
                job_id = _with_hash(base, spec)
                low = job_id.lower()
            if low in taken:
                error(
                    spec.where,
                    f"derived job id {job_id!r} is not unique",
                    "give the job an explicit id",
                )
            taken.setdefault(low, spec.where)
        where = paths.get(spec.where)
        if where is None:
            where = paths[spec.where] = format_path(spec.where)
        jobs.append(
            Job(
                id=job_id,
                image=spec.image,
                video=spec.video,
                settings=spec.settings,
                provider=name,
                model=model,
                line=spec.line,
                where=where,
            )
        )
    return jobs


class Spec(NamedTuple):
    """One job as the manifest states it, before its id is decided. A NamedTuple, not a frozen
    dataclass: a matrix makes one per cell, and a dataclass's __init__ costs several times more."""

    where: PathKey
    id: str | None
    image: InputRef
    video: InputRef
    settings: JobSettings
    line: int


def settings_of(values: dict[str, Any]) -> JobSettings:
    # Interned: a 100,000-job matrix has a handful of distinct settings, not 100,000.
    trim = values.get("trim") or {}
    return _interned_settings(
        values.get("mode", "std"),
        values.get("character_orientation", "video"),
        values.get("keep_original_sound", True),
        values.get("prompt", ""),
        float(trim.get("start", 0)),
        None if trim.get("end") is None else float(trim["end"]),
    )


@functools.lru_cache(maxsize=4096)
def _interned_settings(
    mode: Any, orientation: Any, sound: bool, prompt: str, start: float, end: float | None
) -> JobSettings:
    return JobSettings(
        mode=mode,
        character_orientation=orientation,
        keep_original_sound=sound,
        prompt=prompt,
        trim=Trim(start, end),
    )


def _clean(stem: str) -> str:
    return _ID_CHARS.sub("_", stem).lstrip(".") or "x"


def _derived_id(spec: Spec, cleaned: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The id derived from the stems, and its lower case (ids are unique ignoring case)."""
    image = cleaned.get(spec.image.raw)
    if image is None:
        stem = _clean(spec.image.stem)[:45]
        image = cleaned[spec.image.raw] = (stem, stem.lower())
    video = cleaned.get(spec.video.raw)
    if video is None:
        stem = _clean(spec.video.stem)[:45]
        video = cleaned[spec.video.raw] = (stem, stem.lower())
    return f"{image[0]}-{video[0]}", f"{image[1]}-{video[1]}"


def _with_hash(base: str, spec: Spec) -> str:
    doc = json.dumps([spec.image.raw, spec.video.raw, spec.settings.as_dict()], sort_keys=True)
    return f"{base}-{hashlib.sha256(doc.encode()).hexdigest()[:8]}"


def regular_file(path: Path) -> tuple[bool, str]:
    """Whether ``path`` is a regular file, decided from ``stat`` without opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False, "file not found"
    except OSError as exc:
        return False, f"cannot stat: {exc.strerror}"
    mode = st.st_mode
    if stat_mod.S_ISREG(mode):
        return True, ""
    kinds = {
        stat_mod.S_ISDIR: "a directory",
        stat_mod.S_ISFIFO: "a FIFO",
        stat_mod.S_ISCHR: "a character device",
        stat_mod.S_ISBLK: "a block device",
        stat_mod.S_ISSOCK: "a socket",
    }
    for test, name in kinds.items():
        if test(mode):
            return False, f"is {name}, not a regular file"
    return False, "is not a regular file"
