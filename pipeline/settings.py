"""Process-wide configuration read from the environment, and secret redaction.

This is the only module that reads ``os.environ``: everything else receives a :class:`Settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Environment variables whose values are secrets by default (manifests may name others).
DEFAULT_SECRET_VARS = (
    "KIE_API_KEY",
    "ACEDATA_API_KEY",
    "KLING_ACCESS_KEY",
    "KLING_SECRET_KEY",
)

_REDACTED = "***"
# Bearer tokens and JWTs can appear in echoed request headers or URLs; redact their shape too.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")


@dataclass(frozen=True)
class Settings:
    """Values from the environment, frozen at start-up."""

    env: Mapping[str, str] = field(default_factory=dict)
    ffmpeg: str | None = None
    ffprobe: str | None = None
    no_sleep: bool = False
    """Testing switch: retry/poll waits are recorded, not slept (see :mod:`pipeline.retry`)."""
    crash_at: str | None = None
    """Testing switch: kill the run at a named point (see :mod:`pipeline.crashpoints`)."""
    min_free_bytes: int = 256 * 1024**2
    """No new create below this much free space on the output disk (:mod:`pipeline.diskguard`)."""
    reserve_bytes: int = 8 * 1024**2
    """Room kept aside so task ids can still be committed on a full disk."""
    outage_seconds: float = 60.0
    """No answer from the provider for this long stops the batch (:mod:`pipeline.outage`)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            env=env,
            ffmpeg=env.get("MOTION_PIPELINE_FFMPEG") or None,
            ffprobe=env.get("MOTION_PIPELINE_FFPROBE") or None,
            no_sleep=env.get("MOTION_PIPELINE_NO_SLEEP") == "1",
            crash_at=env.get("MOTION_PIPELINE_CRASH_AT") or None,
            min_free_bytes=_megabytes(env, "MOTION_PIPELINE_MIN_FREE_MB", 256),
            reserve_bytes=_megabytes(env, "MOTION_PIPELINE_RESERVE_MB", 8),
            outage_seconds=_number(env, "MOTION_PIPELINE_OUTAGE_SECONDS", 60.0),
        )

    def secret(self, var: str) -> str | None:
        """The value of an API-key variable, or None when it is unset or empty."""
        value = self.env.get(var, "")
        return value or None

    def secrets(self, extra_vars: Iterable[str] = ()) -> list[str]:
        """Every secret value currently set, for :func:`redact`."""
        names = {*DEFAULT_SECRET_VARS, *extra_vars}
        return [v for v in (self.env.get(n, "") for n in names) if len(v) >= 4]


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
    """Replace every known secret, bearer token and JWT in ``text`` with ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    text = _BEARER.sub(lambda m: m.group(1) + _REDACTED, text)
    return _JWT.sub(_REDACTED, text)
