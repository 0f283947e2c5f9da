"""Kling's own API: HS256 JWT auth, /v1/videos/motion-control, external_task_id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class KlingProvider:
    name: ClassVar[str] = "kling"
    default_model: ClassVar[str] = "kling-v2-6"
    models: ClassVar[tuple[str, ...]] = ("kling-v2-6", "kling-v3")
    default_base_url: ClassVar[str] = "https://api-singapore.klingai.com"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {
        "access_key": "KLING_ACCESS_KEY",
        "secret_key": "KLING_SECRET_KEY",
    }
    has_upload: ClassVar[bool] = False
    has_client_id: ClassVar[bool] = True
    has_batch_poll: ClassVar[bool] = False
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 0.0
