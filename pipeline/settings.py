"""Process-wide configuration: every default (:data:`DEFAULTS`), what the environment says
(:class:`Settings`), and what may be shown (:func:`redact`, :func:`printable`), plus the
installed version.

This is the only module that reads ``os.environ``: everything else receives a :class:`Settings`.

Redaction has to catch a key the way it comes back from a provider, not only as we sent it: an
error body may quote it percent-encoded (it was in a query string), JSON-escaped, or cut short
("key abcd1234... is invalid"). A password written into a URL's userinfo is a secret too: it is
removed wherever a URL appears in text (:func:`redact`), and URLs are stored and shown without it
(:func:`public_url`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

#: Environment variables whose values are secrets by default (manifests may name others).
DEFAULT_SECRET_VARS = (
    "KIE_API_KEY",
    "ACEDATA_API_KEY",
    "KLING_ACCESS_KEY",
    "KLING_SECRET_KEY",
)

#: Shorter values are not redacted: replacing every "ab" in a log would say nothing and hide much.
MIN_SECRET = 4
#: A cut-short secret is recognised from this many of its first characters on. Shorter secrets
#: (MIN_SECRET..7 characters) are only recognised whole.
MIN_PREFIX = 8

_REDACTED = "***"
# Bearer tokens and JWTs can appear in echoed request headers or URLs; redact their shape too.
_BEARER = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")
# scheme://user:password@host: the password runs to the last "@" of the authority (people do
# write a raw "@" in passwords); the user name is kept, it tells which account was used.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*:)([^\s/?#]+)@")


@dataclass(frozen=True)
class Defaults:
    """Every default of the tool, in one place: the manifest schema (its ``default`` keywords),
    the manifest loader, the provider clients and the runner read them here.

    Each knob means one thing: ``concurrency`` is tasks in flight at the provider, nothing else;
    connections, uploads, downloads and preparations have bounds of their own.
    """

    concurrency: int = 4
    """Tasks in flight at the provider (the manifest's ``provider.concurrency``)."""
    rate_requests: int = 20
    rate_per_seconds: float = 10.0
    """Creates in any sliding window (``provider.rate_limit``; Kie's documented 20 per 10 s)."""
    poll_interval: float = 15.0
    task_timeout: float = 3600.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    """Per read; every request also has an overall deadline by purpose, below."""
    create_deadline: float = 120.0
    query_deadline: float = 60.0
    upload_deadline: float = 600.0
    download_deadline: float = 900.0
    connections: int = 64
    """HTTP connections the run keeps open at most (every host together)."""
    uploads: int = 4
    downloads: int = 8
    preparations: int = 0
    """ffmpeg runs at once; 0 means one per CPU."""
    call_tries: int = 8
    """Tries of one repeatable call (upload, lookup, refresh) or of a create that certainly did
    not happen."""
    download_tries: int = 6
    """Tries of one result download, the first included."""
    result_refreshes: int = 5
    """Fresh result URLs asked for one job after its URL expired, before the job fails."""
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    parallel_polls: int = 16
    poll_max_gap: float = 60.0
    """The longest gap between two polls of one running task, whatever its estimate says
    (never under ``poll_interval``): a wrong estimate costs at most this much lateness."""
    callback_fallback: float = 60.0
    """With callbacks on: the shortest gap the schedule plans (``callback.fallback_poll``);
    a callback brings the task's poll forward, down to ``poll_interval``."""
    callback_max_body: int = 256 * 1024
    """Bytes of one callback request body the listener reads at most (larger: 413)."""
    callback_read_timeout: float = 10.0
    """Seconds a callback request may take to arrive whole (slow senders are dropped)."""
    callback_connections: int = 64
    """Callback requests served at once; more wait for the listener's backlog."""
    poll_batch: int = 50
    """Tasks per batch status query (AceData)."""
    max_bad_replies: int = 10
    outage_seconds: float = 60.0
    min_free_mb: float = 256.0
    reserve_mb: float = 8.0


DEFAULTS = Defaults()


@dataclass(frozen=True)
class Settings:
    """Values from the environment, frozen at start-up."""

    env: Mapping[str, str] = field(default_factory=dict)
    ffmpeg: str | None = None
    ffprobe: str | None = None
    no_sleep: bool = False
    """Testing switch: retry/poll waits are recorded, not slept (see :mod:`pipeline.run.retry`)."""
    crash_at: str | None = None
    """Testing switch: kill the run at a named point (see :mod:`pipeline.run.crashpoints`)."""
    min_free_bytes: int = int(DEFAULTS.min_free_mb * 1024**2)
    """No new create below this much free space on the output disk (:mod:`pipeline.run.disk`)."""
    reserve_bytes: int = int(DEFAULTS.reserve_mb * 1024**2)
    """Room kept aside so task ids can still be committed on a full disk."""
    outage_seconds: float = DEFAULTS.outage_seconds
    """No answer from the provider for this long stops the batch (:mod:`pipeline.run.outage`)."""
    poll_schedule: str = "learned"
    """Hidden benchmark switch (``MOTION_PIPELINE_POLL_SCHEDULE=rhythm``): the old fixed poll
    rhythm instead of the learned schedule (:mod:`pipeline.run.schedule`), as a baseline."""
    user_cache: Path | None = None
    """``$XDG_CACHE_HOME/motion-pipeline`` (default ``~/.cache``): where planning caches go when
    the output directory cannot hold them (a read-only manifest folder). None without a home."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            env=env,
            ffmpeg=env.get("MOTION_PIPELINE_FFMPEG") or None,
            ffprobe=env.get("MOTION_PIPELINE_FFPROBE") or None,
            no_sleep=env.get("MOTION_PIPELINE_NO_SLEEP") == "1",
            crash_at=env.get("MOTION_PIPELINE_CRASH_AT") or None,
            min_free_bytes=_megabytes(env, "MOTION_PIPELINE_MIN_FREE_MB", DEFAULTS.min_free_mb),
            reserve_bytes=_megabytes(env, "MOTION_PIPELINE_RESERVE_MB", DEFAULTS.reserve_mb),
            outage_seconds=_number(env, "MOTION_PIPELINE_OUTAGE_SECONDS", DEFAULTS.outage_seconds),
            poll_schedule=env.get("MOTION_PIPELINE_POLL_SCHEDULE") or "learned",
            user_cache=_user_cache(env),
        )

    def secret(self, var: str) -> str | None:
        """The value of an API-key variable, or None when it is unset or empty."""
        value = self.env.get(var, "")
        return value or None

    def secrets(self, extra_vars: Iterable[str] = ()) -> list[str]:
        """Every secret value currently set, for :func:`redact`."""
        names = {*DEFAULT_SECRET_VARS, *extra_vars}
        return [v for v in (self.env.get(n, "") for n in names) if len(v) >= MIN_SECRET]


def _user_cache(env: Mapping[str, str]) -> Path | None:
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "motion-pipeline"
    home = env.get("HOME", "")
    if home and os.path.isabs(home):
        return Path(home) / ".cache" / "motion-pipeline"
    return None


# --------------------------------------------------------------------------- URLs


def _split_authority(url: str) -> tuple[str, str, str]:
    """``(scheme://, authority, rest)``; parsed by hand so no URL, however malformed, raises."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return scheme + sep, rest[:end], rest[end:]


def public_url(url: str) -> str:
    """``url`` without its userinfo (``https://user:pw@host/x`` -> ``https://host/x``).

    What is stored (the upload cache's endpoint) and shown: the credentials stay in the manifest.
    """
    head, authority, rest = _split_authority(url)
    if "@" not in authority:
        return url
    return head + authority.rpartition("@")[2] + rest


def url_secrets(*urls: str | None) -> list[str]:
    """The passwords in the userinfo of ``urls`` (as written and decoded), for :func:`redact`."""
    found: dict[str, None] = {}
    for url in urls:
        # The password runs to the last "@" of the authority, as urlsplit reads it.
        userinfo = _split_authority(url or "")[1].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        if password:
            found.update(dict.fromkeys(p for p in (password, unquote(password)) if p))
    return list(found)


# --------------------------------------------------------------------------- redaction


def _variants(secret: str) -> set[str]:
    """The forms a provider may echo a secret back in: as sent, percent-encoded, JSON-escaped."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in forms}
    forms |= {f.replace("/", "\\/") for f in forms}  # PHP-style JSON escapes "/" too
    return forms


class _SecretMatcher:
    """Finds the longest echo of any secret at each place: a variant, or a long enough prefix."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        by_head: dict[str, set[str]] = {}
        for secret in secrets:
            for form in _variants(secret):
                # A long secret is caught from its first MIN_PREFIX characters on; a short one
                # only whole.
                head = form[:MIN_PREFIX] if len(secret) >= MIN_PREFIX else form
                by_head.setdefault(head, set()).add(form)
        self._forms = {
            head: sorted(forms, key=len, reverse=True) for head, forms in by_head.items()
        }
        self._heads = tuple(sorted(by_head, key=len, reverse=True))
        # Longest heads first: at one place, a longer head always belongs to the longer match.
        self._pattern = re.compile("|".join(re.escape(h) for h in self._heads))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where echoes of the secrets are in ``text``, left to right, never overlapping."""
        # Fast path: most log lines hold no secret, and ``in`` is a C loop per head.
        if not any(head in text for head in self._heads):
            return []
        found: list[tuple[int, int]] = []
        pos = 0
        while (match := self._pattern.search(text, pos)) is not None:
            start = match.start()
            pos = max(start + _common_prefix(text, start, f) for f in self._forms[match.group()])
            found.append((start, pos))
        return found


def _common_prefix(text: str, start: int, form: str) -> int:
    """How many characters of ``form`` ``text`` repeats from ``start`` on."""
    n = 0
    for a, b in zip(form, text[start : start + len(form)], strict=False):
        if a != b:
            break
        n += 1
    return n


@functools.lru_cache(maxsize=64)
def _matcher(secrets: frozenset[str]) -> _SecretMatcher:
    return _SecretMatcher(tuple(sorted(secrets)))


def _number(env: Mapping[str, str], var: str, default: float) -> float:
    """A non-negative number from the environment; an unreadable value falls back to default."""
    try:
        value = float(env.get(var, default))
    except ValueError:
        return default
    return max(0.0, value) if value == value else default  # NaN is unreadable too


def _megabytes(env: Mapping[str, str], var: str, default: float) -> int:
    return int(_number(env, var, default) * 1024**2)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret, URL password, bearer token and JWT replaced by ``***``.

    A secret is caught as sent, percent-encoded (``quote``/``quote_plus``), JSON-escaped, and cut
    short (any prefix of at least :data:`MIN_PREFIX` characters; a shorter secret only whole).
    Values shorter than :data:`MIN_SECRET` are ignored.
    """
    wanted = frozenset(s for s in secrets if len(s) >= MIN_SECRET)
    # Every detector looks at the original text and the spans are merged: replacing in turn let
    # one detector eat the beginning another needs (a Kling token shares its JWT header with
    # every older token, whose signature would then survive the JWT pattern).
    spans = _matcher(wanted).spans(text) if wanted else []
    if "://" in text and "@" in text:
        spans += [m.span(2) for m in _USERINFO.finditer(text)]
    if "bearer" in text.lower():
        spans += [m.span(2) for m in _BEARER.finditer(text)]
    if "eyJ" in text:
        spans += [m.span() for m in _JWT.finditer(text)]
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start > pos or not out:
            out += [text[pos:start], _REDACTED]
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------- printable text

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
