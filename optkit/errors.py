"""Errors a user can act on. Each says what is at fault: file and line, stage, option or plugin.

The contract for plugin code (a model source, a dataset loader, a module rule, a pass):

- the user's input is wrong (a missing file, a target the plugin does not know, an option it
  cannot honour): raise :class:`PipelineError` with one line saying what is wrong and how to fix
  it. ``optkit run`` exits 2 before anything ran, the entry named (``data.eval (npz:x.npz): ...``);
  inside a pass's ``apply`` the stage fails instead (exit 1, the stage named), as the run has begun.
- anything else a plugin raises is a bug in the plugin: optkit names the plugin and its
  distribution (:class:`PluginBugError`, exit 1; ``optkit --debug`` shows the traceback).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = [
    "OptkitError",
    "PipelineError",
    "PluginError",
    "StageError",
    "CheckpointError",
    "PluginBugError",
    "plugin_code",
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


class PluginBugError(OptkitError):
    """Plugin code raised something other than an optkit error: a bug in that plugin, which the
    message names with its distribution (exit 1). Raised by optkit around plugin code, never by plugins."""

    exit_code = 1


@contextmanager
def plugin_code(where: str, plugin: str, what: str, named: Iterable[str] = ()) -> Iterator[None]:
    """Run plugin code that reads the user's input under the error contract (see the module docstring).

    Args:
        where: the entry at fault, e.g. ``"data.eval (npz:data/x.npz)"``; put before a
            :class:`PipelineError`'s message.
        plugin: who registered the code, e.g. ``"plugin 'npz' (optkit-npz 0.1.0)"``.
        what: the code, e.g. ``"the 'npz' dataset loader"``.
        named: prefixes of messages that name the entry already (``"data.eval"``): kept as they are.

    Raises:
        PipelineError: the code refused the user's input; ``where`` named.
        PluginBugError: the code raised anything else, chained (``--debug`` shows its traceback).
    """
    try:
        yield
    except PipelineError as exc:
        if any(exc.message.startswith(prefix) for prefix in named):
            raise
        raise type(exc)(f"{where}: {exc.message}", exc.file, exc.line) from exc
    except OptkitError:
        raise
    # Plugin code may fail in any way; whatever it is, the plugin is named and the cause chained.
    except Exception as exc:
        raise PluginBugError(
            f"{where}: {what} of {plugin} raised {type(exc).__name__}: {plain_text(str(exc))} "
            f"(a bug in that plugin: for input it refuses, plugin code raises optkit.errors.PipelineError)"
        ) from exc


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
