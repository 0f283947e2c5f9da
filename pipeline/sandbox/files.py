"""Files the sandbox serves and fetches: uploads, ``file_url`` files, loopback input downloads.

Uploads live on disk under ``data_dir/uploads`` (so they outlive a restart on another port);
``/files/<token>/<name>`` tokens live in memory. Only loopback URLs are ever fetched: the sandbox
plays a remote service but must never reach beyond this machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mimetypes
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.sandbox.store import TaskStore
from pipeline.sandbox.wire import InputProblem, Reply, Request, json_reply

#: What the sandbox fetches for a task or a URL upload; the real limits are 100 MB.
MAX_FETCH_BYTES = 200 * 1024 * 1024
#: Upload URL paths: served from disk, so they stay valid across restarts on another port.
UPLOAD_PREFIXES = ("/tempfile/", "/fal-media/files/", "/v1/files/")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")


class Files:
    """Thread-safe; ``port`` is set once the server is bound."""

    def __init__(self, data_dir: Path, store: TaskStore) -> None:
        self.uploads_dir = data_dir / "uploads"
        self.fetch_dir = data_dir / "fetched"
        self.inline_dir = data_dir / "inline"
        self.store = store
        self.port = 0
        self._seq = 0
        self._lock = threading.Lock()

    def file_url(self, base_url: str, path: Path) -> str:
        token = self.store.add_file(path.resolve())
        return f"{base_url}/files/{token}/{path.name}"

    def save_upload(self, upload_path: str, file_name: str, data: bytes) -> Path:
        """Store an uploaded file (same path = overwrite, like Kie); ValueError on a bad name."""
        target = self.uploads_dir / upload_relpath(upload_path, file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target

    def upload_file(self, relpath: str) -> Path | None:
        """The stored upload at ``relpath`` (checked segment by segment), if it exists."""
        segments = relpath.split("/")
        try:
            upload_relpath("/".join(segments[:-1]), segments[-1])
        except ValueError:
            return None
        candidate = self.uploads_dir / relpath
        return candidate if candidate.is_file() else None

    def delete_upload(self, upload_path: str) -> bool:
        try:
            rel = upload_relpath(upload_path, "x").removesuffix("/x")
        except ValueError:
            return False
        target = self.uploads_dir / rel
        if not target.is_dir():
            return False
        shutil.rmtree(target, ignore_errors=True)
        return True

    def inline_url(self, data: bytes, name: str) -> str:
        path = self.inline_dir / f"{hashlib.sha256(data).hexdigest()}-{Path(name).name}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return self.file_url(f"http://127.0.0.1:{self.port}", path)

    def own_file(self, url: str) -> Path | None:
        """The local file behind one of the sandbox's own input or result URLs, if it is one."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not is_loopback(parts.hostname):
            return None
        path = unquote(parts.path)
        # Uploads live on disk, so they stay ours after a restart on another port (the
        # embedded sandbox gets a new port every run); /files/ tokens live in memory only.
        if parts.port != self.port and not path.startswith(UPLOAD_PREFIXES):
            return None
        return self.path_for(path)

    def path_for(self, path: str) -> Path | None:
        """The file behind a served path: an upload of any protocol, or a ``file_url`` token.

        Upload URLs, one layout per protocol's storage: Kie ``/tempfile/<path>`` (uploads/),
        fal ``/fal-media/files/<key>/<name>`` (uploads/fal/), Replicate ``/v1/files/<id>``
        (uploads/replicate/<id>/content/<name>; Replicate resolves its own file URLs given as
        inputs).
        """
        if path.startswith("/tempfile/"):
            return self.upload_file(path[len("/tempfile/") :])
        if path.startswith("/fal-media/files/"):
            return self.upload_file("fal/" + path[len("/fal-media/files/") :])
        if path.startswith("/v1/files/"):
            file_id = path[len("/v1/files/") :].removesuffix("/download")
            folder = self.uploads_dir / "replicate" / file_id / "content"
            if "/" in file_id or not file_id or not folder.is_dir():
                return None
            return next((p for p in sorted(folder.iterdir()) if p.is_file()), None)
        if path.startswith("/files/"):
            token = path[len("/files/") :].split("/", 1)[0]
            return self.store.file(token)
        return None

    def serve(self, req: Request) -> Reply | None:
        """A GET/HEAD of an upload or a ``file_url`` file; None when the path is neither.

        Replicate's ``/v1/files/...`` are API calls (with auth): its protocol module serves them.
        """
        if req.path.startswith("/v1/"):
            return None
        path = self.path_for(unquote(req.path))
        if path is None:
            return None
        if not path.is_file():
            return json_reply(404, {"code": 404, "msg": "file not found"})
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Reply(200, headers={"Content-Type": content_type}, file=path)

    def input_path(self, url: str, field: str) -> Path:
        """A local copy of an input URL: own files straight from disk, loopback URLs fetched."""
        own = self.own_file(url)
        if own is not None:
            if not own.is_file():
                raise InputProblem(f"{field} could not be fetched: file not found", field)
            return own
        data = self.fetch(url, field)
        self.fetch_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._seq += 1
            seq = self._seq
        target = self.fetch_dir / f"{seq}-{Path(urlsplit(url).path).name or 'input'}"
        target.write_bytes(data)
        return target

    def fetch(self, url: str, field: str) -> bytes:
        """Download an http URL on loopback; anything else is an unreachable input."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InputProblem(f"{field} must be an http(s) URL", field)
        if not is_loopback(parts.hostname):
            raise InputProblem(
                f"{field} could not be fetched: the sandbox only fetches loopback URLs "
                f"(host {parts.hostname})",
                field,
            )
        own = self.own_file(url)
        if own is not None:
            return own.read_bytes()
        # No proxies: the environment's proxy settings must never route a loopback fetch.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=30) as response:  # scheme checked above
                data: bytes = response.read(MAX_FETCH_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise InputProblem(f"{field} could not be fetched: HTTP {exc.code}", field) from None
        except (urllib.error.URLError, OSError) as exc:
            raise InputProblem(f"{field} could not be fetched: {exc}", field) from None
        if len(data) > MAX_FETCH_BYTES:
            raise InputProblem(f"{field} is larger than {MAX_FETCH_BYTES // 1024**2} MB", field)
        return data


def upload_relpath(upload_path: str, file_name: str) -> str:
    """``upload_path/file_name`` checked segment by segment; ValueError on anything unsafe."""
    segments = [s for s in upload_path.strip("/").split("/") if s] + [file_name]
    for segment in segments:
        if not _SAFE_SEGMENT.match(segment) or segment in {".", ".."}:
            raise ValueError(f"unsafe path segment {segment!r}")
    return "/".join(segments)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
