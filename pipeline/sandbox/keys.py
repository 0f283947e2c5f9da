"""The credentials a sandbox accepts, per protocol."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SandboxKeys:
    """The credentials the sandbox accepts; a None field accepts any non-empty credential."""

    kie: str | None = None
    acedata: str | None = None
    kling_access: str | None = None
    kling_secret: str | None = None
    fal: str | None = None
    """fal's ``Authorization: Key <key>`` (also signs the CDN upload tokens it hands out)."""
    replicate: str | None = None
    """Replicate's ``Authorization: Bearer <token>`` (``Token <token>``, its client's, too)."""

    def __repr__(self) -> str:
        # Keys are test data here, but the same object is built from real-looking env values.
        set_fields = [f.name for f in fields(self) if getattr(self, f.name)]
        return f"SandboxKeys(set={set_fields})"

    __str__ = __repr__
