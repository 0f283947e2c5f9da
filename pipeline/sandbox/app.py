"""The sandbox service without its HTTP socket: routing, faults, task work, served files.

Protocol modules (:mod:`.kie`, :mod:`.acedata`, :mod:`.kling`) turn requests into calls on
:class:`SandboxApp`; :mod:`.server` only moves bytes.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pipeline.errors import MediaError
from pipeline.media.tools import MediaTools
from pipeline.sandbox import acedata, hostile, kie, kling, results
from pipeline.sandbox.faults import (
    ANSWER_KINDS,
    DEFAULT_FAIL_REASON,
    REQUEST_KINDS,
    TASK_KINDS,
    FaultPicker,
    FaultProfile,
    FaultRule,
    Latency,
)
from pipeline.sandbox.journal import TaskJournal
from pipeline.sandbox.ledger import Ledger, LedgerEntry
from pipeline.sandbox.render import Renderer
from pipeline.sandbox.rules import RULES, check_media
from pipeline.sandbox.store import Outcome, Task, TaskSpec, TaskStore
from pipeline.sandbox.wire import InputProblem, Reply, Request, json_reply, malformed

Handler = Callable[["SandboxApp", Request], Reply]


class _ProtocolModule(Protocol):
    """What :mod:`.kie`, :mod:`.acedata` and :mod:`.kling` each provide."""

    def route(self, req: Request) -> tuple[str, Handler] | None: ...

    def fault_reply(self, rule: FaultRule, req: Request) -> Reply: ...


#: What the sandbox fetches for a task or a URL upload; the real limits are 100 MB.
MAX_FETCH_BYTES = 200 * 1024 * 1024
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")


@dataclass(frozen=True)
class SandboxKeys:
    """The credentials the sandbox accepts; a None field accepts any non-empty credential."""

    kie: str | None = None
    acedata: str | None = None
    kling_access: str | None = None
    kling_secret: str | None = None

    def __repr__(self) -> str:
        # Keys are test data here, but the same object is built from real-looking env values.
        set_fields = [
            n for n in ("kie", "acedata", "kling_access", "kling_secret") if getattr(self, n)
        ]
        return f"SandboxKeys(set={set_fields})"

    __str__ = __repr__


class SandboxApp:
    """State and behaviour of one sandbox: keys, profile, tasks, ledger, renders."""

    def __init__(
        self,
        *,
        keys: SandboxKeys,
        profile: FaultProfile,
        protocols: tuple[str, ...],
        data_dir: Path,
        tools: MediaTools,
    ) -> None:
        self.keys = keys
        self.profile = profile
        self.protocols = protocols
        self.data_dir = data_dir
        self.uploads_dir = data_dir / "uploads"
        self.fetch_dir = data_dir / "fetched"
        self.ledger = Ledger()
        self.store = TaskStore()
        self.picker = FaultPicker(profile)
        self.renderer = Renderer(tools, data_dir / "renders")
        self.port = 0
        """Set by the server once bound; identifies the sandbox's own URLs."""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-media")
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        # The (task id, answered id text) of the create this thread is answering, when an
        # ANSWER fault (weird_task_id, duplicate_task_id) makes the answer lie about the id.
        self._answer = threading.local()
        self._journal = TaskJournal(data_dir / "tasks.jsonl")
        for task, fate_code in self._journal.load():
            self._start(task, fate_code)
        self._modules: dict[str, _ProtocolModule] = {"kie": kie, "acedata": acedata, "kling": kling}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._journal.close()

    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def latency(self, protocol: str) -> Latency:
        return self.profile.latency_for(protocol)

    # ------------------------------------------------------------------ requests

    def handle(self, req: Request) -> Reply:
        """Answer one request, with any fault the profile injects on its endpoint."""
        if req.method in ("GET", "HEAD"):
            served = self._serve_files(req)
            if served is not None:
                return served
        for protocol in self.protocols:
            module = self._modules[protocol]
            found = module.route(req)
            if found is None:
                continue
            endpoint, handler = found
            handler = self._answering(handler)
            rule = self.picker.pick(protocol, endpoint, REQUEST_KINDS)
            if rule is None:
                return handler(self, req)
            return self._with_fault(rule, endpoint, handler, req, module.fault_reply)
        return self._not_found(req)

    def _answering(self, handler: Handler) -> Handler:
        """``handler``, with its answer's task id replaced when :meth:`commit` said so."""

        def run(app: SandboxApp, req: Request) -> Reply:
            self._answer.value = None
            reply = handler(app, req)
            chosen, self._answer.value = getattr(self._answer, "value", None), None
            return reply if chosen is None else hostile.with_task_id(reply, *chosen)

        return run

    def _with_fault(
        self,
        rule: FaultRule,
        endpoint: str,
        handler: Handler,
        req: Request,
        fault_reply: Callable[[FaultRule, Request], Reply],
    ) -> Reply:
        if rule.kind == "slow":
            time.sleep(rule.seconds)
            return handler(self, req)
        if rule.kind == "trickle":
            return hostile.trickled(handler(self, req), rule)
        if rule.kind == "huge_body":  # handled first: a create is made, then answered hugely
            return hostile.huge(handler(self, req), rule)
        if rule.kind == "reset_before_commit":
            return Reply(reset=True)
        if rule.kind == "reset_after_commit":
            handler(self, req)
            return Reply(reset=True)
        if rule.kind == "malformed_json":
            if endpoint == "create" and not rule.commit:
                return malformed(Reply())
            return malformed(handler(self, req))
        return fault_reply(rule, req)

    def _not_found(self, req: Request) -> Reply:
        if req.path.startswith("/kling/") and "acedata" in self.protocols:
            return acedata.error(404, "no_api", "API not found")
        if req.path.startswith("/v1/") and "kling" in self.protocols:
            return kling.error(404, 1202, "method or resource not found")
        return json_reply(404, {"code": 404, "msg": "Not Found", "data": None})

    # ------------------------------------------------------------------ tasks

    def commit(
        self,
        protocol: str,
        task_id: str,
        body: dict[str, Any],
        spec: TaskSpec,
        *,
        client_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Task:
        """Accept a create: the task exists, is in the ledger, and its work is queued.

        The ledger records the task as billed even when an ANSWER fault makes the create's
        answer carry another id (``LedgerEntry.answered_id``).
        """
        rule = self.picker.pick(protocol, "create", TASK_KINDS)
        task = Task(protocol, task_id, client_id, body, spec, created=time.time(),
                    extra=extra or {})  # fmt: skip
        fate_code = None
        if rule is not None and rule.kind == "never_finish":
            task.fate = "never"
        elif rule is not None and rule.kind == "bad_result_url":
            task.bad_url = rule.url
        elif rule is not None:
            task.fate = "fail"
            task.fate_reason = rule.message or DEFAULT_FAIL_REASON
            fate_code = rule.code or "500"
        with self._commit_lock:  # "the previous accepted create" must be well defined
            answered = self._answered_id(protocol)
            self._journal.append(task, fate_code)
            self.ledger.append(LedgerEntry(protocol, task_id, client_id, body, task.created,
                                           answered_id=answered and answered[0]))  # fmt: skip
        if answered is not None:
            self._answer.value = (task_id, answered[1])
        self._start(task, fate_code)
        return task

    def _answered_id(self, protocol: str) -> tuple[str, str] | None:
        """(what the ledger records, the JSON text answered) when an ANSWER fault fires."""
        previous = self.ledger.for_protocol(protocol)
        rule = self.picker.pick(protocol, "create", ANSWER_KINDS if previous else ANSWER_KINDS[:1])
        if rule is None:
            return None
        if rule.kind == "weird_task_id":
            return rule.answered_id, rule.answered_id
        earlier = previous[-1].task_id
        return earlier, json.dumps(earlier)[1:-1]

    def _start(self, task: Task, fate_code: str | None) -> None:
        self.store.add(task)
        if task.fate == "fail":
            self.store.finish(task, Outcome(reason=task.fate_reason, code=fate_code or "500"))
        elif task.fate == "normal":
            self._pool.submit(self._work, task)

    def _work(self, task: Task) -> None:
        try:
            outcome = self._generate(task.protocol, task.spec, task.task_id)
        except Exception as exc:  # a bug or a broken ffmpeg must fail the task, not hang it
            outcome = Outcome(reason=f"internal error: {exc}", code="500")
        self.store.finish(task, outcome)

    def _generate(self, protocol: str, spec: TaskSpec, task_id: str) -> Outcome:
        try:
            image = self.input_path(spec.image_url, "image_url")
            video = self.input_path(spec.video_url, "video_url")
            image_sha = self.renderer.sha256(image)
            video_sha = self.renderer.sha256(video)
            image_info = self.renderer.probe(image, image_sha)
            video_info = self.renderer.probe(video, video_sha)
        except InputProblem as exc:
            return Outcome(reason=str(exc), code="422")
        except MediaError as exc:
            return Outcome(reason=f"input media unreadable: {exc.reason}", code="422")
        reason = check_media(RULES[protocol], image_info, video_info, spec.orientation)
        if reason is not None:
            return Outcome(reason=reason, code="422")
        self.ledger.bill(task_id, video_info.duration or 0.0)
        rendered = self.renderer.render(
            image, video, image_sha=image_sha, video_sha=video_sha, video_info=video_info,
            mode=spec.mode, sound=spec.sound,
        )  # fmt: skip
        return Outcome(rendered=rendered)

    # ------------------------------------------------------------------ URLs and files

    def file_url(self, base_url: str, path: Path) -> str:
        token = self.store.add_file(path.resolve())
        return f"{base_url}/files/{token}/{path.name}"

    def save_upload(self, upload_path: str, file_name: str, data: bytes) -> Path:
        """Store an uploaded file (same path = overwrite, like Kie); ValueError on a bad name."""
        target = self.uploads_dir / self.upload_relpath(upload_path, file_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target

    @staticmethod
    def upload_relpath(upload_path: str, file_name: str) -> str:
        segments = [s for s in upload_path.strip("/").split("/") if s] + [file_name]
        for segment in segments:
            if not _SAFE_SEGMENT.match(segment) or segment in {".", ".."}:
                raise ValueError(f"unsafe path segment {segment!r}")
        return "/".join(segments)

    def own_file(self, url: str) -> Path | None:
        """The local file behind one of the sandbox's own input or result URLs, if it is one."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not _loopback(parts.hostname):
            return None
        path = unquote(parts.path)
        # Uploads live on disk, so they stay ours after a restart on another port (the
        # embedded sandbox gets a new port every run); /files/ tokens live in memory only.
        if parts.port != self.port and not path.startswith("/tempfile/"):
            return None
        return self._path_for(path)

    def _path_for(self, path: str) -> Path | None:
        if path.startswith("/tempfile/"):
            rel = path[len("/tempfile/") :]
            segments = rel.split("/")
            try:
                self.upload_relpath("/".join(segments[:-1]), segments[-1])
            except ValueError:
                return None
            candidate = self.uploads_dir / rel
            return candidate if candidate.is_file() else None
        if path.startswith("/files/"):
            token = path[len("/files/") :].split("/", 1)[0]
            return self.store.file(token)
        return None

    def input_path(self, url: str, field: str) -> Path:
        """A local copy of an input URL: own files straight from disk, loopback URLs fetched."""
        own = self.own_file(url)
        if own is not None:
            if not own.is_file():
                raise InputProblem(f"{field} could not be fetched: file not found")
            return own
        data = self.fetch(url, field)
        self.fetch_dir.mkdir(parents=True, exist_ok=True)
        target = self.fetch_dir / f"{self.next_seq()}-{Path(urlsplit(url).path).name or 'input'}"
        target.write_bytes(data)
        return target

    def fetch(self, url: str, field: str) -> bytes:
        """Download an http URL on loopback; anything else is an unreachable input."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InputProblem(f"{field} must be an http(s) URL")
        if not _loopback(parts.hostname):
            raise InputProblem(
                f"{field} could not be fetched: the sandbox only fetches loopback URLs "
                f"(host {parts.hostname})"
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
            raise InputProblem(f"{field} could not be fetched: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise InputProblem(f"{field} could not be fetched: {exc}") from None
        if len(data) > MAX_FETCH_BYTES:
            raise InputProblem(f"{field} is larger than {MAX_FETCH_BYTES // 1024**2} MB")
        return data

    def _serve_files(self, req: Request) -> Reply | None:
        if req.path.startswith("/results/"):
            return results.serve(req, self.store, self.picker)
        path = self._path_for(unquote(req.path))
        if path is None:
            return None
        if not path.is_file():
            return json_reply(404, {"code": 404, "msg": "file not found"})
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Reply(200, headers={"Content-Type": content_type}, file=path)


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
