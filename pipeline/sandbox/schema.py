"""Checked values read out of parsed YAML/JSON (fault profiles): every mistake names its path.

Pure functions raising ValueError; :meth:`FaultProfile.load` turns them into ConfigError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def no_unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def number(data: Mapping[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key}: must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{where}.{key}: must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}.{key}: must not be negative, got {value!r}")
    return kind(value)


def positive(data: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value: int = number(data, key, where, int, default)
    if value < 1:
        raise ValueError(f"{where}.{key}: must be at least 1, got {value!r}")
    return value


def text(data: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string, got {value!r}")
    return value


def flag(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: must be true or false")
    return value


def json_string_text(data: Mapping[str, Any], key: str, where: str) -> str:
    """The inside of a JSON string (escapes allowed), kept exactly as written."""
    value = text(data, key, where, "")
    try:
        value.encode("utf-8")
        json.loads(f'"{value}"')
    except UnicodeEncodeError:
        raise ValueError(
            f"{where}.{key}: a lone surrogate cannot be sent as UTF-8; write it as the JSON "
            'escape (task_id: "\\\\ud800")'
        ) from None
    except ValueError:
        raise ValueError(
            f'{where}.{key}: must be the inside of a JSON string (escape \\" and \\\\)'
        ) from None
    return value
