"""The ledger: every create the sandbox accepted, in order, for tests to count and inspect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LedgerEntry:
    """One accepted create: which protocol, the task id it got, our client id, the request body.

    ``client_id`` is Kling's ``external_task_id`` (None where the protocol has no such field);
    ``at`` is the acceptance time in epoch seconds. ``answered_id`` is set when the answer
    carried another id than the task's own (weird_task_id: the JSON text sent;
    duplicate_task_id: the earlier task's id): the task is billed whatever it was called.
    """

    protocol: str
    task_id: str
    client_id: str | None
    body: dict[str, Any]
    at: float
    answered_id: str | None = None


class Ledger:
    """A thread-safe, append-only list of :class:`LedgerEntry`.

    It is appended to when a task is committed, before the answer is written, so a create whose
    connection is reset after the commit is in the ledger although the client never heard of it.
    """

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._bills: dict[str, float] = {}
        self._lock = threading.Lock()

    def bill(self, task_id: str, seconds: float) -> None:
        """What a task is billed: the length of the driving clip the sandbox received, as a
        provider selling by the second bills it (measured with ffprobe, to the millisecond)."""
        with self._lock:
            self._bills[task_id] = round(seconds, 3)

    def bills(self) -> dict[str, float]:
        """Billed seconds per task id, for tasks whose generation has started."""
        with self._lock:
            return dict(self._bills)

    def append(self, entry: LedgerEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._entries)

    def for_protocol(self, protocol: str) -> list[LedgerEntry]:
        return [e for e in self.snapshot() if e.protocol == protocol]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> LedgerEntry:
        with self._lock:
            return self._entries[index]

    def __repr__(self) -> str:
        return f"Ledger({len(self)} accepted creates)"
