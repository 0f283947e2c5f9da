"""Probe facts of every input of a manifest: local files by content, URLs by their text.

http(s) inputs are fetched by the tool's own HTTP client (the timeouts, size cap and redirect
rules of every other request, :mod:`pipeline.storage.inputs`) and probed as local files, so
ffprobe never opens a URL (a static ffprobe crashes on a host-name lookup). Facts are cached in
``probes.json`` (URLs by their text): a rerun of a finished batch sends no request at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import BatchStopped, MediaError
from pipeline.jobs import InputRef
from pipeline.manifest.model import Manifest
from pipeline.media.probe import MediaInfo, probe_many, probed_as
from pipeline.media.tools import MediaTools
from pipeline.plan.cache import CacheFolder
from pipeline.storage.inputs import fetch_all, fetch_reason, input_file
from pipeline.storage.urls import display_url


class _Planned(Protocol):
    """What :func:`drop_unneeded_fetches` reads of a planned job (PlannedJob has it)."""

    @property
    def job(self) -> Any: ...
    @property
    def media(self) -> Any: ...
    @property
    def action(self) -> str: ...


def cache_dir(manifest: Manifest) -> Path:
    """``<output_dir>/cache``: the run's caches (prepared media, fetched inputs)."""
    return manifest.output_dir / "cache"


def probe_inputs(
    manifest: Manifest,
    hashes: dict[str, str],
    tools: MediaTools,
    *,
    cache: CacheFolder | None = None,
    input_hash: Callable[[InputRef, dict[str, str]], str],
) -> dict[str, MediaInfo | MediaError]:
    """Probe facts per input hash; local files are probed once per content, cached on disk.

    http(s) inputs are fetched by the tool's own HTTP client (:func:`_fetch_urls`) and probed as
    local files: ffprobe never opens a URL. Their facts are cached by the URL's text, so a rerun
    sends no request at all.
    """
    sources: dict[str, Path | str] = {}
    for job in manifest.jobs:
        for ref in (job.image, job.video):
            sources.setdefault(input_hash(ref, hashes), ref.path or ref.url or ref.raw)
    cached = _load_probe_cache(cache)
    facts: dict[str, MediaInfo | MediaError] = {}
    todo: list[str] = []
    for sha, source in sources.items():
        # URLs are cached by their text too: a URL's identity is its text (see input_hash), and a
        # re-run of a finished batch must not send a single request.
        hit = cached.get(sha)
        info = _cached_info(hit, str(source)) if hit is not None else None
        if info is not None:
            facts[sha] = info
        else:
            todo.append(sha)
    if todo:
        urls = [str(sources[sha]) for sha in todo if isinstance(sources[sha], str)]
        with _fetched_urls(manifest, urls) as local:
            results = asyncio.run(
                probe_many([local.get(sources[sha], sources[sha]) for sha in todo], tools)
            )
            fresh = False
            for sha, result in zip(todo, results, strict=True):
                source = sources[sha]
                if isinstance(source, str):
                    result = _as_url_result(source, result, local.failures)
                facts[sha] = result
                if isinstance(result, MediaInfo):
                    cached[sha] = result.facts()
                    fresh = True
        if fresh and cache is not None:
            cache.write_json(PROBE_CACHE, {"version": 1, "probes": cached})
    return facts


class _Fetched(dict[Path | str, Path | str]):
    """URL -> the local copy to probe; ``failures``: URL -> why it could not be fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[str, str] = {}


@contextlib.contextmanager
def _fetched_urls(manifest: Manifest, urls: list[str]) -> Iterator[_Fetched]:
    """Fetch ``urls`` where the run looks for them (``cache/inputs``: an input that must be
    prepared is then fetched once for plan and run alike), else into a temporary folder that
    goes when probing is done (a read-only output dir still plans)."""
    out = _Fetched()
    if not urls:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="mp-probe-") as spare:
        folders = [inputs_dir(manifest), Path(spare)]
        left = list(urls)
        for folder in folders:
            got = asyncio.run(fetch_all(left, folder))
            left = []
            for url, result in got.items():
                if isinstance(result, Path):
                    out[url] = result
                elif isinstance(result, BatchStopped) and folder != folders[-1]:
                    left.append(url)  # the folder cannot take it: try the next one
                else:
                    out.failures[url] = fetch_reason(result)
            if not left:
                break
        yield out


def _as_url_result(
    url: str, result: MediaInfo | MediaError, failures: dict[str, str]
) -> MediaInfo | MediaError:
    if url in failures:
        return MediaError(f"could not be fetched: {failures[url]}", path=display_url(url))
    if isinstance(result, MediaInfo):
        return probed_as(url, result)
    return MediaError(result.reason, path=display_url(url))


def inputs_dir(manifest: Manifest) -> Path:
    """Where the run keeps fetched http(s) inputs (and planning puts what it fetched to probe)."""
    return cache_dir(manifest) / "inputs"


def drop_unneeded_fetches(manifest: Manifest, planned: Sequence[_Planned]) -> None:
    """Remove the probe copies of URLs every job sends as they are: nothing will read them."""
    needed: set[str] = set()
    seen: set[str] = set()
    for pj in planned:
        job = pj.job
        if job.image.url is None and job.video.url is None:
            continue  # the common case, decided without building a recipe's text
        media = pj.media
        for ref, identity in (
            (job.image, media.image.is_identity if media else True),
            (job.video, media.video.is_identity if media else True),
        ):
            if ref.url is None:
                continue
            seen.add(ref.url)
            if not identity and pj.action != "reject":
                needed.add(ref.url)
    for url in seen - needed:
        with contextlib.suppress(OSError):
            input_file(url, inputs_dir(manifest)).unlink(missing_ok=True)


PROBE_CACHE = "probes.json"


def _load_probe_cache(cache: CacheFolder | None) -> dict[str, Any]:
    doc = cache.read_json(PROBE_CACHE) if cache is not None else None
    if isinstance(doc, dict) and doc.get("version") == 1 and isinstance(doc.get("probes"), dict):
        probes: dict[str, Any] = doc["probes"]
        return probes
    return {}


@functools.cache
def _info_types() -> dict[str, Any]:
    return typing.get_type_hints(MediaInfo)


def _cached_info(hit: Any, source: str) -> MediaInfo | None:
    """A cached probe entry as MediaInfo, or None when it is not one (edited, older, damaged)."""
    if not isinstance(hit, dict):
        return None
    values = {**hit, "source": source}
    hints = _info_types()
    if set(values) != {f.name for f in fields(MediaInfo)}:
        return None  # a field added or removed since it was written: probe again
    if not all(_fits(values[name], hints[name]) for name in values):
        return None
    return MediaInfo(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a simple annotation (int, float, str, bool, Literal, X | None)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)  # JSON writes 3.0 as 3.0, but a hand edit says 3
    return type(value) is hint
