"""Provider registry: one name, one class; capabilities are the classes' attributes.

The built-in providers are registered here; :func:`register` adds another (a plugin, or a
recording fake in tests: simonw/llm's way), :func:`unregister` takes it back.
"""

from __future__ import annotations

from pipeline.providers.acedata import AceDataProvider
from pipeline.providers.base import (
    Credentials,
    InputURLs,
    Provider,
    ProviderConfig,
    RateLimit,
)
from pipeline.providers.fal import FalProvider
from pipeline.providers.kie import KieProvider
from pipeline.providers.kling import KlingProvider
from pipeline.providers.replicate import ReplicateProvider
from pipeline.providers.sandbox import SandboxProvider

_REGISTRY: dict[str, type[Provider]] = {
    cls.name: cls
    for cls in (
        KieProvider,
        AceDataProvider,
        KlingProvider,
        FalProvider,
        ReplicateProvider,
        SandboxProvider,
    )
}


def register(cls: type[Provider]) -> type[Provider]:
    """Make ``cls`` the provider named ``cls.name`` (usable as a class decorator)."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls!r} has no provider name")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


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
    "register",
    "unregister",
]
