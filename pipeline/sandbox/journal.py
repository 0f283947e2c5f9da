"""The task journal: accepted tasks written to ``data_dir/tasks.jsonl`` so a restarted sandbox
on the same data directory still answers for them, as the real service would after our crash.

The embedded sandbox is restarted by every ``run``; without the journal a resumed batch would
poll task ids the new server never heard of. One JSON line per accepted task, written before the
create is answered. Outcomes are not journaled: the work is redone on load (renders come from
their files on disk); only when a task ended is (a ``{"finished": ...}`` line), so retention
windows (Replicate's ``expire_after``) keep running across restarts.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from pipeline.sandbox.store import Task, TaskSpec


def task_line(task: Task, fate_code: str | None) -> str:
    doc: dict[str, Any] = {
        "protocol": task.protocol,
        "task_id": task.task_id,
        "client_id": task.client_id,
        "body": task.body,
        "spec": asdict(task.spec),
        "created": task.created,
        "fate": task.fate,
        "fate_reason": task.fate_reason,
        "fate_code": fate_code,
        "extra": task.extra,
        "bad_url": task.bad_url,
    }
    return json.dumps(doc, separators=(",", ":"))


def task_from_line(line: str) -> tuple[Task, str | None]:
    """Parse one journal line; ValueError/KeyError/TypeError when it is damaged."""
    doc = json.loads(line)
    task = Task(
        protocol=str(doc["protocol"]),
        task_id=str(doc["task_id"]),
        client_id=doc["client_id"],
        body=dict(doc["body"]),
        spec=TaskSpec(**doc["spec"]),
        created=float(doc["created"]),
        fate=doc["fate"],
        fate_reason=doc["fate_reason"],
        extra=dict(doc["extra"]),
        bad_url=doc.get("bad_url"),  # absent in journals written before the fault existed
    )
    return task, doc.get("fate_code")


class TaskJournal:
    """Append-only, thread-safe; a torn last line (killed mid-write) is skipped on load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None
        self._closed = False

    def load(self) -> list[tuple[Task, str | None]]:
        if not self.path.is_file():
            return []
        loaded: dict[str, tuple[Task, str | None]] = {}
        finished: dict[str, float] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if line.startswith('{"finished"'):
                    doc = json.loads(line)
                    finished[str(doc["task_id"])] = float(doc["finished"])
                    continue
                task, fate_code = task_from_line(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: the task it described was never answered
            loaded[task.task_id] = (task, fate_code)
        for task_id, at in finished.items():
            if task_id in loaded:
                loaded[task_id][0].restored_finish = at
        return list(loaded.values())

    def append_finish(self, task: Task) -> None:
        """Note when ``task`` ended (once; a reloaded task that ended before is not noted again)."""
        if task.finished is None or task.restored_finish is not None:
            return
        self._write(json.dumps({"finished": task.finished, "task_id": task.task_id}) + "\n")

    def append(self, task: Task, fate_code: str | None) -> None:
        self._write(task_line(task, fate_code) + "\n")

    def _write(self, line: str) -> None:
        with self._lock:
            if self._closed:  # a render ending after stop(): the data directory may be gone
                return
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()  # in the OS before the answer: survives our process dying

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._handle is not None:
                self._handle.close()
                self._handle = None
