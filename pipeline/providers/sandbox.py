"""The built-in sandbox: the Kie protocol against an in-process fake server, no key needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pipeline.providers.kie import KieProvider


class SandboxProvider(KieProvider):
    name: ClassVar[str] = "sandbox"
    default_base_url: ClassVar[str] = "embedded"
    default_upload_url: ClassVar[str | None] = "embedded"
    key_envs: ClassVar[Mapping[str, str]] = {}
