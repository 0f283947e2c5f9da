"""A validated manifest as values: everything the planner and runner need, nothing from the
environment. The one cost formula lives here (:meth:`Budget.cost`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.jobs import Job
from pipeline.providers.base import ProviderConfig


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
class Manifest:
    """A validated manifest: everything the planner and runner need, nothing from os.environ."""

    path: Path
    name: str
    output_dir: Path
    provider: ProviderConfig
    budget: Budget
    jobs: tuple[Job, ...]
