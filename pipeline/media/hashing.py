"""Content hashes of input files, each file read at most once per run and not at all when unchanged.

The cache maps (path, size, mtime_ns, inode, device) to the sha256 of the content. It lives in
the output directory (``cache/hashes.json``; a per-user folder when that is read-only, see
:mod:`pipeline.plan.cache`) so a second ``plan``/``run`` of a 10,000-job matrix does not re-read
its inputs. A damaged cache file reads as empty: the worst it can cost is hashing again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.plan.cache import CacheFolder

_CHUNK = 1024 * 1024
_VERSION = 1
CACHE_NAME = "hashes.json"


def sha256_file(path: Path) -> str:
    """Content hash of a file, read in chunks so large clips do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class FileHasher:
    """sha256 of files with a persistent stat-keyed cache; thread-parallel for many files."""

    def __init__(
        self, cache_file: Path | None = None, *, folder: CacheFolder | None = None
    ) -> None:
        """``cache_file``: one file to keep the cache in; ``folder``: a :class:`CacheFolder`
        (with its fallbacks) holding ``hashes.json``. Neither: no persistent cache."""
        if cache_file is not None:
            folder, self._name = CacheFolder([cache_file.parent]), cache_file.name
        else:
            self._name = CACHE_NAME
        self._folder = folder
        self._entries: dict[str, list[object]] = {}
        self._dirty = False
        self.reads = 0
        """Files actually read in this process (the benchmark checks a warm run reads none)."""
        if folder is not None:
            self._entries = _valid_entries(folder.read_json(self._name))

    @staticmethod
    def _fingerprint(st: os.stat_result) -> list[object]:
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]

    def hash(self, path: Path) -> str:
        return self.hash_many([path])[str(path)]

    def hash_many(self, paths: Iterable[Path]) -> dict[str, str]:
        """Hashes keyed by ``str(path)``; each distinct path is read at most once."""
        result: dict[str, str] = {}
        todo: list[tuple[str, Path, list[object]]] = []
        for path in dict.fromkeys(paths):
            key = str(path)
            fp = self._fingerprint(path.stat())
            entry = self._entries.get(key)
            if entry is not None and entry[:4] == fp:
                result[key] = str(entry[4])
            else:
                todo.append((key, path, fp))
        if todo:
            workers = min(len(todo), os.cpu_count() or 2)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                digests = list(pool.map(lambda t: sha256_file(t[1]), todo))
            for (key, _path, fp), digest in zip(todo, digests, strict=True):
                self._entries[key] = [*fp, digest]
                result[key] = digest
            self.reads += len(todo)
            self._dirty = True
        return result

    def save(self) -> None:
        """Write the cache atomically (no-op when nothing changed or there is no cache folder).

        Never raises: when no folder takes the file the cache lives on in memory only.
        """
        if self._folder is None or not self._dirty:
            return
        self._folder.write_json(self._name, {"version": _VERSION, "files": self._entries})
        self._dirty = False


def _valid_entries(doc: Any) -> dict[str, list[object]]:
    """The well-formed entries of a cache document; anything else is dropped (re-hashed)."""
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        return {}
    files = doc.get("files")
    if not isinstance(files, dict):
        return {}
    return {
        key: entry
        for key, entry in files.items()
        if isinstance(entry, list)
        and len(entry) == 5
        and all(type(n) is int for n in entry[:4])
        and isinstance(entry[4], str)
        and len(entry[4]) == 64
    }
