"""Tasks the sandbox accepted, what each status query shows of them, and the URLs it serves.

A task becomes terminal on a status query when its work is done (media checked, video rendered
or a failure decided), it was queried more than ``latency.polls`` times and it is at least
``latency.seconds`` old. Once shown terminal it stays terminal. A canceled task (fal, Replicate)
is terminal at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.sandbox.profile import Latency
from pipeline.sandbox.render import Rendered

Phase = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: tuple[Phase, ...] = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class TaskSpec:
    """What every protocol's create boils down to."""

    model: str
    image_url: str
    video_url: str
    orientation: str
    mode: str
    """std | pro (Kie's 720p/1080p are mapped)."""
    sound: bool


@dataclass(frozen=True)
class Outcome:
    """The end of a task's work: a render, or a failure reason (with the service's code)."""

    rendered: Rendered | None = None
    reason: str | None = None
    code: str = "500"
    kind: str | None = None
    """Machine error type of a failure (fal's names: image_too_small, ...; :mod:`.rules`)."""
    field: str | None = None
    """The input at fault (image_url | video_url), when the failure is about one."""
    canceled: bool = False


@dataclass
class Task:
    """One accepted task; mutated only under the store's lock."""

    protocol: str
    task_id: str
    client_id: str | None
    body: dict[str, Any]
    spec: TaskSpec
    created: float
    fate: Literal["normal", "fail", "never"] = "normal"
    fate_reason: str | None = None
    outcome: Outcome | None = None
    polls: int = 0
    shown_terminal: bool = False
    finished: float | None = None
    token: str | None = None
    bad_url: str | None = None
    """bad_result_url: answered as the result URL instead of a real one."""
    done: threading.Event = field(default_factory=threading.Event)
    extra: dict[str, Any] = field(default_factory=dict)
    """Protocol-specific constant facts (ids, trace ids, callback URLs) fixed at create time."""
    restored_finish: float | None = None
    """When the task ended under an earlier sandbox on this data directory (journal)."""
    age: float | None = None
    """This task's own minimum age (``latency.spread``); None: ``latency.seconds``."""
    polled_at: list[float] = field(default_factory=list)
    """When each status query about it came (epoch seconds): benchmarks of polling read it."""

    def min_age(self, latency: Latency) -> float:
        """How old the task must be before it may show its end."""
        return latency.seconds if self.age is None else self.age


@dataclass
class ResultLink:
    task_id: str
    protocol: str
    path: Path
    expired: bool = False
    data: bytes | None = None
    """The video's bytes when served from memory (instant mode), else read from ``path``."""


class TaskStore:
    """Tasks by id and by client id, result links and served input files; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._by_client: dict[tuple[str, str], Task] = {}
        self._links: dict[str, ResultLink] = {}
        self._files: dict[str, Path] = {}

    def add(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.task_id] = task
            if task.client_id is not None:
                self._by_client[(task.protocol, task.client_id)] = task

    def get(self, protocol: str, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return task if task is not None and task.protocol == protocol else None

    def by_client_id(self, protocol: str, client_id: str) -> Task | None:
        with self._lock:
            return self._by_client.get((protocol, client_id))

    def running_count(self) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if not t.shown_terminal)

    def finish(self, task: Task, outcome: Outcome, at: float | None = None) -> bool:
        """Record the end of the task's work (at ``at``, default now); False when a cancel came
        first (the cancel is the task's end)."""
        with self._lock:
            if task.outcome is not None and task.outcome.canceled:
                return False
            task.outcome = outcome
            task.finished = at if at is not None else task.restored_finish or time.time()
        task.done.set()
        return True

    def cancel(self, task: Task, now: float | None = None) -> bool:
        """Cancel a task that has not ended yet (as shown to a client); False when it had."""
        with self._lock:
            if task.shown_terminal or (task.outcome is not None and task.outcome.canceled):
                return False
            task.outcome = Outcome(reason="canceled by the client", code="canceled",
                                   canceled=True)  # fmt: skip
            task.finished = time.time() if now is None else now
            task.shown_terminal = True
        task.done.set()
        return True

    def current(self, task: Task, latency: Latency, now: float | None = None) -> Phase:
        """What the last status query showed, or would show now, without counting a query."""
        now = time.time() if now is None else now
        with self._lock:
            return self._phase(task, latency, now, counted=task.polls)

    def ended_at(self, task: Task, latency: Latency) -> float | None:
        """When the task ended for its service: work done and latency over, polled or not."""
        with self._lock:
            if task.outcome is None or task.finished is None or task.fate == "never":
                return None
            if task.outcome is not None and task.outcome.canceled:
                return task.finished
            return max(task.finished, task.created + task.min_age(latency))

    def observe(self, task: Task, latency: Latency, now: float | None = None) -> Phase:
        """Count one status query of ``task`` and say what it shows."""
        now = time.time() if now is None else now
        with self._lock:
            task.polls += 1
            task.polled_at.append(now)
            return self._phase(task, latency, now, counted=task.polls)

    def peek(self, task: Task, latency: Latency, now: float | None = None) -> Phase:
        """What a query would show, without counting one (synchronous answers, callbacks)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._phase(task, latency, now, counted=latency.polls + 1)

    def _phase(self, task: Task, latency: Latency, now: float, counted: int) -> Phase:
        ready = (
            task.outcome is not None
            and task.fate != "never"
            and counted > latency.polls
            and now - task.created >= task.min_age(latency)
        )
        if task.shown_terminal or ready:
            task.shown_terminal = True
            if task.outcome is None:  # ready implies it; shown_terminal was ready once
                raise RuntimeError(f"sandbox bug: task {task.task_id} terminal without an outcome")
            if task.outcome.canceled:
                return "canceled"
            return "failed" if task.outcome.rendered is None else "succeeded"
        return "queued" if counted <= 1 else "running"

    # ------------------------------------------------------------------ served URLs

    def result_url(self, task: Task, base_url: str, *, fresh: bool = False) -> str:
        """The task's current result URL; a new one when the last expired or ``fresh``."""
        if task.outcome is None or task.outcome.rendered is None:
            raise RuntimeError(f"sandbox bug: task {task.task_id} has no video to link to")
        if task.bad_url is not None:
            return task.bad_url
        with self._lock:
            link = self._links.get(task.token or "")
            if link is None or link.expired or fresh:
                task.token = secrets.token_hex(12)
                rendered = task.outcome.rendered
                self._links[task.token] = ResultLink(
                    task.task_id, task.protocol, rendered.path, data=rendered.data
                )
            return f"{base_url}/results/{task.token}.mp4"

    def link(self, token: str) -> ResultLink | None:
        with self._lock:
            return self._links.get(token)

    def expire(self, token: str | None = None) -> int:
        """Expire one result link, or every link issued so far; returns how many."""
        with self._lock:
            links = [self._links[token]] if token in self._links else []
            if token is None:
                links = list(self._links.values())
            for link in links:
                link.expired = True
            return len(links)

    def add_file(self, path: Path) -> str:
        """Register a local file to serve; returns its token."""
        token = secrets.token_hex(8)
        with self._lock:
            self._files[token] = path
        return token

    def file(self, token: str) -> Path | None:
        with self._lock:
            return self._files.get(token)
