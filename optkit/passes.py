"""The pass API: what a plugin implements, and the context the runner hands it."""

from __future__ import annotations

import inspect
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from optkit.artifacts import Artifact
from optkit.errors import PluginError, StageError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch import nn

    from optkit.inputs import ExampleInputs

__all__ = ["Pass", "PassContext", "PassData", "Progress", "Tolerance", "check_pass_class"]

A = TypeVar("A", bound=Artifact)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Tolerance(BaseModel):
    """How far a stage's outputs may drift from the stage before, on the seeded batch.

    Every bound that is set applies:

    - ``atol``/``rtol``: element-wise, ``max|Δ| <= atol + rtol × max|reference|`` (both ``None``:
      no element-wise bound);
    - ``cosine``: the cosine similarity of the outputs is at least this;
    - ``top1_agreement``: the share of the batch whose top-1 class is the reference's is at least
      this (classifier outputs ``[batch, classes]`` only).

    The pipeline's ``measure.drift_tolerance`` is one; a pass that preserves outputs may declare
    its own (see :meth:`Pass.tolerance`): exporting holds outputs element-wise, quantizing holds
    them to a similarity (:meth:`similarity`).

    Example:
        >>> Tolerance(atol=1e-5, rtol=1e-3).describe()
        'max|Δ| <= atol 1e-05 + rtol 0.001 × max|reference|'
        >>> Tolerance.similarity(cosine=0.99, top1_agreement=0.9).describe()
        'cosine >= 0.99, top-1 agreement >= 0.9'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    atol: float | None = Field(1e-4, ge=0, description="Absolute tolerance (null, with rtol null: no element-wise bound).")
    rtol: float | None = Field(1e-4, ge=0, description="Tolerance relative to the largest reference output.")
    cosine: float | None = Field(None, ge=-1, le=1, description="Smallest cosine similarity of the outputs to the stage before's.")
    top1_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest share of the batch whose top-1 class equals the stage before's (classifier outputs)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Tolerance:
        if (self.atol is None) != (self.rtol is None):
            raise ValueError("give atol and rtol together (both null: no element-wise bound)")
        if self.atol is None and self.cosine is None and self.top1_agreement is None:
            raise ValueError("a tolerance needs a bound: atol and rtol, cosine or top1_agreement")
        return self

    @classmethod
    def similarity(cls, cosine: float | None = None, top1_agreement: float | None = None) -> Tolerance:
        """A tolerance of similarity only (no element-wise bound), for passes that change
        outputs a little everywhere, such as quantization."""
        return cls(atol=None, rtol=None, cosine=cosine, top1_agreement=top1_agreement)

    def describe(self) -> str:
        """The bounds in words, for reports and messages."""
        parts = []
        if self.atol is not None:
            parts.append(f"max|Δ| <= atol {self.atol:g} + rtol {self.rtol:g} × max|reference|")
        if self.cosine is not None:
            parts.append(f"cosine >= {self.cosine:g}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.top1_agreement:g}")
        return ", ".join(parts)


class Pass(ABC):
    """Base class of every optimization pass.

    Subclasses set ``name`` (what pipeline files use), ``summary`` (one line for
    ``optkit passes``), an ``Options`` class derived from :class:`Pass.Options`, and implement
    :meth:`apply`. Registration refuses a class that breaks any of these.

    What a pass promises about its outputs is one declared policy, which the runner enforces:
    with ``preserves_outputs = True`` the stage fails when its outputs on the seeded batch
    drift from the previous stage's beyond :meth:`tolerance` (the pipeline's
    ``measure.drift_tolerance`` unless the pass declares its own).

    A pass that reads the baseline's module (a distillation teacher, say) declares
    ``needs_baseline_model = True`` (a class attribute, or a property that reads the options):
    the runner then keeps one copy of the baseline for ``ctx.baseline_model``. No pass asking
    for it, no copy is made.
    What a pass reads and returns besides modules is declared too, and checked by ``optkit
    validate`` before anything runs: ``consumes`` names the kind of artifact (an
    :class:`~optkit.artifacts.Artifact` subclass, e.g. :class:`~optkit.artifacts.OnnxArtifact`)
    the pass reads from ``ctx.artifact``, which the latest earlier stage must have produced;
    ``produces`` the kind :meth:`apply` returns. A pass that does not declare ``produces`` returns a
    module, and a module after an artifact makes that artifact stale: a consuming pass may not
    follow it.

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
    preserves_outputs: ClassVar[bool] = False
    #: The runner keeps a copy of the baseline's module for ``ctx.baseline_model`` (one model's memory).
    needs_baseline_model: bool = False
    #: The kind of artifact the pass reads from ``ctx.artifact``; ``None``: none (it works on the module).
    consumes: ClassVar[type[Artifact] | None] = None
    #: The kind of artifact :meth:`apply` returns; ``None``: it returns a module.
    produces: ClassVar[type[Artifact] | None] = None

    class Options(BaseModel):
        """The pass's options; unknown options are rejected (subclasses inherit ``extra="forbid"``)."""

        model_config = ConfigDict(extra="forbid")

    #: The validated options; subclasses annotate ``options: Options`` for their own type.
    options: Pass.Options

    def __init__(self, options: BaseModel | Mapping[str, Any] | None = None) -> None:
        if options is None or isinstance(options, Mapping):
            options = self.Options.model_validate(dict(options or {}))
        self.options = cast("Pass.Options", options)  # the subclass's Options, validated above or given

    def device_problem(self, device_type: str) -> str | None:
        """Why these options cannot run on a ``device_type`` device (``cpu`` or ``cuda``), or ``None``.

        ``optkit validate`` asks it for the device the pipeline file names, so that a stage that
        cannot run there is refused at its line before anything runs (``apply`` still refuses too).
        """
        return None

    def tolerance(self) -> Tolerance | None:
        """The drift this stage may show when ``preserves_outputs``; ``None``: the pipeline's own."""
        return None

    @abstractmethod
    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module | Artifact:
        """Transform ``model`` and return the result.

        Args:
            model: the current model (in eval mode, on ``ctx.device``), the stage's to change:
                a pass that returns a module changes it in place (or builds a new one from it)
                and never copies it defensively; the runner keeps its own copy of what it still
                needs (the baseline). A pass that returns an artifact leaves the model as it got
                it (the run carries it on) and copies only what the export changes.
            ctx: device, example input, this stage's output folder, logger, ``details``
                (a dict for what the pass has to say: it lands in the report), and ``artifact``
                (the artifact of the latest earlier stage, for a pass that ``consumes`` one).

        Returns:
            The new model, or a deployable :class:`optkit.artifacts.Artifact` (e.g. an ONNX
            file, the kind ``produces`` declares), which the runner measures under its own
            runtime; the model is then carried on unchanged to the next stage, and the artifact
            is the next stage's ``ctx.artifact``.
        """


