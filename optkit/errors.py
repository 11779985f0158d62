"""Errors a user can act on. Each says what is at fault: file and line, stage, option or plugin."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = [
    "OptkitError",
    "PipelineError",
    "PluginError",
    "StageError",
    "CheckpointError",
    "did_you_mean",
    "closest",
    "plain_text",
]

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class OptkitError(Exception):
    """Base of the errors optkit reports to a person (no traceback needed)."""

    exit_code = 1


class PipelineError(OptkitError):
    """A pipeline file, model source or option is wrong; nothing was run.

    Args:
        message: what is wrong and, where it helps, what was expected.
        file: the pipeline file, when there is one.
        line: the 1-based line in ``file`` that YAML attributes the fault to.
    """

    exit_code = 2

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + self.message


class PluginError(OptkitError):
    """A plugin failed to load, or two plugins claim the same name."""

    exit_code = 2


class CheckpointError(PipelineError):
    """A checkpoint cannot be read, is unsafe to unpickle, or does not fit the model."""


class StageError(OptkitError):
    """A stage failed: a pass raised, or its result broke a guarantee (e.g. drift tolerance)."""

    exit_code = 1


def closest(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The entries of ``known`` that look like ``name``, closest first (for "did you mean")."""
    return difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=cutoff)


def did_you_mean(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x' or 'y'?"`` for the entries of ``known`` close to ``name``, else ``""``.

    Example:
        >>> did_you_mean("prune_l2", ["prune_l1", "fuse_bn"])
        "; did you mean 'prune_l1'?"
    """
    close = closest(name, known, n, cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def plain_text(text: str) -> str:
    """``text`` without ANSI escape sequences or other control characters (newlines and tabs stay).

    Errors from libraries (torch's exporter colours its messages) reach report.json and the
    terminal as plain text.

    Example:
        >>> plain_text("\x1b[96mRuntimeError\x1b[0m: bad shape")
        'RuntimeError: bad shape'
    """
    return _CONTROL.sub("", _ANSI_ESCAPE.sub("", text))
