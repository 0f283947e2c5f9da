"""Kie.ai: createTask / recordInfo, body ``code`` carries errors, uploads on a separate host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class KieProvider:
    name: ClassVar[str] = "kie"
    default_model: ClassVar[str] = "kling-2.6/motion-control"
    models: ClassVar[tuple[str, ...]] = ("kling-2.6/motion-control", "kling-3.0/motion-control")
    default_base_url: ClassVar[str] = "https://api.kie.ai"
    default_upload_url: ClassVar[str | None] = "https://kieai.redpandaai.co"
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "KIE_API_KEY"}
    has_upload: ClassVar[bool] = True
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = False
    upload_ttl: ClassVar[float] = 24 * 3600.0
