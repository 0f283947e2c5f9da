"""The protocol registry: each wire protocol's module, by name (the app's only import of them)."""

from __future__ import annotations

from pipeline.sandbox import acedata, fal, kie, kling, replicate
from pipeline.sandbox.service import ProtocolModule

MODULES: dict[str, ProtocolModule] = {
    "kie": kie,
    "acedata": acedata,
    "kling": kling,
    "fal": fal,
    "replicate": replicate,
}
