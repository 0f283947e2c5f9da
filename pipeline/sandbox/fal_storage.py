"""fal's file storage, the wire shape fal-client uses (fal-ai/fal, ``fal_client/client.py``).

1. ``POST /storage/auth/token?storage_type=fal-cdn-v3`` with the ``Key`` (fal's host
   ``rest.alpha.fal.ai``) -> ``{token, token_type, base_url, expires_at}``.
2. Up to 100 MB: ``POST /files/upload`` (host ``v3.fal.media``) with ``Authorization:
   <token_type> <token>``, ``Content-Type``, ``X-Fal-File-Name`` and the raw bytes ->
   ``{"access_url": ...}``.
3. Larger files: ``POST {base_url}/files/upload/multipart`` (same headers) -> ``{access_url,
   uploadId}``; ``PUT {access_url}/multipart/{uploadId}/{n}`` per part (the client sends 10 MB
   parts) answers an ``ETag``; ``POST {access_url}/multipart/{uploadId}/complete`` with
   ``{"parts": [{"partNumber", "etag"}]}`` joins them.

The access URL is ``/fal-media/files/<key>/<name>`` on this server, stored under
``uploads/fal/`` (so it outlives a restart) and public, like ``fal.media`` files. CDN tokens are
``<expiry>.<HMAC of it with the fal key>``: checkable without state, so a token issued before a
restart stays good until it expires. Error bodies ``{"detail": ...}`` are composed (inferred).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pipeline.sandbox.fal_auth import auth_error, detail, locked
from pipeline.sandbox.service import Route, Service
from pipeline.sandbox.wire import Reply, Request, json_reply, same_secret

TOKEN_TTL = 3600
_PART = re.compile(
    r"^/fal-media/files/(?P<key>[0-9a-f]{32})/(?P<name>[^/]+)/multipart/"
    r"(?P<upload>[0-9a-f]{32})/(?P<part>\d{1,5}|complete)$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]")


def route(req: Request) -> Route | None:
    if req.method == "POST" and req.path == "/storage/auth/token":
        return "upload", token
    if req.method == "POST" and req.path == "/files/upload":
        return "upload", upload
    if req.method == "POST" and req.path == "/files/upload/multipart":
        return "upload", multipart_create
    found = _PART.match(req.path)
    if found is not None and req.method == "PUT" and found["part"] != "complete":
        return "upload", multipart_part
    if found is not None and req.method == "POST" and found["part"] == "complete":
        return "upload", multipart_complete
    return None


def _signature(app: Service, expiry: int) -> str:
    secret = (app.keys.fal or "sandbox-fal-cdn").encode()
    return hmac.new(secret, str(expiry).encode(), hashlib.sha256).hexdigest()[:32]


def token(app: Service, req: Request) -> Reply:
    refused = auth_error(app, req) or locked(app)  # a locked account cannot upload (fal#1147)
    if refused is not None:
        return refused
    expiry = int(time.time()) + TOKEN_TTL
    return json_reply(
        200,
        {
            "token": f"{expiry}.{_signature(app, expiry)}",
            "token_type": "Bearer",
            "base_url": req.base_url,
            "expires_at": datetime.fromtimestamp(expiry, UTC).isoformat(),
        },
    )


def _cdn_auth(app: Service, req: Request) -> Reply | None:
    given = req.credential("bearer")
    if given is None:
        return detail(401, "Authorization header with a storage token is required")
    expiry, _, signature = given.partition(".")
    if not expiry.isdigit() or not same_secret(signature, _signature(app, int(expiry))):
        return detail(401, "Invalid storage token")
    if int(expiry) <= time.time():
        return detail(401, "Storage token has expired")
    return None


def _name(req: Request) -> str:
    given = req.headers.get("x-fal-file-name", "").strip()
    name = _UNSAFE.sub("_", given.rsplit("/", 1)[-1])[:150].lstrip("._ -")
    if name:
        return name
    content_type = req.headers.get("content-type", "").split(";", 1)[0]
    return f"{secrets.token_hex(6)}{mimetypes.guess_extension(content_type) or '.bin'}"


def _access_url(req: Request, key: str, name: str) -> str:
    return f"{req.base_url}/fal-media/files/{key}/{name}"


def upload(app: Service, req: Request) -> Reply:
    refused = _cdn_auth(app, req)
    if refused is not None:
        return refused
    key, name = secrets.token_hex(16), _name(req)
    app.save_upload(f"fal/{key}", name, req.body)
    content_type = req.headers.get("content-type") or "application/octet-stream"
    doc = {
        "access_url": _access_url(req, key, name),
        "content_type": content_type,
        "file_name": name,
        "file_size": len(req.body),
    }
    return json_reply(200, doc)


def multipart_create(app: Service, req: Request) -> Reply:
    refused = _cdn_auth(app, req)
    if refused is not None:
        return refused
    key, name = secrets.token_hex(16), _name(req)
    return json_reply(
        200, {"access_url": _access_url(req, key, name), "uploadId": secrets.token_hex(16)}
    )


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324  # an ETag, as S3-style stores use


def multipart_part(app: Service, req: Request) -> Reply:
    refused = _cdn_auth(app, req)
    if refused is not None:
        return refused
    found = _PART.match(req.path)
    if found is None:  # route() matched it
        raise RuntimeError(f"sandbox bug: {req.path} is not a multipart part path")
    app.save_upload(f"fal-parts/{found['upload']}", f"part-{int(found['part']):05d}", req.body)
    return Reply(200, b"", {"ETag": _etag(req.body), "Content-Type": "text/plain"})


def multipart_complete(app: Service, req: Request) -> Reply:
    refused = _cdn_auth(app, req)
    if refused is not None:
        return refused
    found = _PART.match(req.path)
    if found is None:
        raise RuntimeError(f"sandbox bug: {req.path} is not a multipart completion path")
    try:
        parts: list[dict[str, Any]] = json.loads(req.body)["parts"]
        numbers = [int(p["partNumber"]) for p in parts]
        etags = [str(p["etag"]) for p in parts]
    except (ValueError, KeyError, TypeError):
        return detail(400, 'body must be {"parts": [{"partNumber": n, "etag": "..."}]}')
    data = bytearray()
    for number, etag in sorted(zip(numbers, etags, strict=True)):
        stored = app.upload_file(f"fal-parts/{found['upload']}/part-{number:05d}")
        if stored is None:
            return detail(400, f"part {number} was not uploaded")
        chunk = stored.read_bytes()
        if _etag(chunk).strip('"') != etag.strip('"'):
            return detail(400, f"part {number}: etag {etag} does not match the uploaded part")
        data += chunk
    app.save_upload(f"fal/{found['key']}", found["name"], bytes(data))
    app.delete_upload(f"fal-parts/{found['upload']}")
    return json_reply(200, {"access_url": _access_url(req, found["key"], found["name"])})
