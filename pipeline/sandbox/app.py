"""The sandbox service without its HTTP socket: routing, request-level faults, served files.

:mod:`.server` moves bytes and calls :meth:`SandboxApp.handle` once per request; the protocol
modules (registered in :mod:`.protocols`) turn requests into calls on the app, which they see
only through the :class:`.service.Service` interface; task work lives in :mod:`.tasks`, files in
:mod:`.files`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.media.tools import MediaTools
from pipeline.sandbox import acedata, hostile, kling, replicate, results
from pipeline.sandbox.callbacks import Callbacks
from pipeline.sandbox.faults import REQUEST_KINDS, FaultRule
from pipeline.sandbox.files import Files, upload_relpath
from pipeline.sandbox.instant import canned_result
from pipeline.sandbox.keys import SandboxKeys
from pipeline.sandbox.ledger import Ledger
from pipeline.sandbox.notify import Notifier
from pipeline.sandbox.picker import FaultPicker
from pipeline.sandbox.profile import FaultProfile, Latency
from pipeline.sandbox.protocols import MODULES
from pipeline.sandbox.render import Renderer
from pipeline.sandbox.replicate_api import problem
from pipeline.sandbox.service import Handler, Service
from pipeline.sandbox.store import Outcome, ResultLink, Task, TaskSpec, TaskStore
from pipeline.sandbox.tasks import Tasks
from pipeline.sandbox.wire import Reply, Request, json_reply, malformed


class SandboxApp:
    """State and behaviour of one sandbox: keys, profile, tasks, ledger, renders.

    It is the :class:`.service.Service` every protocol handler is given.
    """

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
        self.ledger = Ledger()
        self.store = TaskStore()
        self.picker = FaultPicker(profile)
        self.renderer = Renderer(tools, data_dir / "renders")
        self.files = Files(data_dir, self.store)
        ages = random.Random(profile.seed)  # noqa: S311 - task durations, not secrets
        canned = canned_result(tools, data_dir / "instant") if profile.instant else None
        self.tasks = Tasks(
            store=self.store, ledger=self.ledger, picker=self.picker, renderer=self.renderer,
            files=self.files, journal_path=data_dir / "tasks.jsonl", instant=canned,
            ages=lambda protocol: self.latency(protocol).draw(ages),
        )  # fmt: skip
        self._seq = 0
        self._seq_lock = threading.Lock()
        self.base_url = ""
        """Set by the server once bound: ``http://host:port``, for URLs in callbacks."""
        self.callbacks = Callbacks(
            timeout=profile.callback_timeout, attempts=profile.callback_attempts
        )
        self.notifier = Notifier(self, self.picker, self.callbacks, lambda: self.base_url)
        self.tasks.on_end = self.notifier.ended

    @property
    def port(self) -> int:
        """Set by the server once bound; identifies the sandbox's own URLs."""
        return self.files.port

    @port.setter
    def port(self, value: int) -> None:
        self.files.port = value

    def close(self) -> None:
        self.callbacks.close()
        self.tasks.close()

    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def latency(self, protocol: str) -> Latency:
        return self.profile.latency_for(protocol)

    # ------------------------------------------------------------------ Service, delegated

    def commit(
        self,
        protocol: str,
        task_id: str,
        body: dict[str, Any],
        spec: TaskSpec,
        *,
        client_id: str | None = None,
        extra: dict[str, Any] | None = None,
        failure: Outcome | None = None,
    ) -> Task:
        task = self.tasks.commit(protocol, task_id, body, spec, client_id=client_id, extra=extra,
                                 failure=failure)  # fmt: skip
        self.notifier.created(task)
        return task

    def cancel(self, task: Task) -> bool:
        if not self.store.cancel(task):
            return False
        self.tasks.ended(task)
        return True

    def fetch(self, url: str, field: str) -> bytes:
        return self.files.fetch(url, field)

    def file_url(self, base_url: str, path: Path) -> str:
        return self.files.file_url(base_url, path)

    def save_upload(self, upload_path: str, file_name: str, data: bytes) -> Path:
        return self.files.save_upload(upload_path, file_name, data)

    def upload_relpath(self, upload_path: str, file_name: str) -> str:
        return upload_relpath(upload_path, file_name)

    def upload_file(self, relpath: str) -> Path | None:
        return self.files.upload_file(relpath)

    def delete_upload(self, upload_path: str) -> bool:
        return self.files.delete_upload(upload_path)

    def inline_url(self, data: bytes, name: str) -> str:
        return self.files.inline_url(data, name)

    # ------------------------------------------------------------------ requests

    def handle(self, req: Request) -> Reply:
        """Answer one request, with any fault the profile injects on its endpoint."""
        if req.method in ("GET", "HEAD"):
            if req.path.startswith("/results/"):
                return results.serve(req, self.store, self.picker, self._data_removed)
            served = self.files.serve(req)
            if served is not None:
                return served
        for protocol in self.protocols:
            module = MODULES[protocol]
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
        """``handler``, with its answer's task id replaced when the commit said so."""

        def run(service: Service, req: Request) -> Reply:
            self.tasks.begin_answer()
            reply = handler(service, req)
            chosen = self.tasks.take_answer()
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
        if req.path.startswith("/v1/videos/") and "kling" in self.protocols:
            return kling.error(404, 1202, "method or resource not found")
        if req.path.startswith("/v1/") and "replicate" in self.protocols:
            return problem(404, "Not found", "The requested resource could not be found.")
        if req.path.startswith(("/fal-ai/", "/fal-media/")) and "fal" in self.protocols:
            return json_reply(404, {"detail": "Not Found"})
        return json_reply(404, {"code": 404, "msg": "Not Found", "data": None})

    def _data_removed(self, link: ResultLink) -> bool:
        """Whether a result URL's file is gone with its task's data (Replicate's retention)."""
        task = self.store.get(link.protocol, link.task_id)
        return (
            link.protocol == "replicate" and task is not None and replicate.data_removed(self, task)
        )
