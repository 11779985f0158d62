"""The pass API: what a plugin implements, and the context the runner hands it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from optkit.errors import PluginError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from optkit.artifacts import Artifact

__all__ = ["Pass", "PassContext", "check_pass_class"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Pass:
    """Base class of every optimization pass.

    Subclasses set ``name`` (what pipeline files use), ``summary`` (one line for
    ``optkit passes``), an ``Options`` pydantic model, and implement :meth:`apply`.

    Example:
        >>> class Identity(Pass):
        ...     name = "identity"
        ...     summary = "Return the model unchanged."
        ...     preserves_outputs = True
        ...     def apply(self, model, ctx):
        ...         return model
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    #: When true, the runner fails the stage if outputs drift beyond the pipeline's tolerance.
    preserves_outputs: ClassVar[bool] = False

    class Options(BaseModel):
        """The pass's options; unknown options are rejected."""

        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module | Artifact:
        """Transform ``model`` and return the result.

        Args:
            model: the current model (in eval mode, on ``ctx.device``). A pass may change it
                in place or return a new module.
            ctx: device, example input, this stage's output folder, logger, and ``details``
                (a dict for what the pass has to say: it lands in the report).

        Returns:
            The new model, or a deployable :class:`optkit.artifacts.Artifact` (e.g. an ONNX
            file), which the runner measures under its own runtime; the model is then carried
            on unchanged to the next stage.
        """
        raise NotImplementedError(f"{type(self).__name__}.apply")


@dataclass
class PassContext:
    """What a pass gets besides the model.

    Attributes:
        device: the device the model is on and is measured on.
        example_input: a seeded batch of the pipeline's ``input_shape`` on ``device``.
        output_dir: this stage's own folder (created); artifacts go here.
        logger: a logger named for the stage.
        stage_index: 1-based position of the stage in the pipeline.
        details: what the pass reports (pairs fused, sparsity, exporter, ...); JSON-serializable.
        artifacts: files the stage produced; :meth:`artifact_path` adds to it.
    """

    device: torch.device
    example_input: torch.Tensor
    output_dir: Path
    logger: logging.Logger
    stage_index: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)

    def artifact_path(self, filename: str) -> Path:
        """A path in this stage's folder for ``filename``, recorded as an artifact of the stage."""
        path = self.output_dir / filename
        self.artifacts.append(path)
        return path


def check_pass_class(obj: object, origin: str) -> str:
    """Validate a class given to ``register`` and return its name.

    Raises:
        PluginError: naming ``origin`` and what is missing.
    """
    if not (isinstance(obj, type) and issubclass(obj, Pass)):
        raise PluginError(f"{origin}: register() takes an optkit.Pass subclass, got {obj!r}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{origin}: {obj.__name__}.name must be a lower_snake_case string, got {name!r}")
    if not isinstance(getattr(obj, "summary", None), str):
        raise PluginError(f"{origin}: {obj.__name__}.summary must be a one-line string")
    if not (isinstance(obj.Options, type) and issubclass(obj.Options, BaseModel)):
        raise PluginError(f"{origin}: {obj.__name__}.Options must be a pydantic BaseModel")
    return name
