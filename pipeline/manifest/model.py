"""A validated manifest as values: everything the planner and runner need, nothing from the
environment. The one cost formula lives here (:meth:`Budget.cost`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.jobs import Job
from pipeline.providers.base import ProviderConfig

MODES = ("std", "pro")


def prices_for(table: Mapping[str, Any], model: str) -> dict[str, float]:
    """The mode -> price table of ``model`` from ``budget.price_per_second``.

    The manifest may price by mode (``{std: 0.07}``), by model then mode (``{kling-v3: {std:
    0.126}}``), or both: the model's own price wins over a bare mode price. Keys of other
    models are ignored here (the loader refuses names that are no model of the provider).
    """
    own = table.get(model)
    layers = [table, own if isinstance(own, Mapping) else {}]
    return {
        mode: float(value)
        for layer in layers
        for mode, value in layer.items()
        if mode in MODES and isinstance(value, int | float) and not isinstance(value, bool)
    }


@dataclass(frozen=True)
class Budget:
    max_seconds: float | None = None
    max_cost: float | None = None
    price_per_second: Mapping[str, float] = field(default_factory=dict)
    currency: str = "USD"

    def cost(self, mode: str, seconds: float) -> float | None:
        price = self.price_per_second.get(mode)
        return None if price is None else round(price * seconds, 6)


@dataclass(frozen=True)
class StorageConfig:
    """The manifest's ``storage`` block: an S3-compatible bucket the provider fetches inputs from.

    Holds no credential: those come from the AWS chain at run time (:mod:`pipeline.storage.aws`).
    """

    bucket: str
    prefix: str
    """Key prefix, ``""`` or ending in ``/``: objects are ``<prefix><sha256><.ext>``."""
    kind: str = "s3"
    endpoint_url: str | None = None
    """None: AWS S3 itself; else an S3-compatible service, addressed path-style."""
    region: str | None = None
    url_expires: int = 3600
    """Seconds a presigned GET URL handed to the provider stays valid."""

    @property
    def where(self) -> str:
        """``s3://bucket/prefix`` (at the endpoint when one is set): for messages and records."""
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{at}"


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: everything the planner and runner need, nothing from os.environ."""

    path: Path
    name: str
    output_dir: Path
    provider: ProviderConfig
    budget: Budget
    jobs: tuple[Job, ...]
    storage: StorageConfig | None = None
    """Where local and prepared inputs are uploaded for the provider; None: its own upload API."""
