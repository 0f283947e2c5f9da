"""Provider slots: how many tasks are in flight at the provider, and how well they are used."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Lease:
    """One slot held by one job; releasing it twice is harmless (both paths of a job may try)."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._held = True

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._slots._release()


class Slots:
    """Tasks in flight at the provider. Resumed tasks take a slot without waiting for one.

    Also measures occupancy: the share of slots in use while some job was waiting for one (the
    benchmark's "slots stay busy while jobs remain").
    """

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self.used = 0
        self.waiting = 0
        self._cond = asyncio.Condition()
        self._clock = clock
        self._mark = clock()
        self.busy_time = 0.0
        self.contended_time = 0.0

    def _account(self) -> None:
        now = self._clock()
        if self.waiting:  # someone wants a slot: every free one is capacity lost
            self.busy_time += min(self.used, self.size) * (now - self._mark)
            self.contended_time += self.size * (now - self._mark)
        self._mark = now

    async def acquire(self) -> Lease:
        async with self._cond:
            self._account()
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.used < self.size)
            finally:
                self._account()
                self.waiting -= 1
            self.used += 1
        return Lease(self)

    def take(self) -> Lease:
        """A slot for a task that is already running at the provider: never waits."""
        self._account()
        self.used += 1
        return Lease(self)

    async def _release(self) -> None:
        async with self._cond:
            self._account()
            self.used -= 1
            self._cond.notify()

    def occupancy(self) -> float | None:
        self._account()
        return None if not self.contended_time else self.busy_time / self.contended_time
