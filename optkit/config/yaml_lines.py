"""YAML with line numbers: ``safe_load`` semantics, duplicate keys rejected, a line for every path.

A configuration file is read in bounded time and memory whatever it holds: at most
:data:`MAX_FILE_BYTES`, nested at most :data:`MAX_DEPTH` levels, with at most :data:`MAX_ALIASES`
aliases, and at most :data:`MAX_VALUES` values once aliases are expanded (a "billion laughs"
document stops here, before anything walks or validates its expansion).
"""

from __future__ import annotations

import unicodedata
from typing import Any

import yaml

from optkit.errors import PipelineError

__all__ = ["MAX_FILE_BYTES", "MAX_DEPTH", "MAX_ALIASES", "MAX_VALUES", "load_yaml_with_lines", "line_of"]

Path_ = tuple[Any, ...]

#: The largest configuration file read (pipeline and sweep files are a few kB).
MAX_FILE_BYTES = 1 << 20
#: The deepest nesting of mappings and lists.
MAX_DEPTH = 100
#: The most aliases (``*name``) in one file.
MAX_ALIASES = 100
#: The most values (scalars, mappings, lists) once every alias is expanded.
MAX_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping, and enforces the limits."""

    def __init__(self, stream: str, filename: str | None) -> None:
        self.filename = filename
        self.depth = 0
        self.aliases = 0
        super().__init__(stream)

    def error(self, message: str, mark: yaml.Mark | None) -> PipelineError:
        return PipelineError(message, self.filename, mark.line + 1 if mark is not None else None)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self.error(
                    f"more than {MAX_ALIASES} aliases (*name); the limit keeps hostile files cheap to read",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.error(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *defaults`: merged keys may be overridden, which is no duplicate
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                kinds: dict[type, str] = {list: "list", dict: "mapping"}
                kind = kinds.get(type(key), type(key).__name__)
                raise PipelineError(f"a mapping key must be a plain value (text or a number), not a {kind}", self.filename, line) from None
            if key in seen:
                raise PipelineError(f"duplicate key {key!r} (first given on line {seen[key]})", self.filename, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictSafeLoader.construct_mapping)


def load_yaml_with_lines(text: str, filename: str | None = None) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML safely and map every key path to its 1-based line.

    Args:
        text: the YAML document (at most :data:`MAX_FILE_BYTES` characters).
        filename: used in error messages.

    Returns:
        ``(data, lines)`` where ``lines[("passes", 1, "prune_l1", "amount")]`` is the line of
        that key (or list item).

    Raises:
        PipelineError: a syntax error, a duplicate or unhashable key, a character YAML does not
            allow, or a limit exceeded; each with its line.
    """
    if len(text) > MAX_FILE_BYTES:
        raise PipelineError(f"larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for a configuration file", filename)
    node = None
    try:
        loader = _StrictSafeLoader(text, filename)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, filename) from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _count_values(loader, node, {}, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PipelineError(f"invalid YAML: {problem}", filename, mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"invalid YAML: {exc}", filename) from exc
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _walk(loader, node, (), lines)
    return data, lines


def _reader_error(exc: yaml.reader.ReaderError, text: str, filename: str | None) -> PipelineError:
    """A character YAML refuses (NUL, ESC, ...), named by code and line, never echoed raw."""
    line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.character, int) else None
    if isinstance(exc.character, int):
        code = exc.character
        name = unicodedata.name(chr(code), "") or {0: "NUL", 0x1B: "ESC"}.get(code, "a control character")
        what = f"unacceptable character #x{code:04x} ({name})"
    else:
        what = f"undecodable bytes: {exc.reason}"
    return PipelineError(f"invalid YAML: {what}; a configuration file is plain UTF-8 text", filename, line)


def _count_values(loader: _StrictSafeLoader, node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The number of values under ``node`` with aliases expanded (memoized: linear in the file).

    Raises:
        PipelineError: more than :data:`MAX_VALUES`, or an alias inside the value it names.
    """
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise loader.error("an alias refers to a value that contains it (a recursive anchor)", node.start_mark)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    open_nodes.add(key)
    total = 1 + sum(_count_values(loader, child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    if total > MAX_VALUES:
        raise loader.error(
            f"the file expands to more than {MAX_VALUES:,} values through aliases (*name); the limit keeps validation in bounded memory",
            node.start_mark,
        )
    sizes[key] = total
    return total


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(loader, value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(loader, item, path + (i,), lines)


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    path = tuple(path)
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path)
