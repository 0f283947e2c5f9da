"""Provider registry: one name, one class; capabilities are the classes' attributes."""

from __future__ import annotations

from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import (
    Credentials,
    InputURLs,
    Provider,
    ProviderConfig,
    RateLimit,
)
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider
from pipeline.providers.sandbox import SandboxProvider

_REGISTRY: dict[str, type[Provider]] = {
    cls.name: cls for cls in (KieProvider, AceDataProvider, KlingProvider, SandboxProvider)
}


def names() -> list[str]:
    """Every provider name a manifest may use, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Provider]:
    """The provider class registered under ``name``; KeyError if there is none."""
    return _REGISTRY[name]


__all__ = [
    "Credentials",
    "InputURLs",
    "Provider",
    "ProviderConfig",
    "RateLimit",
    "get",
    "names",
]
