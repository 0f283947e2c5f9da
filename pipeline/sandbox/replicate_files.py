"""Replicate's files API, as replicate-python's ``replicate/file.py`` calls it.

``POST /v1/files`` (multipart, the file in field ``content``, optional ``metadata`` as a JSON
string) answers 201 with ``{id, name, content_type, size, etag, checksums, metadata, created_at,
expires_at, urls: {get}}``; ``GET /v1/files/{id}`` answers that object again, ``GET
/v1/files/{id}/download`` the bytes, ``DELETE /v1/files/{id}`` 204. ``urls.get`` is what a
prediction takes as an input: the service resolves its own file URLs. Stored under
``uploads/replicate/<id>/`` (content, and the object as JSON). ``expires_at`` is 24 h after the
upload (inferred; not enforced).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import time
from typing import Any

from pipeline.sandbox.replicate_api import auth_error, iso, new_id, problem
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.wire import Reply, Request, json_reply, parse_multipart

FILE_TTL = 24 * 3600
_FILE = re.compile(r"^/v1/files/(?P<id>[a-z0-9]+)(?P<download>/download)?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]")


def route(req: Request) -> Route | None:
    if req.path == "/v1/files" and req.method == "POST":
        return "upload", create
    found = _FILE.match(req.path)
    if found is None:
        return None
    if req.method in ("GET", "HEAD"):
        return "upload", download if found["download"] else get
    if req.method == "DELETE" and not found["download"]:
        return "upload", delete
    return None


def create(app: Service, req: Request) -> Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    try:
        parts = parse_multipart(req.headers.get("content-type", ""), req.body)
    except ValueError as exc:
        return problem(400, "Bad request", str(exc))
    content = parts.get("content")
    if content is None:
        return problem(400, "Bad request", "the file must be sent in the multipart field content")
    metadata: Any = {}
    if "metadata" in parts:
        try:
            metadata = json.loads(parts["metadata"].data)
        except ValueError:
            return problem(400, "Bad request", "metadata must be a JSON object")
    file_id = new_id()
    name = _UNSAFE.sub("_", (content.filename or "file").rsplit("/", 1)[-1]).lstrip("._ -")
    name = name[:150] or "file"
    data = content.data
    now = time.time()
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324  # an ETag and a checksum, not security
    content_type = content.content_type or mimetypes.guess_type(name)[0]
    doc = {
        "id": file_id,
        "name": name,
        "content_type": content_type or "application/octet-stream",
        "size": len(data),
        "etag": md5,
        "checksums": {"sha256": hashlib.sha256(data).hexdigest(), "md5": md5},
        "metadata": metadata,
        "created_at": iso(now),
        "expires_at": iso(now + FILE_TTL),
        "urls": {"get": f"{req.base_url}/v1/files/{file_id}"},
    }
    app.save_upload(f"replicate/{file_id}/content", name, data)
    app.save_upload(f"replicate/{file_id}", "file.json", json.dumps(doc).encode())
    return json_reply(201, doc)


def _stored(app: Service, req: Request) -> tuple[dict[str, Any], str] | Reply:
    refused = auth_error(app, req)
    if refused is not None:
        return refused
    found = _FILE.match(req.path)
    meta = app.upload_file(f"replicate/{found['id']}/file.json") if found is not None else None
    if found is None or meta is None:
        return problem(404, "Not found", "File not found")
    return json.loads(meta.read_text(encoding="utf-8")), found["id"]


def get(app: Service, req: Request) -> Reply:
    stored = _stored(app, req)
    if isinstance(stored, Reply):
        return stored
    doc, file_id = stored
    doc["urls"] = {"get": f"{req.base_url}/v1/files/{file_id}"}  # this server's port, now
    return json_reply(200, doc)


def download(app: Service, req: Request) -> Reply:
    stored = _stored(app, req)
    if isinstance(stored, Reply):
        return stored
    doc, file_id = stored
    path = app.upload_file(f"replicate/{file_id}/content/{doc['name']}")
    if path is None:
        return problem(404, "Not found", "File not found")
    return Reply(200, headers={"Content-Type": str(doc["content_type"])}, file=path)


def delete(app: Service, req: Request) -> Reply:
    stored = _stored(app, req)
    if isinstance(stored, Reply):
        return stored
    app.delete_upload(f"replicate/{stored[1]}")
    return Reply(204, b"", {})
