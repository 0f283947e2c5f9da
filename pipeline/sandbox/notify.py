"""Which callbacks a task gets, and when: its end, and the CALLBACK faults (:mod:`.faults`).

A task whose create named a callback URL (each protocol says where: :meth:`callback_url`) is
called back once its work has ended and its latency is over; ``callback_drop``,
``callback_delay`` and ``callback_duplicate`` are drawn then. ``callback_forged`` is drawn at
the create and sends, at once, a callback for an unknown task id or an early "success" of this
running task. Delivery is :mod:`.callbacks`' job; the bodies are each protocol's.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.sandbox.callbacks import Callbacks
from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.picker import FaultPicker
from pipeline.sandbox.profile import Latency
from pipeline.sandbox.protocols import MODULES
from pipeline.sandbox.render import Rendered
from pipeline.sandbox.service import Service
from pipeline.sandbox.store import TERMINAL, Outcome, Task
from pipeline.sandbox.wire import Callback

_AT_END = ("callback_drop", "callback_delay", "callback_duplicate")


class Notifier:
    """Schedules the callbacks of a sandbox's tasks on its :class:`.callbacks.Callbacks`."""

    def __init__(
        self,
        service: Service,
        picker: FaultPicker,
        callbacks: Callbacks,
        base_url: Callable[[], str],
    ) -> None:
        self.service = service
        self.picker = picker
        self.callbacks = callbacks
        self._base_url = base_url

    def _latency(self, task: Task) -> Latency:
        return self.service.latency(task.protocol)

    def created(self, task: Task) -> None:
        """After a create: a forged callback, when the profile asks for one."""
        url = MODULES[task.protocol].callback_url(task)
        if not url:
            return
        rule = self.picker.pick(task.protocol, "callback", ("callback_forged",))
        if rule is not None:
            self.callbacks.schedule(time.time(), task.protocol, task.task_id, "forged",
                                    lambda: self._forged(task, rule))  # fmt: skip

    def ended(self, task: Task) -> None:
        """After a task's work ended (or it was canceled): its callback, at its due time."""
        url = MODULES[task.protocol].callback_url(task)
        if not url:
            return
        rule = self.picker.pick(task.protocol, "callback", _AT_END)
        if rule is not None and rule.kind == "callback_drop":
            self.callbacks.record_dropped(task.protocol, task.task_id, url)
            return
        due = max(time.time(), task.created + task.min_age(self._latency(task)))
        if rule is not None and rule.kind == "callback_delay":
            due += rule.seconds
        self.callbacks.schedule(
            due, task.protocol, task.task_id, "final", lambda: self._final(task)
        )
        if rule is not None and rule.kind == "callback_duplicate":
            self.callbacks.schedule(due, task.protocol, task.task_id, "duplicate",
                                    lambda: self._final(task))  # fmt: skip

    def _final(self, task: Task) -> Callback | None:
        # Shown as a status query would show it now (and from now on: a callback that said
        # "success" must not be contradicted by the next poll).
        phase = self.service.store.peek(task, self._latency(task))
        if phase not in TERMINAL:
            return None
        return MODULES[task.protocol].callback(self.service, task, phase, self._base_url())

    def _forged(self, task: Task, rule: FaultRule) -> Callback | None:
        fake = copy.copy(task)  # shallow: only fields the body reads are replaced below
        fake.outcome = Outcome(rendered=Rendered(Path("forged.mp4"), 5.0, 0, 0, 0))
        fake.finished = time.time()
        fake.shown_terminal = True
        fake.bad_url = f"{self._base_url()}/results/{secrets.token_hex(12)}.mp4"  # answers 404
        if rule.forge == "unknown_task":
            fake.task_id = f"forged-{secrets.token_hex(8)}"
            fake.client_id = None
        return MODULES[task.protocol].callback(self.service, fake, "succeeded", self._base_url())
