"""Which inputs a provider can be sent: the one question the manifest check and the plan ask.

A local file (or a prepared copy of any input) reaches a provider only as a URL it can fetch:
through the provider's own upload API (Kie), or through the manifest's ``storage`` bucket (any
provider). Without either, only http(s) inputs sent as they are can be used.

This module imports nothing heavy: ``validate`` asks it on machines without the s3 extra.
"""

from __future__ import annotations

import importlib.util

from pipeline.manifest.model import StorageConfig
from pipeline.providers.base import Provider

#: What to install for ``storage`` (``kind: s3``): boto3, as the ``s3`` extra pins it.
S3_EXTRA_HINT = "pip install 'motion-pipeline[s3]'"


def can_send_files(provider_cls: type[Provider], storage: StorageConfig | None) -> bool:
    """Whether local files and prepared media can be handed to ``provider_cls`` as URLs."""
    return storage is not None or provider_cls.has_upload


def s3_available() -> bool:
    """Whether the s3 extra (boto3) is installed; checked without importing it."""
    try:
        return importlib.util.find_spec("boto3") is not None
    except ValueError:  # sys.modules["boto3"] is None: imports of it are blocked
        return False
