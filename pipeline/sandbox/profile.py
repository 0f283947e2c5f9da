"""Fault profiles: how slow the sandbox is and which failures it injects, read from YAML or JSON.

A profile is a small file; every key is optional and unknown keys are errors::

    seed: 7                  # seeds the probability rules, so a run is reproducible
    credits: 1000            # what Kie's /api/v1/chat/credit reports; 0 = out of credits
    sync_timeout: 300        # AceData synchronous /kling/motion waits at most this long (s)
    expire_after: 3600       # Replicate: a prediction's input, output and files are deleted
                             #   this long (s) after it ends (its docs: about an hour)
    instant: false           # benchmarks: no media checks, no renders, no latency; every task
                             #   succeeds on its first poll with one canned clip (:mod:`.instant`)
    callback_timeout: 5      # callbacks (:mod:`.callbacks`): seconds per delivery attempt
    callback_attempts: 3     #   and attempts before giving up (connection error or non-2xx)
    webhook_hmac_key: null   # Kie: sign callbacks (X-Webhook-Timestamp, X-Webhook-Signature)
    latency:
      polls: 2               # status queries answered "running" before the result shows
      seconds: 0             # and at least this task age (s); 0 and 0 = done on the first poll
      spread: 0              # > 0: each task's age is drawn log-normal, median ``seconds``,
                             #   sigma ``spread`` (benchmarks of polling: durations that vary)
      kling: {polls: 4}      # per protocol (kie | acedata | kling | fal | replicate) overrides
    faults:                  # rules, tried in file order (their keys and kinds: :mod:`.faults`)
      - kind: rate_limit
        endpoint: create
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.sandbox import schema
from pipeline.sandbox.faults import PROTOCOLS, FaultRule, rule_from_dict


@dataclass(frozen=True)
class Latency:
    """How long a task looks busy: ``polls`` running answers, and at least ``seconds`` of age.

    With ``spread`` each task draws its own age at its create (:meth:`draw`): log-normal around
    ``seconds`` (the median), ``spread`` its sigma, so a batch has short and long tasks.
    """

    polls: int = 0
    seconds: float = 0.0
    spread: float = 0.0

    def draw(self, rng: random.Random) -> float | None:
        """One task's own minimum age, or None: every task takes ``seconds``."""
        if self.spread <= 0 or self.seconds <= 0:
            return None
        return self.seconds * math.exp(rng.gauss(0.0, self.spread))


@dataclass(frozen=True)
class FaultProfile:
    """Latency and fault rules; ``FaultProfile()`` is a well-behaved, instant sandbox."""

    latency: Latency = field(default_factory=Latency)
    protocol_latency: Mapping[str, Latency] = field(default_factory=dict)
    faults: tuple[FaultRule, ...] = ()
    seed: int = 0
    credits: float = 1000.0
    sync_timeout: float = 300.0
    expire_after: float = 3600.0
    instant: bool = False
    callback_timeout: float = 5.0
    callback_attempts: int = 3
    webhook_hmac_key: str | None = None

    def __repr__(self) -> str:
        # The HMAC key is a secret in the real service: keep it out of logs and test output.
        key = "set" if self.webhook_hmac_key else None
        return (f"FaultProfile(latency={self.latency}, faults={len(self.faults)} rules, "
                f"instant={self.instant}, webhook_hmac_key={key})")  # fmt: skip

    def latency_for(self, protocol: str) -> Latency:
        if self.instant:
            return _NO_LATENCY
        return self.protocol_latency.get(protocol, self.latency)

    @classmethod
    def load(cls, path: str | Path) -> FaultProfile:
        """Read a YAML or JSON profile; every mistake is a :class:`ConfigError` naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read fault profile: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
        try:
            return cls.from_dict(data or {})
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> FaultProfile:
        """Build a profile from parsed YAML/JSON; raises ValueError with the offending path."""
        top = schema.mapping(data, "profile")
        schema.no_unknown(top, _TOP_KEYS, "profile")
        latency, per_protocol = _latency(top.get("latency", {}))
        faults_raw = top.get("faults", [])
        if not isinstance(faults_raw, list):
            raise ValueError("faults: must be a list of rules")
        return cls(
            latency=latency,
            protocol_latency=per_protocol,
            faults=tuple(rule_from_dict(item, f"faults[{i}]") for i, item in enumerate(faults_raw)),
            seed=schema.number(top, "seed", "profile", int, 0),
            credits=schema.number(top, "credits", "profile", float, 1000.0),
            sync_timeout=schema.number(top, "sync_timeout", "profile", float, 300.0),
            expire_after=schema.number(top, "expire_after", "profile", float, 3600.0),
            instant=schema.flag(top, "instant", "profile", False),
            callback_timeout=schema.number(top, "callback_timeout", "profile", float, 5.0),
            callback_attempts=schema.positive(top, "callback_attempts", "profile", 3),
            webhook_hmac_key=_optional_text(top, "webhook_hmac_key"),
        )


_TOP_KEYS = {
    "seed", "credits", "sync_timeout", "expire_after", "instant", "latency", "faults",
    "callback_timeout", "callback_attempts", "webhook_hmac_key",
}  # fmt: skip


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    if data.get(key) is None:
        return None
    return schema.text(data, key, "profile", "")


_NO_LATENCY = Latency()


def _one_latency(data: Any, where: str, base: Latency) -> Latency:
    raw = schema.mapping(data, where)
    schema.no_unknown(raw, {"polls", "seconds", "spread"}, where)
    return Latency(
        polls=schema.number(raw, "polls", where, int, base.polls),
        seconds=schema.number(raw, "seconds", where, float, base.seconds),
        spread=schema.number(raw, "spread", where, float, base.spread),
    )


def _latency(data: Any) -> tuple[Latency, dict[str, Latency]]:
    raw = schema.mapping(data, "latency")
    schema.no_unknown(raw, {"polls", "seconds", "spread", *PROTOCOLS}, "latency")
    base = _one_latency({k: v for k, v in raw.items() if k not in PROTOCOLS}, "latency", Latency())
    per = {p: _one_latency(raw[p], f"latency.{p}", base) for p in PROTOCOLS if p in raw}
    return base, per
