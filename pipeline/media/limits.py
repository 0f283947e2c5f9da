"""What each provider accepts: image and video limits per provider, model and orientation.

The numbers live in ``specs/limits.json`` (base values, provider layers, model and
character_orientation overrides); :func:`limits_for` merges the layers into frozen values that
:mod:`pipeline.media.recipes` plans against.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class ImageLimits:
    formats: tuple[str, ...]
    max_bytes: int
    min_side: int
    max_side: int
    min_aspect: float
    max_aspect: float


@dataclass(frozen=True)
class VideoLimits:
    containers: tuple[str, ...]
    codecs: tuple[str, ...]
    audio_codecs: tuple[str, ...]
    max_bytes: int
    min_side: int
    max_side: int
    min_duration: float
    max_duration: float


@dataclass(frozen=True)
class Limits:
    """What one provider/model accepts for one character_orientation."""

    provider: str
    model: str
    orientation: str
    image: ImageLimits
    video: VideoLimits

    def __hash__(self) -> int:
        # recipes caches each input's half of a plan by its Limits: the generated hash would
        # walk both nested tables (13 fields) on every one of a 100,000-job matrix's lookups.
        # Equal Limits have equal names, so this hash keeps the contract; eq still compares all.
        return hash((self.provider, self.model, self.orientation))


@functools.cache
def _limits_doc() -> dict[str, Any]:
    resource = importlib.resources.files("pipeline") / "specs" / "limits.json"
    doc: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return doc


def _layer(target: dict[str, dict[str, Any]], layer: dict[str, Any], orientation: str) -> None:
    for slot in ("image", "video"):
        target[slot].update(layer.get(slot, {}))
    for slot, values in (layer.get("orientations", {}).get(orientation) or {}).items():
        target[slot].update(values)


@functools.cache
def limits_for(provider: str, model: str, orientation: str) -> Limits:
    """Merged limits for a provider, model and orientation.

    An unknown provider or orientation is a ConfigError; a model the table does not list gets
    the provider's own limits (a proxy may offer a newer model with the same rules).
    """
    doc = _limits_doc()
    providers: dict[str, Any] = doc["providers"]
    if provider not in providers:
        raise ConfigError(f"no media limits for provider {provider!r} in specs/limits.json")
    if orientation not in doc["base"].get("orientations", {}):
        raise ConfigError(f"unknown character_orientation {orientation!r}")
    entry = providers[provider]
    entry = providers[entry["same_as"]] if "same_as" in entry else entry
    merged: dict[str, dict[str, Any]] = {"image": {}, "video": {}}
    for layer in (doc["base"], entry, entry.get("models", {}).get(model, {})):
        _layer(merged, layer, orientation)
    image, video = merged["image"], merged["video"]
    return Limits(
        provider=provider,
        model=model,
        orientation=orientation,
        image=ImageLimits(
            formats=tuple(image["formats"]),
            max_bytes=int(image["max_bytes"]),
            min_side=int(image["min_side"]),
            max_side=int(image["max_side"]),
            min_aspect=float(image["min_aspect"]),
            max_aspect=float(image["max_aspect"]),
        ),
        video=VideoLimits(
            containers=tuple(video["containers"]),
            codecs=tuple(video["codecs"]),
            audio_codecs=tuple(video["audio_codecs"]),
            max_bytes=int(video["max_bytes"]),
            min_side=int(video["min_side"]),
            max_side=int(video["max_side"]),
            min_duration=float(video["min_duration"]),
            max_duration=float(video["max_duration"]),
        ),
    )
