"""YAML with line numbers: ``safe_load`` semantics, duplicate keys rejected, a line for every path."""

from __future__ import annotations

from typing import Any

import yaml

from optkit.errors import PipelineError

__all__ = ["load_yaml_with_lines", "line_of"]

Path_ = tuple[Any, ...]


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping."""

    filename: str | None = None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise PipelineError(
                    f"duplicate key {key!r} (first given on line {seen[key]})", self.filename, line
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictSafeLoader.construct_mapping
)


def load_yaml_with_lines(text: str, filename: str | None = None) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML safely and map every key path to its 1-based line.

    Args:
        text: the YAML document.
        filename: used in error messages.

    Returns:
        ``(data, lines)`` where ``lines[("passes", 1, "prune_l1", "amount")]`` is the line of
        that key (or list item).

    Raises:
        PipelineError: a syntax error or a duplicate key, with its line.
    """
    loader = _StrictSafeLoader(text)
    loader.filename = filename
    try:
        node = loader.get_single_node()
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
