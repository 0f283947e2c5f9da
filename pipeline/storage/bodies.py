"""Response bodies decoded with a bound, whatever the server's Content-Encoding claims.

httpx decodes gzip/deflate itself, but one compressed network read of 64 KiB can expand to about
64 MiB before a caller sees a byte (a "zip bomb"), so a size cap checked on decoded chunks comes
too late. Readers here take the raw bytes (``response.aiter_raw()``) and decode them with zlib's
``max_length``: no more than the cap, plus one network read, is ever held.
"""

from __future__ import annotations

import zlib

from pipeline.settings import printable

#: What API calls advertise: the encodings :class:`BoundedDecoder` can bound (no br, no zstd).
ACCEPT_ENCODING = "gzip, deflate"


class BodyError(Exception):
    """A body that cannot be used; the message says why (no URL, no secret)."""


class BodyTooLarge(BodyError):
    """The decoded body passed its cap."""


class BodyUndecodable(BodyError):
    """The body does not decode with the encoding it claims, or claims one we do not know."""


class BoundedDecoder:
    """Raw body bytes in, decoded bytes out; :class:`BodyTooLarge` past ``limit`` decoded bytes."""

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        self.limit = limit
        self.size = 0
        """Decoded bytes handed out so far."""
        self._fed = False
        self._raw_deflate_fallback = encoding == "deflate"
        self._zlib: zlib._Decompress | None
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            raise BodyUndecodable(f"unsupported Content-Encoding {printable(encoding[:40])!r}")

    def feed(self, raw: bytes) -> bytes:
        self._fed = self._fed or bool(raw)
        if self._zlib is None:
            return self._count(raw)
        room = self.limit - self.size + 1  # one byte more than allowed proves the overflow
        try:
            out = self._zlib.decompress(raw, room)
        except zlib.error:
            if not self._raw_deflate_fallback:
                raise BodyUndecodable("the compressed body is corrupt") from None
            # "deflate" is often sent as raw deflate without the zlib header (httpx does this too).
            self._raw_deflate_fallback = False
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.feed(raw)
        self._raw_deflate_fallback = False
        return self._count(out)

    def finish(self) -> bytes:
        """The last decoded bytes; :class:`BodyUndecodable` when the compressed stream was cut."""
        if self._zlib is None or not self._fed:  # an empty body says nothing about encodings
            return b""
        if not self._zlib.eof:
            raise BodyUndecodable("the compressed body ends before its end marker")
        return self._count(self._zlib.flush())

    def _count(self, out: bytes) -> bytes:
        self.size += len(out)
        if self.size > self.limit:
            raise BodyTooLarge(f"the body is over {self.limit} bytes")
        return out
