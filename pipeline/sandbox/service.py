"""What a protocol module may use of the sandbox: the interface between the wire protocols
(:mod:`.kie`, :mod:`.acedata`, :mod:`.kling`) and the service (:class:`.app.SandboxApp`).

Protocol modules import this module, never :mod:`.app`; the app imports the protocols (through
:mod:`.protocols`) and hands itself to their handlers. Imports so go one way:
``app -> protocols -> kie, acedata, kling -> service``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.keys import SandboxKeys
from pipeline.sandbox.profile import FaultProfile, Latency
from pipeline.sandbox.store import Outcome, Phase, Task, TaskSpec, TaskStore
from pipeline.sandbox.wire import Callback, Reply, Request


class Service(Protocol):
    """The sandbox as its protocols see it: state to read and the few actions they take."""

    @property
    def keys(self) -> SandboxKeys: ...

    @property
    def profile(self) -> FaultProfile: ...

    @property
    def store(self) -> TaskStore: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def port(self) -> int:
        """The bound port: the sandbox's own URLs are ``http://127.0.0.1:{port}/...``."""
        ...

    def next_seq(self) -> int:
        """A number unique within this sandbox, for ids."""
        ...

    def latency(self, protocol: str) -> Latency: ...

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
        """Accept a create: the task exists, is in the ledger, and its work is queued
        (or, with ``failure``, it has already failed: an input only checked when it runs)."""
        ...

    def fetch(self, url: str, field: str) -> bytes:
        """An input URL's bytes (loopback only); raises InputProblem."""
        ...

    def file_url(self, base_url: str, path: Path) -> str:
        """An http URL on the sandbox serving a local file."""
        ...

    def save_upload(self, upload_path: str, file_name: str, data: bytes) -> Path:
        """Store an upload under ``upload_path/file_name``; ValueError on an unsafe name."""
        ...

    def upload_relpath(self, upload_path: str, file_name: str) -> str: ...

    def upload_file(self, relpath: str) -> Path | None:
        """The stored upload at ``relpath`` under the uploads directory, if there is one."""
        ...

    def delete_upload(self, upload_path: str) -> bool:
        """Remove the uploads under ``upload_path`` (a directory); False when there were none."""
        ...

    def inline_url(self, data: bytes, name: str) -> str:
        """An http URL on the sandbox for input bytes sent inline (base64, data: URIs)."""
        ...

    def cancel(self, task: Task) -> bool:
        """Cancel a task that has not ended (its callback, if any, follows); False if it had."""
        ...


Handler = Callable[[Service, Request], Reply]
"""A protocol endpoint: the request in, the answer out."""

Route = tuple[str, Handler]
"""A handler and the fault endpoint it counts as (create | poll | upload | account)."""


class ProtocolModule(Protocol):
    """What each protocol module provides to the app."""

    def route(self, req: Request) -> Route | None: ...

    def fault_reply(self, rule: FaultRule, req: Request) -> Reply: ...

    def callback_url(self, task: Task) -> str | None:
        """Where the create asked to be called back, or None."""
        ...

    def callback(self, app: Service, task: Task, phase: Phase, base_url: str) -> Callback | None:
        """What the service POSTs to :func:`callback_url` when ``task`` ended in ``phase``."""
        ...
