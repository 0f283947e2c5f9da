"""Provider registry: one name, one class; capabilities are the classes' attributes.

The built-in providers are registered here; :func:`register` adds another (a plugin, or a
recording fake in tests: simonw/llm's way), :func:`unregister` takes it back.
"""

from __future__ import annotations

from importlib import import_module

from pipeline.providers.base import (
    Credentials,
    InputURLs,
    Provider,
    ProviderConfig,
    RateLimit,
)

# A built-in provider is registered by where it lives and imported when a manifest names it:
# a Kie batch does not load the other five (every command that reads a manifest comes here).
_REGISTRY: dict[str, type[Provider] | str] = {
    "kie": "pipeline.providers.kie:KieProvider",
    "acedata": "pipeline.providers.acedata:AceDataProvider",
    "kling": "pipeline.providers.kling:KlingProvider",
    "fal": "pipeline.providers.fal:FalProvider",
    "replicate": "pipeline.providers.replicate:ReplicateProvider",
    "sandbox": "pipeline.providers.sandbox:SandboxProvider",
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
    found = _REGISTRY[name]
    if isinstance(found, str):
        module, _, attribute = found.partition(":")
        found = _REGISTRY[name] = getattr(import_module(module), attribute)
    return found


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
