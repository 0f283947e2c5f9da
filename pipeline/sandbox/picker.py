"""The fault picker: decides, request by request, which rule of a profile fires."""

from __future__ import annotations

import random
import threading

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.profile import FaultProfile


class FaultPicker:
    """Decides, request by request, which rule fires; thread-safe and deterministic per seed."""

    def __init__(self, profile: FaultProfile) -> None:
        self._rules = profile.faults
        self._seen = [0] * len(self._rules)
        self._fired = [0] * len(self._rules)
        self._rng = random.Random(profile.seed)  # noqa: S311  # picks faults, not secrets
        self._lock = threading.Lock()

    def pick(self, protocol: str, endpoint: str, kinds: tuple[str, ...]) -> FaultRule | None:
        """The first rule of ``kinds`` that fires for this request, counting it everywhere."""
        if not self._rules:  # a clean profile: no lock taken on every request of a benchmark
            return None
        winner: FaultRule | None = None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.kind not in kinds or not rule.matches(protocol, endpoint):
                    continue
                self._seen[index] += 1
                fires = _selected(rule, self._seen[index], self._rng)
                if rule.times is not None and self._fired[index] >= rule.times:
                    fires = False
                if fires and winner is None:
                    winner = rule
                    self._fired[index] += 1
        return winner

    def fired(self) -> list[int]:
        """How often each rule of the profile has fired, in the profile's order (for tests)."""
        with self._lock:
            return list(self._fired)


def _selected(rule: FaultRule, seen: int, rng: random.Random) -> bool:
    # The draw happens for every counted request so a seed gives the same sequence whatever
    # the other selectors decided.
    draw = rng.random() if rule.probability is not None else 0.0
    if seen <= rule.after:
        return False
    if rule.every is not None and (seen - rule.after) % rule.every != 0:
        return False
    return rule.probability is None or draw < rule.probability
