"""YAML configuration files (pipelines, sweeps): read, parse with line numbers, validate with
pydantic; every error is a :class:`PipelineError` with ``file:line`` and the key at fault."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import ErrorDetails

from optkit.config.yaml_lines import MAX_FILE_BYTES, line_of, load_yaml_with_lines
from optkit.errors import PipelineError, closest
from optkit.files import FileTooLargeError, UnsafeFileError, read_limited

__all__ = ["StrictModel", "SourceSpec", "ConfigDocument", "read_config", "parse_config"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every section of a configuration file: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class SourceSpec(StrictModel):
    """A section whose ``source`` is ``scheme:target`` (a model, a data set); subclasses give the
    field its description and :attr:`SOURCE_EXAMPLES` for the message when the scheme is missing."""

    SOURCE_EXAMPLES: ClassVar[str] = "python:package.module:callable"

    source: str

    @field_validator("source")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or not scheme or not rest:
            raise ValueError(f"expected scheme:name, e.g. {cls.SOURCE_EXAMPLES}")
        return value

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def target(self) -> str:
        return self.source.partition(":")[2]


@dataclass(frozen=True)
class ConfigDocument:
    """A parsed YAML file with its line map, for errors that point at the right line.

    Attributes:
        filename: what messages call the file.
        data: the parsed document.
        lines: key path -> 1-based line (see :func:`optkit.config.yaml_lines.load_yaml_with_lines`).
    """

    filename: str
    data: Any
    lines: dict[tuple[Any, ...], int]

    def error(self, message: str, ypath: tuple[Any, ...] = ()) -> PipelineError:
        """An error at the line of ``ypath`` (or its nearest ancestor)."""
        return PipelineError(message, self.filename, line_of(self.lines, ypath))

    def line(self, ypath: tuple[Any, ...]) -> int | None:
        return line_of(self.lines, ypath)

    def validate(self, model: type[M], data: Any, base: tuple[Any, ...] = (), what: str = "key", prefix: str = "") -> M:
        """``model.model_validate(data)``, where ``data`` sits at ``base`` in the file.

        Raises:
            PipelineError: ``file:line: {prefix}`` and what is wrong: a missing or unknown key
                (with the closest known one), a bad value with what was expected and given, or
                a YAML boolean (``yes``, ``on``, ``true``) where a number is expected.
        """
        try:
            validated = model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            ypath = _data_path(data, err["loc"])
            raise self.error(prefix + _describe(err, model, ypath, what), base + ypath) from None
        boolean_path = _boolean_taken_as_number(data, validated)
        if boolean_path is not None:
            # pydantic's lax mode turns True into 1: YAML 1.1 reads `iters: yes` or `device: no`
            # as booleans, so a typo would silently become a number.
            dotted = ".".join(str(p) for p in boolean_path) or "(top level)"
            raise self.error(
                f"{prefix}{what} {dotted!r}: YAML reads yes/no/on/off/true/false as a boolean, and "
                f"{_lookup(data, boolean_path)!r} is a boolean, not a number; write the number, or quote a word you mean as text",
                base + boolean_path,
            )
        return validated


def read_config(path: str | Path, kind: str) -> ConfigDocument:
    """Read and parse the YAML file at ``path``; ``kind`` ("pipeline file") names it in errors.

    Raises:
        PipelineError: missing, a folder, unreadable, not UTF-8, or invalid YAML (with its line).
    """
    path = Path(path)
    try:
        text = read_limited(path, MAX_FILE_BYTES).decode("utf-8")  # never more: the file may be huge, /dev/zero or a FIFO
    except FileTooLargeError:
        raise PipelineError(f"larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for a {kind}", str(path)) from None
    except UnsafeFileError as exc:  # /dev/zero, a FIFO, a socket
        raise PipelineError(f"{exc}; a {kind} is a file", str(path)) from None
    except FileNotFoundError:
        raise PipelineError(f"no such {kind}", str(path)) from None
    except IsADirectoryError:
        raise PipelineError(f"is a folder, not a {kind}", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {kind}: {exc}", str(path)) from exc
    return parse_config(text, str(path))


def parse_config(text: str, filename: str) -> ConfigDocument:
    """Parse YAML ``text`` safely (duplicate keys rejected) with its line map."""
    data, lines = load_yaml_with_lines(text, filename)
    return ConfigDocument(filename, data, lines)


def _boolean_taken_as_number(data: Any, value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The path of the first boolean in ``data`` that validation turned into a number in ``value``.

    Args:
        data: what the file gave.
        value: what validating it produced (a pydantic model, or containers of them).
    """
    if isinstance(data, bool):
        return path if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    pairs: list[tuple[Any, Any, Any]] = []
    if isinstance(data, dict) and isinstance(value, BaseModel):
        names = {}
        for name, info in type(value).model_fields.items():
            names[name] = name
            if isinstance(info.alias, str):
                names[info.alias] = name
        pairs = [(key, item, getattr(value, names[key])) for key, item in data.items() if key in names]
    elif isinstance(data, dict) and isinstance(value, dict):
        pairs = [(key, item, value[key]) for key, item in data.items() if key in value]
    elif isinstance(data, list) and isinstance(value, (list, tuple)) and len(data) == len(value):
        pairs = [(i, item, validated) for i, (item, validated) in enumerate(zip(data, value, strict=True))]
    for key, item, validated in pairs:
        found = _boolean_taken_as_number(item, validated, path + (key,))
        if found is not None:
            return found
    return None


def _lookup(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a pydantic ``loc`` that exists in ``data`` (drops union tags and the like)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and part == loc[-1]:
            pass  # a missing key: keep it for the message, the line comes from its parent
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(err: ErrorDetails, model: type[BaseModel], ypath: tuple[Any, ...], what: str) -> str:
    dotted = ".".join(str(p) for p in ypath) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        return f"missing required {what} {dotted!r}"
    if kind == "extra_forbidden":
        known = _known_keys(model, ypath[:-1])
        message = f"unknown {what} {dotted!r}"
        close = closest(str(ypath[-1]), known, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        if known:
            message += f" (known: {', '.join(known)})"
        return message
    return f"{what} {dotted!r}: {err['msg']}, got {err.get('input')!r}"


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the nested model at ``path`` under ``model`` (best effort, for messages)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, Annotated, list, dict):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
