"""The built-in sandbox: the Kie protocol against an in-process fake server, no key needed.

The runner starts the embedded server (:mod:`pipeline.sandbox`) and fills ``config.base_url``
and ``config.upload_url``; everything else is the real Kie client code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pipeline.providers.kie import KieProvider

#: The bearer token the sandbox expects; not a secret, so it is never redacted away.
SANDBOX_TOKEN = "sandbox"  # noqa: S105 - a fixed public dummy token, not a secret


class SandboxProvider(KieProvider):
    name: ClassVar[str] = "sandbox"
    default_base_url: ClassVar[str] = "embedded"
    default_upload_url: ClassVar[str | None] = "embedded"
    key_envs: ClassVar[Mapping[str, str]] = {}

    def _token(self) -> str:
        return SANDBOX_TOKEN

    def _secrets(self) -> list[str]:
        return self._credentials.secrets()
