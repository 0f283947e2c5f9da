"""Accepting creates and doing their work: the ledger, the journal, TASK and ANSWER faults, the
media checks and the render.

A create is committed (task in the store, line in the journal, entry in the ledger) before its
answer is written, so a connection reset after the commit still leaves a billed task behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.errors import MediaError
from pipeline.media.probe import MediaInfo
from pipeline.sandbox.faults import ANSWER_KINDS, DEFAULT_FAIL_REASON, TASK_KINDS
from pipeline.sandbox.files import Files
from pipeline.sandbox.journal import TaskJournal
from pipeline.sandbox.ledger import Ledger, LedgerEntry
from pipeline.sandbox.picker import FaultPicker
from pipeline.sandbox.render import Rendered, Renderer
from pipeline.sandbox.rules import RULES, media_breach
from pipeline.sandbox.store import Outcome, Task, TaskSpec, TaskStore
from pipeline.sandbox.wire import InputProblem


class Tasks:
    """Thread-safe; the media work runs on two background threads."""

    def __init__(
        self,
        *,
        store: TaskStore,
        ledger: Ledger,
        picker: FaultPicker,
        renderer: Renderer,
        files: Files,
        journal_path: Path,
        instant: Rendered | None = None,
        ages: Callable[[str], float | None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.picker = picker
        self.renderer = renderer
        self.files = files
        self.instant = instant
        """Instant mode's canned result: every task succeeds with it at once."""
        self.ages = ages
        """Draws a new task's own minimum age by protocol (``latency.spread``); None: none."""
        self.on_end: Callable[[Task], None] | None = None
        """Called once when a task's work ends in this sandbox (callbacks hang on it)."""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-media")
        self._commit_lock = threading.Lock()
        # The (task id, answered id text) of the create this thread is answering, when an
        # ANSWER fault (weird_task_id, duplicate_task_id) makes the answer lie about the id.
        self._answer = threading.local()
        self._journal = TaskJournal(journal_path)
        for task, fate_code in self._journal.load():
            self._start(task, fate_code)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._journal.close()

    def begin_answer(self) -> None:
        """Called before a handler runs: no answered-id substitution is pending."""
        self._answer.value = None

    def take_answer(self) -> tuple[str, str] | None:
        """The (task id, answered id text) substitution the handler's commit asked for, once."""
        chosen: tuple[str, str] | None = getattr(self._answer, "value", None)
        self._answer.value = None
        return chosen

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
        """Accept a create: the task exists, is in the ledger, and its work is queued.

        ``failure`` is a failure decided at once (fal validates its queued inputs only when it
        runs them); TASK faults are drawn only for the other creates. The ledger records the
        task as billed even when an ANSWER fault makes the create's answer carry another id
        (``LedgerEntry.answered_id``).
        """
        rule = None if failure is not None else self.picker.pick(protocol, "create", TASK_KINDS)
        task = Task(protocol, task_id, client_id, body, spec, created=time.time(),
                    extra=extra or {})  # fmt: skip
        fate_code = None
        if failure is not None:
            task.fate = "fail"
            task.fate_reason = failure.reason
            fate_code = failure.code
        elif rule is not None and rule.kind == "never_finish":
            task.fate = "never"
        elif rule is not None and rule.kind == "bad_result_url":
            task.bad_url = rule.url
        elif rule is not None:
            task.fate = "fail"
            task.fate_reason = rule.message or DEFAULT_FAIL_REASON
            fate_code = rule.code or "500"
        with self._commit_lock:  # "the previous accepted create" must be well defined
            task.age = self.ages(protocol) if self.ages is not None else None
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
        if task.fate == "fail":  # decided at the create: it ended when it was made
            outcome = Outcome(reason=task.fate_reason, code=fate_code or "500")
            self.store.finish(task, outcome, at=task.created)
            self.ended(task)
        elif task.fate == "normal" and self.instant is not None:
            self.ledger.bill(task.task_id, self.instant.duration)  # nothing measured: the clip's
            self.store.finish(task, Outcome(rendered=self.instant))
            self.ended(task)
        elif task.fate == "normal":
            self._pool.submit(self._work, task)

    def ended(self, task: Task) -> None:
        """A task ended in this sandbox: journal when, and tell :attr:`on_end` (once)."""
        if task.restored_finish is not None:  # it ended under an earlier sandbox, which told
            return
        self._journal.append_finish(task)
        if self.on_end is not None:
            self.on_end(task)

    def _work(self, task: Task) -> None:
        try:
            outcome = self._generate(task.protocol, task.spec, task.task_id)
        except Exception as exc:  # a bug or a broken ffmpeg must fail the task, not hang it
            outcome = Outcome(reason=f"internal error: {exc}", code="500")
        if self.store.finish(task, outcome):
            self.ended(task)

    def _generate(self, protocol: str, spec: TaskSpec, task_id: str) -> Outcome:
        found: list[tuple[Path, str, MediaInfo]] = []
        for url, field in ((spec.image_url, "image_url"), (spec.video_url, "video_url")):
            try:
                path = self.files.input_path(url, field)
                digest = self.renderer.sha256(path)
                found.append((path, digest, self.renderer.probe(path, digest)))
            except InputProblem as exc:
                return Outcome(reason=str(exc), code="422", kind="file_download_error",
                               field=field)  # fmt: skip
            except MediaError as exc:
                return Outcome(reason=f"{field} media unreadable: {exc.reason}", code="422",
                               kind="file_download_error", field=field)  # fmt: skip
        (image, image_sha, image_info), (video, video_sha, video_info) = found
        breach = media_breach(RULES[protocol], image_info, video_info, spec.orientation)
        if breach is not None:
            return Outcome(reason=breach.reason, code="422", kind=breach.kind, field=breach.field)
        self.ledger.bill(task_id, video_info.duration or 0.0)
        rendered = self.renderer.render(
            image, video, image_sha=image_sha, video_sha=video_sha, video_info=video_info,
            mode=spec.mode, sound=spec.sound,
        )  # fmt: skip
        return Outcome(rendered=rendered)
