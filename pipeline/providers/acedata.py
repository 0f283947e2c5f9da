"""AceData Cloud: /kling/motion (async mode) and /kling/tasks with retrieve_batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class AceDataProvider:
    name: ClassVar[str] = "acedata"
    default_model: ClassVar[str] = "kling-v2-6"
    models: ClassVar[tuple[str, ...]] = ("kling-v2-6", "kling-v3")
    default_base_url: ClassVar[str] = "https://api.acedata.cloud"
    default_upload_url: ClassVar[str | None] = None
    key_envs: ClassVar[Mapping[str, str]] = {"api_key": "ACEDATA_API_KEY"}
    has_upload: ClassVar[bool] = False
    has_client_id: ClassVar[bool] = False
    has_batch_poll: ClassVar[bool] = True
    has_sound_field: ClassVar[bool] = True
    upload_ttl: ClassVar[float] = 0.0
