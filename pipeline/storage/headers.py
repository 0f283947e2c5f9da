"""What HTTP headers say that every caller reads the same way: Retry-After.

A server's "retry after" is a floor for our wait, never a promise: it is clamped to
:data:`MAX_RETRY_AFTER`, and an unreadable value means the server said nothing.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Retry-After values are clamped to this: an hour is the longest a batch should sit idle on
#: one server's say-so (a bogus "retry in a year" must not stall a night's run).
MAX_RETRY_AFTER = 3600.0


_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: str | None, *, now: datetime | float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), clamped to
    [0, :data:`MAX_RETRY_AFTER`]; None when absent or unparseable.

    ``now`` dates an HTTP-date against: a datetime (naive means UTC) or POSIX seconds (what an
    injected ``time.time`` clock gives); the current time when omitted.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" means UTC with unknown origin (RFC 5322)
            when = when.replace(tzinfo=UTC)
        seconds = (when - _aware(now)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _aware(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)