@dataclass(frozen=True)
class PassData:
    """The data a pass may read: the pipeline's ``data:`` loaders, their batches on the stage's device.

    Each loader yields ``(inputs, labels)`` batches: ``inputs`` as the model takes them (the
    ``data.transform`` applied) and ``labels`` an int64 tensor of class indices, ``-1`` for a sample
    without one. ``len(loader)`` is its number of batches, ``loader.dataset`` its samples,
    ``loader.classes`` the class names the dataset reports (an image folder's) or ``None``, and
    ``loader.batched(batch_size, seed=..., drop_last=...)`` the same samples shuffled by a pass's
    own seed (:class:`optkit.data.loaders.DeviceLoader`).

    Attributes:
        train: ``data.train`` (shuffled, seeded, when ``shuffle: true``), or ``None``.
        calibration: ``data.calibration``, else the train loader, else the eval loader, or ``None``.
        eval: ``data.eval`` (always in order), or ``None``.
    """

    train: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None
    eval: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None

    def require(self, role: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The loader for ``role`` (``train``, ``calibration`` or ``eval``).

        Raises:
            StageError: the pipeline has no such entry; the message names the ``data:`` entry to add.
        """
        if role not in ("train", "calibration", "eval"):
            raise ValueError(f"no data role {role!r}; expected train, calibration or eval")
        loader = getattr(self, role)
        if loader is None:
            raise StageError(f"this pass needs {role} data: add data.{role} to the pipeline, e.g. {_data_example(role)}")
        return loader


@dataclass(frozen=True)
class Progress:
    """How far a pass is in a long task (training, calibration), for progress displays.

    A pass reports it with :meth:`PassContext.report_progress`; the runner hands it to the
    ``optkit_stage_progress`` observers (the CLI draws a progress bar).

    Attributes:
        task: what is going on (``train``, ``bn_recalibrate``); each task is one bar.
        completed: steps done.
        total: steps in all, or ``None`` when unknown.
        fields: what to show beside the bar, in order (``{"epoch": "1/3", "loss": 0.41}``); numbers and short text.
    """

    task: str
    completed: int
    total: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


def _data_example(role: str) -> str:
    return f"data: {{{role}: {{source: imagefolder:PATH}}}}"


@dataclass
class PassContext:
    """What a pass gets besides the model.

    Attributes:
        device: the device the model is on and is measured on.
        example_input: a seeded batch of the pipeline's ``input_shape`` on ``device``; for a model
            of several inputs, the first of them (a pass that cannot feed them all calls
            :meth:`require_single_input` first).
        example_inputs: all of the model's seeded inputs (:class:`optkit.inputs.ExampleInputs`:
            ``args``, ``kwargs``, ``call(model)``); built from ``example_input`` when not given.
        output_dir: this stage's own folder (created); artifacts go here.
        logger: a logger named for the stage.
        stage_index: 1-based position of the stage in the pipeline.
        details: what the pass reports (pairs fused, sparsity, exporter, ...); JSON-serializable.
        artifacts: files the stage produced; :meth:`artifact_path` adds to it.
        data: the pipeline's data loaders on ``device`` (:class:`PassData`), or ``None`` when the
            pipeline has no ``data:`` section; :meth:`require_data` fails the stage for a pass
            that cannot work without.
        baseline_model: the baseline's module (a copy kept by the runner: eval mode, on ``device``,
            every parameter with ``requires_grad=False``) for a pass that declares
            ``needs_baseline_model``; else ``None``. Read it, never change it: later stages see it too.
        on_progress: where :meth:`report_progress` goes (the runner's observers); ``None``: nowhere.
        artifact: the artifact the latest earlier stage returned (an ONNX file, say), or ``None``
            when none did or a stage returned a module since (the artifact is then stale);
            :meth:`require_artifact` gets it typed, or fails the stage.
        module_rules: what library modules compute, by class path (an
            :class:`optkit.models.rules.ModuleRules` from every plugin's ``optkit_register_module_rules``;
            look a module up with :func:`optkit.find_rule`). Empty outside a run.
        importances: channel-importance criteria registered by plugins (``optkit_register_importances``),
            by name: ``criterion(group) -> one score per channel`` (see :class:`optkit.PruningGroup`).
            Empty outside a run.
    """

    device: torch.device
    example_input: torch.Tensor
    output_dir: Path
    logger: logging.Logger
    stage_index: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    data: PassData | None = None
    baseline_model: nn.Module | None = None
    on_progress: Callable[[Progress], None] | None = None
    module_rules: Mapping[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None
    importances: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    example_inputs: ExampleInputs = None  # type: ignore[assignment]  # set from example_input in __post_init__

    def __post_init__(self) -> None:
        if self.example_inputs is None:
            from optkit.inputs import ExampleInputs  # torch is imported only when a context is made

            self.example_inputs = ExampleInputs.of(self.example_input)

    def require_single_input(self, stage: str) -> torch.Tensor:
        """``example_input``, for a pass that handles models of one input tensor only.

        Raises:
            StageError: the model takes several inputs (or one by keyword), before the pass does any work.
        """
        if not self.example_inputs.single:
            raise StageError(
                f"{stage} handles models of one input tensor, and this model takes {len(self.example_inputs.defs)} "
                f"({', '.join(self.example_inputs.names)}); remove {stage} from the pipeline for this model"
            )
        return self.example_input

    def require_artifact(self, kind: type[A]) -> A:
        """``ctx.artifact``, checked to be a ``kind`` (e.g. :class:`~optkit.artifacts.OnnxArtifact`).

        Example:
            >>> onnx_file = ctx.require_artifact(OnnxArtifact).path  # doctest: +SKIP

        Raises:
            StageError: no earlier stage produced one (or a module stage made it stale), or it is
                of another kind; the message says what to add.
        """
        if isinstance(self.artifact, kind):
            return self.artifact
        wanted = f"{kind.description} ({kind.__name__})"
        if self.artifact is None:
            raise StageError(
                f"this pass needs {wanted} from an earlier stage, and there is none: add a stage that "
                "produces one before it, after any stage that changes the model (optkit validate names one)"
            )
        raise StageError(f"this pass needs {wanted}, but the stage before it produced {type(self.artifact).__name__}")

    def report_progress(self, task: str, completed: int, total: int | None = None, **fields: Any) -> None:
        """Say how far a long task is (the CLI shows a progress bar; quiet under ``--json``).

        Args:
            task: the task's name; each task is one bar.
            completed: steps done so far.
            total: steps in all, or ``None``.
            **fields: shown beside the bar, e.g. ``epoch="1/3", loss=0.41``.

        Example:
            >>> for step, batch in enumerate(batches, 1):  # doctest: +SKIP
            ...     ctx.report_progress("train", step, len(batches), loss=loss.item())
        """
        if self.on_progress is not None:
            self.on_progress(Progress(task, completed, total, fields))

    def require_data(self, role: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(inputs, labels)`` loader for ``role`` (``train``, ``calibration`` or ``eval``).

        Example:
            >>> for inputs, _ in ctx.require_data("calibration"):  # doctest: +SKIP
            ...     observer(inputs)

        Raises:
            StageError: the pipeline has no ``data:`` section, or not this entry; the message
                names the entry to add (the runner prefixes the stage and the pass).
        """
        if self.data is None:
            raise StageError(f"this pass needs {role} data, and the pipeline has no data: section; add one, e.g. {_data_example(role)}")
        return self.data.require(role)

    def artifact_path(self, filename: str) -> Path:
        """A path in this stage's folder for ``filename``, recorded as an artifact of the stage.

        Args:
            filename: a name relative to the stage folder; subfolders (``onnx/model.onnx``) are created.

        Raises:
            ValueError: ``filename`` is empty, absolute, or leaves the stage folder (``..``).
        """
        relative = Path(filename)
        if not str(filename) or relative.is_absolute() or ".." in relative.parts or relative == Path("."):
            raise ValueError(f"artifact_path({str(filename)!r}): give a file name relative to the stage folder, without '..'")
        path = self.output_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts.append(path)
        return path


def check_pass_class(obj: object, origin: str) -> str:
    """Validate a class given to ``register`` and return its name.

    Raises:
        PluginError: naming ``origin`` (the plugin) and what to fix.
    """
    if not (isinstance(obj, type) and issubclass(obj, Pass)):
        raise PluginError(f"{origin}: register() takes an optkit.Pass subclass, got {obj!r}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{origin}: {obj.__name__}.name must be a lower_snake_case string, got {name!r}")
    if not isinstance(getattr(obj, "summary", None), str):
        raise PluginError(f"{origin}: {obj.__name__}.summary must be a one-line string")
    if not (isinstance(obj.Options, type) and issubclass(obj.Options, Pass.Options)):
        raise PluginError(
            f"{origin}: {obj.__name__}.Options must subclass optkit.Pass.Options (write `class Options(Pass.Options):`), "
            "so that unknown options are rejected instead of silently ignored"
        )
    for role in ("consumes", "produces"):
        kind = getattr(obj, role)
        if kind is not None and not (isinstance(kind, type) and issubclass(kind, Artifact)):
            raise PluginError(
                f"{origin}: {obj.__name__}.{role} must be an optkit.Artifact subclass (e.g. optkit.OnnxArtifact) or None, got {kind!r}"
            )
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise PluginError(f"{origin}: {obj.__name__} does not implement {missing}")
    return name
