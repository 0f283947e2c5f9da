"""Text from outside (provider messages, task ids, URLs) made safe to print and to log.

A provider's failure reason may carry terminal escapes (``\\x1b[2J`` clears a screen), bidi
overrides that make a log line read differently from what it says, or lone surrogates that
crash a UTF-8 stream. :func:`printable` escapes all of them visibly, so the text still says what
the provider sent.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, bidi embeddings/overrides/isolates and marks, and lone surrogates.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_BUT_NEWLINES = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control, bidi-override and surrogate characters escaped (``\\x1b``).

    ``keep_newlines`` leaves ``\\n`` alone, for our own multi-line messages.
    """
    pattern = _UNSAFE_BUT_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, text)
