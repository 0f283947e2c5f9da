"""URLs from outside (manifests, provider answers, redirects): checked before use, shown safely.

A result URL is whatever a provider answered, so it may be malformed (``http://[::1``), name a
port no socket can have (``http://h:99999/x``: httpx accepts it, and the socket layer then raises
OverflowError inside an ExceptionGroup, far outside httpx's own error tree), use another scheme
(``ftp://``), or carry a token in its query string and credentials in its authority.
:func:`url_problem` says what is wrong before a request is built; :func:`display_url` is the only
form of a URL that goes into a message or a log line.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from pipeline.settings import printable

#: How much of a URL's host and path a message shows: enough to recognise, not a whole token.
_SHOWN_HOST = 100
_SHOWN_PATH = 80
_SCHEMES = ("http", "https")
#: Longest URL requested: signed CDN URLs are a few KiB; a provider answering more is broken.
MAX_URL_LENGTH = 16 * 1024


def url_problem(url: object) -> str | None:
    """Why ``url`` cannot be requested over http(s), or None when it can (pure)."""
    if not isinstance(url, str) or not url.strip():
        return "the URL is empty"
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is {len(url)} characters long, over {MAX_URL_LENGTH}"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA's UnicodeError and kin
        return f"malformed URL ({printable(str(exc)[:120])})"
    if parsed.scheme not in _SCHEMES:
        scheme = parsed.scheme or url.partition(":")[0]
        return f"not an http(s) URL (scheme {printable(scheme[:20])!r})"
    if not parsed.host:
        return "the URL has no host"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"invalid port {parsed.port}"
    return None


def display_url(url: str) -> str:
    """Scheme, host[:port] and path only: signed URLs carry tokens in their query.

    Works on any text, malformed URLs included (they are what error messages are about), and
    escapes control characters a hostile provider may have put in a URL.
    """
    text = str(url).split("#", 1)[0].split("?", 1)[0]
    if not text.strip():
        return "(no URL)"
    scheme, sep, rest = text.partition("://")
    if not sep:
        return printable(_cut(text, _SHOWN_PATH))
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2].lower()  # never the user:password@ part
    shown = f"{scheme.lower()}://{_cut(host, _SHOWN_HOST)}{_cut(slash + path, _SHOWN_PATH)}"
    return printable(shown)


def host_of(url: str) -> str:
    """The host name of ``url`` (no credentials, no port); ``""`` when it has none."""
    try:
        return printable(urlsplit(url).hostname or "")
    except ValueError:
        return ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Query parameters of presigned URLs that carry a credential: a temporary credentials' session
#: token travels in the URL it signs (SigV4 ``X-Amz-Security-Token``, SigV2 lower case).
_CREDENTIAL_PARAMS = frozenset({"x-amz-security-token"})


def record_url(url: str) -> str:
    """``url`` as it may be written down (state, metadata, lock file): a presigned URL keeps
    its signature (useless once expired, and it grants one GET) but not its session token,
    which is replaced by ``***``. Other URLs are returned as they are."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    fragment = ""
    if "#" in query:
        query, _, rest = query.partition("#")
        fragment = "#" + rest
    parts = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        parts.append(f"{name}=***" if name.lower() in _CREDENTIAL_PARAMS else part)
    return f"{head}?{'&'.join(parts)}{fragment}"
