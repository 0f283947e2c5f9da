"""Why a batch stops taking new work, and how it stops at once when it must.

Two ways to stop, decided once here:

- :meth:`Halt.stop_new`: no new creates from now on; everything already paid for is still polled
  and downloaded (a rejected key, no credits, the budget, a full disk, an outage).
- :meth:`Halt.abort`: stop now (Ctrl-C, SIGTERM, a crash of the poller): creates already on the
  wire get :data:`GRACE` seconds to answer, so their task ids are committed, then the run's main
  task is cancelled. The next run collects what is still generating.

The first reason wins; its exit code is the run's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

GRACE = 1.5
"""Seconds an in-flight create may take to answer after an abort before it is cancelled."""
INTERNAL = 3
"""Exit code of a run stopped by an internal error (a batch-wide stop, like a full disk)."""


class Halt:
    """The stop decision of one run: reason, exit code, and the abort of its main task."""

    def __init__(self, on_stop: Callable[[str], None]) -> None:
        self.reason: str | None = None
        self.code = 0
        self.aborted = False
        self._on_stop = on_stop
        self._main: asyncio.Task[Any] | None = None
        self._creates_in_flight: Callable[[], int] = lambda: 0

    def attach(self, main: asyncio.Task[Any], creates_in_flight: Callable[[], int]) -> None:
        """The task to cancel on abort, and how many creates are on the wire right now."""
        self._main = main
        self._creates_in_flight = creates_in_flight

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def stop_new(self, reason: str, code: int) -> None:
        """No new creates from now on; the first reason wins."""
        if self.reason is None:
            self.reason = reason
            self.code = code
            self._on_stop(reason)

    def abort(self, reason: str, code: int) -> None:
        """Stop now: let creates on the wire answer briefly, then cancel the main task.

        A second abort (a second Ctrl-C) cancels at once.
        """
        self.stop_new(reason, code)
        main = self._main
        if main is None or main.done():
            return
        if self.aborted:
            main.cancel()
            return
        self.aborted = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE

        def cancel_when_quiet() -> None:
            if self._creates_in_flight() and loop.time() < deadline:
                loop.call_later(0.05, cancel_when_quiet)
            elif not main.done():
                main.cancel()

        cancel_when_quiet()

    def internal_error(self, where: str, exc: BaseException, *, abort: bool) -> str:
        """Stop for a bug: a clear message, never a traceback; the state stays consistent."""
        reason = (
            f"internal error in {where}: {type(exc).__name__}: {exc}; the state is consistent: "
            "run again to continue (and please report this)"
        )
        if abort:
            self.abort(reason, INTERNAL)
        else:
            self.stop_new(reason, INTERNAL)
        return reason
