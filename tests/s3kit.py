"""A real S3-compatible HTTP server on 127.0.0.1 for the storage tests: moto's server mode.

:class:`S3Server` is moto's ``ThreadedMotoServer`` (its WSGI app on a werkzeug server, real
sockets, real SigV4 requests from boto3) with a thin layer in front that does two things moto
does not:

- it enforces the expiry of presigned URLs as AWS does (``X-Amz-Date`` + ``X-Amz-Expires`` past:
  403 ``AccessDenied`` "Request has expired"), so a stale URL fails like on S3;
- it logs every request (method, path, whether presigned) and can answer the next N matching
  requests with an S3 error (a 503 SlowDown, a 403...), for retries and hostile answers.

moto keeps its buckets in process memory, shared by every server of one test process: tests
use bucket names of their own (:func:`bucket_name`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
from botocore.config import Config
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

# Distinctive fake AWS keys: the secret sweep looks for these exact strings everywhere.
ACCESS_KEY = "AKIAMOTOTEST12345678"
SECRET_KEY = "aws-SECRET-moto-0123456789abcdefghijkl"
SESSION_TOKEN = "aws-TOKEN-moto-session-9876543210zyxw"
REGION = "us-east-1"


def aws_env(**extra: str) -> dict[str, str]:
    """AWS variables for a run against the test server: our keys, no instance-metadata lookup
    (the chain must never reach for 169.254.169.254 from a test), no ~/.aws of the machine."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    env.update(extra)
    return env


def bucket_name(tag: str = "b") -> str:
    return f"mp-{tag}-{secrets.token_hex(4)}"


@dataclass
class Fault:
    method: str
    status: int
    code: str
    times: int
    path_part: str = ""
    message: str = "injected by the test"


@dataclass
class Seen:
    method: str
    path: str
    presigned: bool
    status: int


@dataclass
class _Layer:
    app: Callable[..., Any]
    log: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        presigned = "X-Amz-Signature" in query
        if presigned and _expired(query):
            return self._answer(start_response, method, path, True, 403, "AccessDenied",
                                "Request has expired")  # fmt: skip
        with self.lock:
            fault = next(
                (f for f in self.faults
                 if f.times > 0 and f.method == method and f.path_part in path),
                None,
            )  # fmt: skip
            if fault is not None:
                fault.times -= 1
        if fault is not None:
            return self._answer(start_response, method, path, presigned, fault.status,
                                fault.code, fault.message)  # fmt: skip
        status: list[int] = []

        def recording(status_line: str, headers: Any, *args: Any) -> Any:
            status.append(int(status_line.split()[0]))
            return start_response(status_line, headers, *args)

        body = self.app(environ, recording)
        with self.lock:
            self.log.append(Seen(method, path, presigned, status[0] if status else 0))
        return body

    def _answer(
        self, start_response: Callable[..., Any], method: str, path: str, presigned: bool,
        status: int, code: str, message: str,
    ) -> list[bytes]:  # fmt: skip
        with self.lock:
            self.log.append(Seen(method, path, presigned, status))
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>"
        ).encode()
        reason = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}
        start_response(
            f"{status} {reason.get(status, 'Error')}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body] if method != "HEAD" else []


def _expired(query: dict[str, list[str]]) -> bool:
    try:
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        lifetime = int(query["X-Amz-Expires"][0])
    except (KeyError, ValueError, IndexError):
        return True  # a presigned URL without a readable date or lifetime is refused by S3 too
    return time.time() > signed.timestamp() + lifetime


class _Quiet(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no request lines on stderr
        pass


class S3Server(ThreadedMotoServer):
    """moto's threaded server on 127.0.0.1 (free port) behind the expiry and fault layer."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.layer = _Layer(DomainDispatcherApplication(create_backend_app))

    def _server_entry(self) -> None:
        self._server = make_server(
            self._ip_address, self._port, self.layer, True, request_handler=_Quiet
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def client(self) -> Any:
        """A boto3 client of the test itself (to make buckets and look at objects)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def make_bucket(self, tag: str = "b") -> str:
        name = bucket_name(tag)
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        client = self.client()
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                for o in listed}  # fmt: skip

    def requests(self, methods: Iterable[str] = ("PUT", "HEAD", "GET", "POST")) -> list[Seen]:
        wanted = set(methods)
        with self.layer.lock:
            return [s for s in self.layer.log if s.method in wanted]

    def puts(self, bucket: str) -> list[str]:
        """Paths of object PUTs into ``bucket`` (bucket creation is ``PUT /bucket``)."""
        return [s.path for s in self.requests(["PUT"]) if s.path.startswith(f"/{bucket}/")]

    def fail_next(
        self,
        method: str,
        status: int,
        code: str,
        *,
        times: int = 1,
        path_part: str = "",
        message: str = "injected by the test",
    ) -> None:
        with self.layer.lock:
            self.layer.faults.append(Fault(method, status, code, times, path_part, message))


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def storage_block(server: S3Server, bucket: str, **extra: Any) -> dict[str, Any]:
    """``storage:`` for a manifest on ``server``."""
    return {"kind": "s3", "bucket": bucket, "endpoint_url": server.endpoint, **extra}


def files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path
