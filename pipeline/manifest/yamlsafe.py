"""Hardened YAML loading that remembers where every value came from.

``yaml.safe_load`` semantics, plus what a manifest loader needs and PyYAML does not give:

- each value's (line, column), keyed by its JSON path, so errors can name ``FILE:LINE:COL``;
- duplicate mapping keys and non-standard tags are errors (PyYAML silently keeps the last key);
- aliases work (and ``<<`` merge keys), but the expanded document may hold at most
  ``node_budget`` nodes, so a "billion laughs" file fails in milliseconds instead of eating RAM;
- files over ``max_bytes`` are refused before they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PathKey = tuple[str | int, ...]

MAX_BYTES = 1024 * 1024
NODE_EXPANSION = 100_000
"""Nodes that aliases may add on top of the document's own: plenty for anchors and merge keys,
and a billion-laughs file stops after ~0.2 s and a few MB."""

_STANDARD_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.1 reads these unquoted words as booleans; a hint tells the user to quote them.
YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


@dataclass(frozen=True)
class Mark:
    line: int
    column: int
    plain_scalar: str | None = None
    """The source text of an unquoted scalar (to explain YAML 1.1 surprises)."""


@dataclass
class LoadedYaml:
    data: Any
    values: dict[PathKey, Mark] = field(default_factory=dict)
    keys: dict[PathKey, Mark] = field(default_factory=dict)

    def mark(self, path: PathKey) -> Mark:
        """The best known position for ``path``: the value, else its nearest ancestor."""
        probe = tuple(path)
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Mark(1, 1))

    def key_mark(self, path: PathKey) -> Mark:
        return self.keys.get(tuple(path)) or self.mark(path)


class YamlProblem(Exception):
    """The text is not a document we accept; carries a 1-based position."""

    def __init__(self, message: str, line: int = 1, column: int = 1, path: PathKey = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path


def load_file(
    path: Path, *, max_bytes: int = MAX_BYTES, expansion: int = NODE_EXPANSION
) -> LoadedYaml:
    """Read and parse ``path``; raises OSError for I/O problems and YamlProblem for content."""
    st = path.stat()
    if st.st_size > max_bytes:
        raise YamlProblem(f"file is {st.st_size} bytes; manifests are limited to {max_bytes} bytes")
    with path.open("rb") as fh:
        # Read at most one byte past the limit: the file may have grown since stat().
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise YamlProblem(f"file is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load_text(text, expansion=expansion)


def load_text(text: str, *, expansion: int = NODE_EXPANSION) -> LoadedYaml:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlProblem(f"YAML syntax error: {exc.problem or exc}", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}") from None
    out = LoadedYaml(data=None)
    if root is None:
        return out
    builder = _Builder(out, _distinct_nodes(root) + expansion)
    out.data = builder.build(root, ())
    return out


def _distinct_nodes(root: Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
    return len(seen)


class _Builder:
    def __init__(self, out: LoadedYaml, budget: int) -> None:
        self.out = out
        self.budget = budget
        self.count = 0
        self.scalars = yaml.SafeLoader("")

    def _spend(self, node: Node) -> None:
        self.count += 1
        if self.count > self.budget:
            raise YamlProblem(
                f"aliases expand the document to more than {self.budget} nodes (alias bomb?)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )

    def _where(self, node: Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def build(self, node: Node, path: PathKey) -> Any:
        self._spend(node)
        line, col = self._where(node)
        if node.tag not in _STANDARD_TAGS:
            raise YamlProblem(f"custom tag {node.tag!r} is not allowed", line, col, path)
        plain = None
        if isinstance(node, ScalarNode) and node.style is None:
            plain = str(node.value)
        # An alias shares its node: the first path that reaches it keeps the position.
        self.out.values.setdefault(path, Mark(line, col, plain))
        if isinstance(node, ScalarNode):
            return self.scalars.construct_object(node, deep=True)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        raise YamlProblem(f"unsupported YAML node {type(node).__name__}", line, col)

    def _mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_source(value_node, path))
                continue
            self._spend(key_node)
            kline, kcol = self._where(key_node)
            if not isinstance(key_node, ScalarNode):
                raise YamlProblem("mapping keys must be plain strings", kline, kcol)
            key = self.scalars.construct_object(key_node)
            if not isinstance(key, str):
                # `1: x` or `yes: x` would silently become an int/bool key.
                raise YamlProblem(f"key {key_node.value!r} must be a string; quote it", kline, kcol)
            if key in result:
                raise YamlProblem(f"duplicate key {key!r}", kline, kcol, (*path, key))
            self.out.keys[(*path, key)] = Mark(kline, kcol)
            result[key] = self.build(value_node, (*path, key))
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _merge_source(self, node: Node, path: PathKey) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for src in reversed(sources):
            if not isinstance(src, MappingNode):
                line, col = self._where(src)
                raise YamlProblem("'<<' merges only mappings", line, col)
            merged.update(self._mapping(src, path))
        return merged
