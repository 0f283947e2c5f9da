"""Schema errors in the manifest's own words: jsonschema's errors become Diagnostics.

:mod:`pipeline.manifest.load` validates against ``specs/manifest.schema.json``; this module decides
what each failure says (unknown key -> did-you-mean, a oneOf failure -> the errors of the branch
the user meant, a YAML 1.1 boolean -> "quote it") and where it points. The golden files in
``tests/manifests/bad/`` pin the exact wording.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Protocol

import jsonschema

from pipeline.manifest.yamlsafe import YAML11_BOOLS, LoadedYaml, PathKey


class ErrorSink(Protocol):
    """Records one problem at a manifest position (the key itself when ``at_key``)."""

    def __call__(
        self, where: PathKey, message: str, hint: str = "", *, at_key: bool = False
    ) -> None: ...


def report_schema_error(
    err: jsonschema.ValidationError, loaded: LoadedYaml, error: ErrorSink
) -> None:
    """Turn one jsonschema error into the Diagnostic(s) a person can act on, through ``error``.

    Unknown keys get a did-you-mean hint at the key itself; a oneOf/anyOf failure is reported
    as the errors of the branch the user meant; other failures get a plain-words message.
    """
    where: PathKey = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = sorted(err.schema.get("properties", {}))
        for key in sorted(set(err.instance) - set(known)):
            close = difflib.get_close_matches(key, known, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "known keys: "
                + (", ".join(known) or "none (this provider and model take no such field)")
            )
            error((*where, key), f"unknown key {key!r}", hint, at_key=True)
        return
    if err.validator in {"oneOf", "anyOf"} and err.context:
        if err.validator == "anyOf" and where == ():
            error((), "nothing to run: add `jobs:` or `matrix:`")
            return
        # Report every error of the branch the user meant: the one whose type matches.
        branches: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in err.context:
            branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
        root_kinds = {"type", "enum", "const"}
        fitting = [
            errs
            for errs in branches.values()
            if not any(e.validator in root_kinds and not e.relative_path for e in errs)
        ]
        if len(fitting) == 1:
            for sub in fitting[0]:
                report_schema_error(sub, loaded, error)
            return
        if isinstance(err.instance, str):
            enum_errors = [e for e in err.context if e.validator == "enum"]
            if enum_errors:
                report_schema_error(enum_errors[0], loaded, error)
                return
    error(where, *_describe(err, where, loaded))


def _describe(
    err: jsonschema.ValidationError, where: PathKey, loaded: LoadedYaml
) -> tuple[str, str]:
    """(message, hint) for one schema error, in the manifest's own terms."""
    value = err.instance
    kind = err.validator
    if kind == "type":
        expected = err.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        got = _type_name(value)
        hint = ""
        plain = loaded.mark(where).plain_scalar
        if isinstance(value, bool) and plain and plain.lower() in YAML11_BOOLS:
            hint = f'YAML reads an unquoted {plain} as a boolean; quote it: "{plain}"'
        elif expected == "string" and plain is not None:
            hint = f'quote it: "{plain}"'
        return f"expected {expected}, got {got} {json.dumps(value, default=str)}", hint
    if kind == "enum":
        allowed = ", ".join(map(str, err.validator_value))
        if (where and where[-1] == "name") or where == ("provider",):
            return f"unknown provider {value!r}", f"known providers: {allowed}"
        return f"{json.dumps(value, default=str)} is not one of: {allowed}", ""
    if kind == "const":
        return f"must be {err.validator_value!r}, got {json.dumps(value, default=str)}", ""
    if kind == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"missing required key {missing!r}", ""
    if kind == "pattern":
        return _pattern_message(where, value), ""
    if kind == "maxLength":
        n = err.validator_value
        return f"too long: {len(value)} characters, at most {n} allowed", ""
    if kind == "minLength":
        return "must not be empty", ""
    if kind in {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}:
        ops = {
            "minimum": ">=",
            "exclusiveMinimum": ">",
            "maximum": "<=",
            "exclusiveMaximum": "<",
        }
        return f"must be {ops[kind]} {err.validator_value}, got {value}", ""
    if kind == "minItems":
        return "must list at least one value", ""
    return err.message, ""


def _pattern_message(where: PathKey, value: Any) -> str:
    leaf = str(where[-1]) if where else ""
    if leaf == "id":
        rule = "use 1-100 of A-Z a-z 0-9 . _ - and do not start with '.'"
        return f"invalid job id {value!r}: {rule}"
    if leaf == "name":
        return f"invalid name {value!r}: use a-z 0-9 . _ - starting with a letter or digit"
    if leaf in {"base_url", "upload_url"}:
        return f"{value!r} is not an http(s) URL"
    if leaf.endswith("_env"):
        return f"{value!r} is not an environment variable name"
    return f"{value!r} has the wrong format"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
