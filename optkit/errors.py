"""Errors a user can act on. Each says what is at fault: file and line, stage, option or plugin."""

from __future__ import annotations

__all__ = ["OptkitError", "PipelineError", "PluginError", "StageError", "CheckpointError"]


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
