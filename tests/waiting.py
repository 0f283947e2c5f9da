"""Waiting on a condition with a deadline: how a test waits for a subprocess or a server.

A fixed sleep is either too short on a busy machine (the test fails) or too long everywhere (the
suite crawls). ``wait_until`` polls a predicate until it holds, failing the test only after a
generous deadline, with what was awaited and the last thing seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: A bound on a wait for something that will happen, not a timing assertion: generous, so two
#: busy loops and another suite on the same two cores do not fail the test.
WAIT_LIMIT = 120.0
INTERVAL = 0.05


def wait_until(
    predicate: Callable[[], T], timeout: float = WAIT_LIMIT, what: str = "a condition"
) -> T:
    """The first truthy answer of ``predicate``, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        answer = predicate()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(
                f"gave up after {timeout:g} s waiting for {what}; last: {answer!r}"
            )
        time.sleep(INTERVAL)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]], within: float = WAIT_LIMIT, what: str = "a condition"
) -> T:
    """:func:`wait_until` inside an event loop, for an async predicate (``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        answer = await predicate()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within:g} s waiting for {what}; last: {answer!r}")
        await asyncio.sleep(INTERVAL)
