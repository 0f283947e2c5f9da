"""Model input schemas and the checks a hosted model's API applies to them (pure).

fal and Replicate validate a create's inputs against the model's schema (pydantic-style on fal,
Cog's OpenAPI on Replicate): a missing required field, a wrong JSON type, a value outside an
enum, a too-long prompt, or a field the model does not have. :func:`check` finds every problem,
so each protocol can word them in its own error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One input of a model: its JSON type, whether it is required, its enum and default."""

    name: str
    kind: type  # str or bool
    required: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None
    max_length: int | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the inputs.

    ``kind`` is one of missing | type | enum | too_long | extra; ``expected`` names what was
    wanted (the type, the choices, the limit).
    """

    field: str
    kind: str
    message: str
    expected: str = ""
    value: Any = None


_TYPE_NAMES = {str: "string", bool: "boolean"}


def check(
    fields: tuple[Field, ...], data: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Problem]]:
    """The inputs with defaults filled in, and every problem found (empty when valid)."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    known = {f.name for f in fields}
    for f in fields:
        if f.name not in data or data[f.name] is None:
            if f.required:
                problems.append(Problem(f.name, "missing", f"{f.name} is required"))
            elif f.default is not None:
                values[f.name] = f.default
            continue
        value = data[f.name]
        wanted = _TYPE_NAMES[f.kind]
        # bool is an int in Python and JSON true is not a string: check the exact type.
        if type(value) is not f.kind:
            problems.append(Problem(f.name, "type", f"{f.name} must be a {wanted}", wanted, value))
            continue
        if f.choices and value not in f.choices:
            choices = ", ".join(f.choices)
            problems.append(
                Problem(f.name, "enum", f"{f.name} must be one of {choices}", choices, value)
            )
            continue
        if f.max_length is not None and isinstance(value, str) and len(value) > f.max_length:
            problems.append(
                Problem(
                    f.name,
                    "too_long",
                    f"{f.name} is {len(value)} characters, over {f.max_length}",
                    str(f.max_length),
                    value,
                )
            )
            continue
        values[f.name] = value
    for name in sorted(set(data) - known):
        problems.append(
            Problem(name, "extra", f"{name} is not an input of this model", value=data[name])
        )
    return values, problems
