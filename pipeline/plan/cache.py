"""Where planning keeps its caches (input hashes, probe facts), and how they are read and written.

``validate`` and ``plan`` must work on a manifest in a folder the user cannot write (a read-only
mount, a shared dataset), so a cache is an optimisation, never a requirement:

1. ``<output_dir>/cache/`` — beside the state, where ``run`` keeps its caches too;
2. when that folder cannot be created or written (read-only, no permission, disk full): a
   per-user folder, ``$XDG_CACHE_HOME/motion-pipeline/<sha256 of the output dir>[:16]/``
   (``~/.cache`` without XDG), so the second ``plan`` is still fast;
3. when that fails too: memory only, for this process.

Reads tolerate anything a crash, a full disk or a hand edit leaves behind: a missing, truncated,
corrupt or wrongly shaped file reads as an empty cache. Writes are atomic (temp file + rename),
so a reader never sees half a file written by us.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.settings import Settings

CACHE = "cache"


def user_cache_folder(user_cache: Path, output_dir: Path) -> Path:
    """The per-user fallback folder of one output directory (by its absolute path)."""
    digest = hashlib.sha256(str(Path(output_dir).absolute()).encode()).hexdigest()[:16]
    return user_cache / digest


class CacheFolder:
    """An ordered list of folders to keep cache files in; a folder that fails a write is dropped.

    Dropping it keeps later reads and writes consistent: once the output dir refused a file,
    every cache file of this process lives in the fallback.
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        self._folders = list(folders)

    @classmethod
    def for_output(cls, output_dir: Path, settings: Settings) -> CacheFolder:
        folders = [Path(output_dir) / CACHE]
        if settings.user_cache is not None:
            folders.append(user_cache_folder(settings.user_cache, output_dir))
        return cls(folders)

    @property
    def where(self) -> Path | None:
        """The folder the next write tries first; None when only memory is left."""
        return self._folders[0] if self._folders else None

    def read_json(self, name: str) -> Any:
        """The parsed content of the first readable, well-formed ``name``; None when none is."""
        for folder in self._folders:
            try:
                return json.loads((folder / name).read_bytes())
            except (OSError, ValueError):  # missing, unreadable, truncated, not JSON, bad UTF-8
                continue
        return None

    def write_json(self, name: str, doc: Any) -> Path | None:
        """Write ``doc`` atomically to the first folder that takes it; None: kept in memory only.

        Any OSError moves on (EACCES, EROFS, EPERM, ENOSPC are the expected ones): a cache that
        cannot be written must not stop a plan.
        """
        while self._folders:
            path = self._folders[0] / name
            try:
                _write_atomically(path, doc)
            except OSError:
                self._folders.pop(0)
                continue
            return path
        return None


def _write_atomically(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
