"""Pipeline files: YAML in, a validated :class:`Pipeline` out, every error with file:line."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from optkit.artifacts import Artifact
from optkit.config.data import DATA_ROLES, DatasetSpec, DataSpec
from optkit.config.documents import ConfigDocument, SourceSpec, StrictModel, parse_config, read_config
from optkit.config.optimize import OptimizeSpec
from optkit.errors import PipelineError, PluginError
from optkit.files import resolve_path
from optkit.inputs import DTYPES, InputDef
from optkit.passes import Pass, Tolerance

__all__ = [
    "check_device",
    "MAX_INPUT_ELEMENTS",
    "MAX_INPUT_DIMS",
    "InputShape",
    "check_input_shape",
    "SourceLookup",
    "WeightsSpec",
    "InputSpec",
    "ModelSpec",
    "MeasureSpec",
    "PipelineFile",
    "Stage",
    "check_accuracy_settings",
    "Pipeline",
    "PassLookup",
    "ProducerLookup",
    "check_artifact_flow",
    "load_pipeline",
    "parse_pipeline",
    "pipeline_json_schema",
]

#: Finds the pass class registered under a name (``Host.get_pass``); raises
#: :class:`~optkit.errors.PipelineError` for an unknown name, :class:`~optkit.errors.PluginError`
#: for a name two plugins claim.
PassLookup = Callable[[str], "type[Pass]"]

#: The names of the registered passes that produce an artifact of a kind (``Host.passes_producing``),
#: for the fix an artifact-flow error suggests.
ProducerLookup = Callable[["type[Artifact]"], "list[str]"]

#: Checks that a model-source or dataset-source scheme is registered (``Host.get_source``,
#: ``Host.get_dataset``); raises :class:`~optkit.errors.PipelineError` for an unknown scheme (with
#: the closest registered ones), :class:`~optkit.errors.PluginError` for one two plugins claim.
SourceLookup = Callable[[str], object]

#: The most elements of an input batch: 4 GiB of float32. A larger shape is a typo that would
#: only fail later, allocating.
MAX_INPUT_ELEMENTS = 2**30
#: The most dimensions of an input batch.
MAX_INPUT_DIMS = 8


def check_input_shape(shape: list[int]) -> list[int]:
    """``shape`` when its batch has at most :data:`MAX_INPUT_ELEMENTS` elements.

    Raises:
        ValueError: the batch is larger, with its size.
    """
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise ValueError(
            f"{elements:,} elements is more than the limit of {MAX_INPUT_ELEMENTS:,} ({MAX_INPUT_ELEMENTS * 4 // 2**30} GiB of float32)"
        )
    return shape


def _written_as_integer(value: Any) -> Any:
    """Refuse ``"16"`` and ``16.0`` in a shape, which pydantic would convert without a word (booleans
    go on to the check that names YAML's ``yes``/``on``)."""
    if isinstance(value, (str, float)):
        raise ValueError(f"a size is an integer written as one (a {type(value).__name__} is not converted)")
    return value


#: An input batch shape: a batch dimension and 1 to :data:`MAX_INPUT_DIMS` - 1 more, each a positive
#: integer written as one (``"16"`` and ``16.0`` are refused, not converted), at most
#: :data:`MAX_INPUT_ELEMENTS` elements.
InputShape = Annotated[
    list[Annotated[PositiveInt, BeforeValidator(_written_as_integer)]],
    Field(min_length=2, max_length=MAX_INPUT_DIMS),
    AfterValidator(check_input_shape),
]


class WeightsSpec(StrictModel):
    """Weights loaded into the model's architecture from a checkpoint file."""

    path: str = Field(description="Checkpoint file (.pt/.pth/.ckpt or .safetensors), relative to the pipeline file.")
    key: str | None = Field(
        None, description="Entry holding the weights: model, ema, state_dict, model_state_dict, ...; found automatically when unset."
    )
    map_location: str | dict[str, str] = Field(
        "cpu", description="torch.load map_location: a device, or a mapping such as {'cuda:0': 'cuda:1'}."
    )
    match: Literal["name", "order"] = Field("name", description="Pair tensors by name (and shape), or by position while shapes agree.")
    exclude: list[str] = Field(
        default_factory=list, description="Tensor names not to load: module names (fc, head, final_layer) or globs ('layer4.*', '*.bias')."
    )
    strict: bool = Field(False, description="Fail unless every tensor of model and checkpoint is paired.")
    min_loaded: float = Field(0.5, ge=0.0, le=1.0, description="Fail when less than this share of the model's tensors is filled.")
    trust_checkpoint: bool = Field(
        False, description="Allow arbitrary unpickling (only for files you trust); model.trust_checkpoint also applies here."
    )


class InputSpec(StrictModel):
    """One input of ``model.inputs``: its batch shape, dtype and the range its example values are drawn from."""

    name: str | None = Field(None, description="The input's name in a list of inputs (ONNX graph input name); a mapping's key names it.")
    shape: InputShape = Field(description="The batch shape; the first dimension is the batch.")
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = Field("float32", description="The tensor's dtype.")
    range: tuple[float, float] | None = Field(
        None,
        description="Example values are drawn from [low, high): integers uniformly (token ids: [0, vocab_size)); "
        "floats uniformly. Unset: standard normal floats; required for integer inputs.",
    )

    @model_validator(mode="after")
    def _range_fits_dtype(self) -> InputSpec:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range [{self.range[0]}, {self.range[1]}) is empty: low must be below high")
        if self.dtype in ("int64", "int32") and self.range is None:
            raise ValueError(f"an {self.dtype} input needs a range: [low, high) of its values, e.g. [0, vocab_size) for token ids")
        if self.dtype in ("int64", "int32", "bool") and self.range is not None and not all(float(v).is_integer() for v in self.range):
            raise ValueError(f"an {self.dtype} input's range must be whole numbers, not {list(self.range)}")
        return self

    def to_def(self, name: str, keyword: bool) -> InputDef:
        low, high = self.range if self.range is not None else (None, None)
        return InputDef(name, tuple(self.shape), DTYPES[self.dtype], low, high, keyword)


def _weights_kind(value: Any) -> str:
    # A mapping when validating a file, a WeightsSpec when serializing the validated model.
    return "spec" if isinstance(value, (dict, WeightsSpec)) else "name"


class ModelSpec(SourceSpec):
    """The model to optimize: where it comes from, its weights and its input."""

    SOURCE_EXAMPLES: ClassVar[str] = "torchvision:resnet50, file:model.pt or python:pkg.mod:factory"

    source: str = Field(description="scheme:rest — torchvision:resnet50, file:model.pt, python:pkg.module:factory, ...")
    weights: (
        Annotated[
            Annotated[str, Tag("name")] | Annotated[WeightsSpec, Tag("spec")],
            Discriminator(_weights_kind),
        ]
        | None
    ) = Field(None, description="none, a torchvision weights name (DEFAULT, IMAGENET1K_V2), a checkpoint path, or a mapping.")
    input_shape: InputShape | None = Field(
        None, description="One float input's batch shape (the shorthand of inputs); [1, 3, 224, 224] when neither is set."
    )
    inputs: (
        Annotated[
            Annotated[list[InputSpec], Tag("list")] | Annotated[dict[str, InputSpec], Tag("mapping")],
            Discriminator(lambda value: "mapping" if isinstance(value, dict) else "list"),
        ]
        | None
    ) = Field(
        None,
        description="Several or non-float inputs: a mapping is passed by keyword (model(input_ids=..., attention_mask=...)), "
        "a list positionally (model(frame1, frame2)). Exclusive with input_shape.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model builder (e.g. num_classes).")
    trust_checkpoint: bool = Field(
        False, description="Allow arbitrary unpickling of file: sources and weights (only for files you trust); --trust-checkpoint sets it."
    )
    freeze: list[str] | None = Field(
        None,
        description="Parameters to freeze (requires_grad=False): module names or globs; 'all_but_head' freezes all but the classifier.",
    )
    _inputs_given: bool = PrivateAttr(False)
    list_keys: bool = Field(
        False, description="Name every loaded, missing, unexpected and mismatched tensor in the report, not only counts; --verbose sets it."
    )

    @model_validator(mode="after")
    def _one_input_spec(self) -> ModelSpec:
        if self.input_shape is not None and self.inputs is not None:
            raise ValueError("give either input_shape (one float tensor) or inputs (several or non-float inputs), not both")
        if self.inputs is not None and not self.inputs:
            raise ValueError("inputs is empty: name at least one input")
        if isinstance(self.inputs, list):
            names = [spec.name or f"input{i}" for i, spec in enumerate(self.inputs)]
            if len(set(names)) != len(names):
                raise ValueError(f"inputs: the names {names} repeat; each input needs its own name")
        self._inputs_given = self.input_shape is not None or self.inputs is not None
        if not self._inputs_given:
            self.input_shape = [1, 3, 224, 224]
        return self

    @property
    def inputs_given(self) -> bool:
        """The file sets ``input_shape`` or ``inputs``; else example inputs a source returns take precedence over the default shape."""
        return self._inputs_given

    def input_defs(self) -> list[InputDef]:
        """The model's inputs: ``input_shape`` as one positional float input named ``input``, or ``inputs``."""
        if self.inputs is None:
            return [InputDef("input", tuple(self.input_shape or ()))]
        if isinstance(self.inputs, dict):
            return [spec.to_def(name, keyword=True) for name, spec in self.inputs.items()]
        return [spec.to_def(spec.name or f"input{i}", keyword=False) for i, spec in enumerate(self.inputs)]

    @field_validator("weights", mode="before")
    @classmethod
    def _none_means_none(cls, value: Any) -> Any:
        return None if value is None or (isinstance(value, str) and value.lower() == "none") else value

    @field_validator("freeze", mode="before")
    @classmethod
    def _one_pattern_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class MeasureSpec(StrictModel):
    """How every stage is measured."""

    warmup: NonNegativeInt = 10
    iters: PositiveInt = 50
    latency: bool = Field(True, description="Time the model (set false for quick structural runs).")
    flops: bool = Field(True, description="Count MACs with thop.")
    cudnn_benchmark: bool = False
    threads: PositiveInt | None = Field(None, description="torch/onnxruntime intra-op threads; default: torch's.")
    flush_denormal: bool = Field(
        True, description="Treat denormal floats as zero on the CPU (random-init models are otherwise timed on denormal arithmetic)."
    )
    drift_tolerance: Tolerance = Field(
        default_factory=Tolerance, description="A stage whose pass preserves outputs fails beyond this (unless the pass declares its own)."
    )
    accuracy: bool | None = Field(
        None,
        description="Evaluate every stage on data.eval (top-1/top-5 accuracy, agreement with the baseline); default: true when data.eval is given.",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="A stage whose top-1 accuracy falls more than this below the baseline's fails (0.01: one point)."
    )
    compare: Literal["auto", "interleaved", "sequential"] = Field(
        "auto",
        description=(
            "interleaved: after every stage is applied, time the baseline and each stage's product side by side, "
            "round-robin; sequential: time each stage right after it is applied (one model in memory at a time); "
            "auto: interleaved when a copy of the model per stage fits in half the free memory."
        ),
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence of the intervals of medians and speed-ups.")
    run_to_run_margin: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description=(
            "Widen every speed-up interval by this share on both sides, for what moves between runs and one run's "
            "interval does not see (0: the bare statistical interval)."
        ),
    )
    noise_max_cv: PositiveFloat | None = Field(
        0.10,
        description=(
            "Warn when a calibration loop before timing varies by more than this robust coefficient of variation "
            "(1.4826 x MAD / median), or on the CPU gets under 80% of its threads' CPU time (null: no check)."
        ),
    )


class PipelineFile(StrictModel):
    """The schema of a pipeline file (stages are validated against each pass's own options)."""

    model: ModelSpec
    device: str | int = Field("auto", description="auto | cpu | cuda | cuda:N | N")
    seed: int = Field(
        0, description="Seeds torch, random and numpy before the model is built, and the input batch every stage is measured on."
    )
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    data: DataSpec | None = Field(None, description="Data sets: eval (accuracy of every stage), train and calibration (for passes).")
    passes: list[str | dict[str, Any]] = Field(default_factory=list)
    output: str | None = Field(None, description="Run folder; default runs/<pipeline file name>.")
    save_model: bool = Field(True, description="Save the final module as model.pt in the run folder.")
    optimize: OptimizeSpec | None = Field(None, description="Settings of optkit optimize (optkit run ignores them).")


@dataclass(frozen=True)
class Stage:
    """One validated stage: the pass class and its parsed options."""

    index: int
    pass_name: str
    pass_cls: type[Pass]
    options: BaseModel
    line: int | None = None

    def make_pass(self) -> Pass:
        return self.pass_cls(self.options)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: file settings plus resolved stages."""

    spec: PipelineFile
    stages: tuple[Stage, ...]
    path: Path | None = None

    @property
    def model(self) -> ModelSpec:
        return self.spec.model

    @property
    def measure(self) -> MeasureSpec:
        return self.spec.measure

    @property
    def base_dir(self) -> Path:
        """Relative paths in the file (checkpoints, file: sources) are relative to this folder."""
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, path: str | Path) -> Path:
        """``path`` from the file, relative to :attr:`base_dir`."""
        return resolve_path(path, self.base_dir)

    @property
    def data(self) -> DataSpec | None:
        return self.spec.data

    @property
    def data_dir(self) -> Path:
        """Relative dataset paths resolve against this: ``data.root`` (itself relative to
        :attr:`base_dir`), else :attr:`base_dir`."""
        root = self.spec.data.root if self.spec.data is not None else None
        return self.resolve(root) if root else self.base_dir

    @property
    def evaluates_accuracy(self) -> bool:
        """Whether every stage is evaluated on ``data.eval`` (``measure.accuracy``, default: when given)."""
        has_eval = self.spec.data is not None and self.spec.data.eval is not None
        return has_eval if self.measure.accuracy is None else self.measure.accuracy

    @property
    def output_dir(self) -> Path:
        """The run folder, relative to the current directory (``runs/<file stem>`` by default)."""
        if self.spec.output:
            return Path(self.spec.output)
        return Path("runs") / (self.path.stem if self.path is not None else "pipeline")

    def summary(self) -> dict[str, Any]:
        """The ``pipeline`` section of report.json."""
        return {
            "path": str(self.path) if self.path is not None else None,
            "model": self.model.model_dump(mode="json", exclude_defaults=False),
            "device": self.spec.device,
            "seed": self.spec.seed,
            "measure": self.measure.model_dump(mode="json"),
            **({"data": self.spec.data.model_dump(mode="json", exclude_defaults=True)} if self.spec.data is not None else {}),
            "passes": [{"pass": s.pass_name, "options": s.options.model_dump(mode="json")} for s in self.stages],
        }


def load_pipeline(
    path: str | Path,
    get_pass: PassLookup,
    get_source: SourceLookup | None = None,
    *,
    producers: ProducerLookup | None = None,
    get_dataset: SourceLookup | None = None,
) -> Pipeline:
    """Read and validate a pipeline file.

    Args:
        path: the file.
        get_pass: finds a pass class by name (``host.get_pass``).
        get_source: checks the scheme of ``model.source`` (``host.get_source``); unchecked when ``None``.
        producers: names the passes that produce an artifact kind (``host.passes_producing``), so
            that a stage missing its input artifact is told which pass to add.
        get_dataset: checks the scheme of every ``data:`` entry (``host.get_dataset``); unchecked when ``None``.

    Raises:
        PipelineError: unreadable file, bad YAML, unknown keys, passes, model or dataset source
            schemes, bad options, a stage whose input artifact no earlier stage produces or a
            later one made stale; each with ``file:line`` where YAML gives one.
    """
    return _build(read_config(path, "pipeline file"), get_pass, Path(path), get_source, producers, get_dataset)


def parse_pipeline(
    text: str,
    get_pass: PassLookup,
    path: Path | None = None,
    get_source: SourceLookup | None = None,
    *,
    producers: ProducerLookup | None = None,
    get_dataset: SourceLookup | None = None,
) -> Pipeline:
    """Validate pipeline YAML ``text`` (see :func:`load_pipeline`)."""
    doc = parse_config(text, str(path) if path is not None else "<pipeline>")
    return _build(doc, get_pass, path, get_source, producers, get_dataset)


def _build(
    doc: ConfigDocument,
    get_pass: PassLookup,
    path: Path | None,
    get_source: SourceLookup | None,
    producers: ProducerLookup | None,
    get_dataset: SourceLookup | None = None,
) -> Pipeline:
    if not isinstance(doc.data, dict):
        raise doc.error("a pipeline file is a mapping with at least 'model:' and 'passes:'")
    spec = doc.validate(PipelineFile, doc.data)
    if get_source is not None:
        _check_scheme(doc, get_source, spec.model.scheme, "model.source", ("model", "source"))
    if get_dataset is not None and spec.data is not None:
        for role, entry in spec.data.datasets().items():
            given = doc.data["data"][role]  # a mapping {source: ...}, or the source string alone
            ypath = ("data", role, "source") if isinstance(given, dict) else ("data", role)
            _check_scheme(doc, get_dataset, entry.scheme, f"data.{role}", ypath)
    check_accuracy_settings(spec.measure, spec.data, doc)
    stages = tuple(_parse_stage(i, item, get_pass, doc) for i, item in enumerate(spec.passes))
    check_artifact_flow(stages, doc, producers)
    return Pipeline(spec=spec, stages=stages, path=path)


def _enumerate_schemes(source: dict[str, Any], schemes: list[str]) -> None:
    """Make the JSON Schema of a ``source`` string start with one of ``schemes``, listed for completion."""
    source["pattern"] = f"^({'|'.join(re.escape(s) for s in schemes)}):."
    source["examples"] = [f"{scheme}:" for scheme in schemes]
    source["description"] += f" Installed schemes: {', '.join(schemes) or 'none'}."


def _check_scheme(doc: ConfigDocument, lookup: SourceLookup, scheme: str, option: str, ypath: tuple[Any, ...]) -> None:
    """``scheme`` is registered, or a :class:`PipelineError` at the line of ``ypath`` naming ``option``."""
    try:
        lookup(scheme)
    except (PipelineError, PluginError) as exc:  # unknown (with did-you-mean), or claimed by two plugins
        raise doc.error(f"{option}: {getattr(exc, 'message', str(exc))}", ypath) from None


def check_artifact_flow(stages: Iterable[Stage], doc: ConfigDocument, producers: ProducerLookup | None = None) -> None:
    """Every stage that consumes an artifact (``Pass.consumes``) gets one: the latest earlier stage
    that returned an artifact produced that kind, and no stage since returned a module.

    A pass that declares ``produces`` returns an artifact; any other pass (a consuming one too)
    returns a module, and a module after an artifact makes the artifact stale (the file no longer
    computes what the model computes), so a consuming pass cannot follow it.

    Raises:
        PipelineError: at the consuming stage's line, naming the pass to add or the stage to move.
    """
    latest: Stage | None = None  # the stage whose artifact the next stage gets
    changed: Stage | None = None  # the first stage since then that returned a module
    for stage in stages:
        wanted = stage.pass_cls.consumes
        if wanted is not None:
            where = f"stage {stage.index} ({stage.pass_name})"
            need = f"{wanted.description} ({wanted.__name__})"
            made = latest.pass_cls.produces if latest is not None else None
            if latest is None or made is None or not issubclass(made, wanted):
                names = producers(wanted) if producers is not None else []
                add = f"add {' or '.join(names)}" if names else f"add a pass that produces {wanted.__name__}"
                got = (
                    f"; the latest before it, stage {latest.index} ({latest.pass_name}), produces {made.__name__}"
                    if latest and made
                    else ""
                )
                raise doc.error(
                    f"{where} needs {need} from an earlier stage, and none produces one{got}: {add} before it", ("passes", stage.index - 1)
                )
            if changed is not None:
                raise doc.error(
                    f"{where} needs {need} from stage {latest.index} ({latest.pass_name}), but stage {changed.index} "
                    f"({changed.pass_name}) changes the model after it, so that {wanted.__name__} is stale; "
                    f"move {latest.pass_name} after {changed.pass_name}",
                    ("passes", stage.index - 1),
                )
        if stage.pass_cls.produces is not None:
            latest, changed = stage, None
        elif latest is not None and changed is None:
            changed = stage


def check_device(pipeline: Pipeline, device_type: str) -> None:
    """Every stage can run on a ``device_type`` (``cpu``, ``cuda``) device, as its pass says
    (:meth:`optkit.Pass.device_problem`).

    Raises:
        PipelineError: at the first stage that cannot, naming its line.
    """
    for stage in pipeline.stages:
        problem = stage.make_pass().device_problem(device_type)
        if problem is not None:
            where = f"{pipeline.path}:{stage.line}: " if pipeline.path is not None and stage.line is not None else ""
            raise PipelineError(f"{where}stage {stage.index} ({stage.pass_name}): {problem}")


def check_accuracy_settings(measure: MeasureSpec, data: DataSpec | None, doc: ConfigDocument) -> None:
    """``measure.accuracy: true`` and ``measure.max_accuracy_drop`` need ``data.eval``; the budget needs accuracy on.

    Raises:
        PipelineError: at the line of the setting that cannot be honoured.
    """
    has_eval = data is not None and data.eval is not None
    if measure.accuracy and not has_eval:
        raise doc.error("measure.accuracy: true needs data.eval (e.g. data: {eval: imagefolder:data/val})", ("measure", "accuracy"))
    if measure.max_accuracy_drop is not None:
        if not has_eval:
            raise doc.error(
                "measure.max_accuracy_drop needs data.eval to measure accuracy on (e.g. data: {eval: imagefolder:data/val})",
                ("measure", "max_accuracy_drop"),
            )
        if measure.accuracy is False:
            raise doc.error("measure.max_accuracy_drop needs measure.accuracy (it is false)", ("measure", "accuracy"))


def _parse_stage(i: int, item: Any, get_pass: PassLookup, doc: ConfigDocument) -> Stage:
    number = i + 1
    base: tuple[str | int, ...]
    options: Any
    if isinstance(item, str):
        name, options, base = item, {}, ("passes", i)
    elif isinstance(item, dict) and len(item) == 1:
        ((name, options),) = item.items()
        options = {} if options is None else options
        base = ("passes", i, name)
        if not isinstance(options, dict):
            raise doc.error(f"stage {number} ({name}): options must be a mapping, got {options!r}", base)
    else:
        raise doc.error(f"stage {number}: expected a pass name or 'name: {{options}}', got {item!r}", ("passes", i))
    try:
        pass_cls = get_pass(name)
    except PipelineError as exc:
        raise doc.error(f"stage {number}: {exc.message}", base) from None
    except PluginError as exc:  # two plugins claim the name
        raise doc.error(f"stage {number}: {exc}", base) from None
    parsed = doc.validate(pass_cls.Options, options, base, what="option", prefix=f"stage {number} ({name}): ")
    return Stage(number, name, pass_cls, parsed, doc.line(base))


def pipeline_json_schema(
    passes: Iterable[type[Pass]], model_schemes: Iterable[str] | None = None, dataset_schemes: Iterable[str] | None = None
) -> dict[str, Any]:
    """JSON Schema of pipeline files, with the options of every pass in ``passes`` (for editors).

    Args:
        passes: the installed pass classes; ``passes:`` items enumerate their names.
        model_schemes: the installed model-source schemes: ``model.source`` must start with one
            (a ``pattern``), and ``examples`` lists them for completion. ``None``: free text.
        dataset_schemes: the same for the ``source`` of every ``data:`` entry.
    """
    schema = PipelineFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "optkit pipeline"
    defs = schema.setdefault("$defs", {})
    for spec, schemes in ((ModelSpec, model_schemes), (DatasetSpec, dataset_schemes)):
        if schemes is not None:
            _enumerate_schemes(defs[spec.__name__]["properties"]["source"], sorted(schemes))
    # A data: entry may be its source string alone (eval: imagefolder:data/val).
    for role in DATA_ROLES:
        defs["DataSpec"]["properties"][role]["anyOf"].insert(1, defs["DatasetSpec"]["properties"]["source"])
    variants: list[dict[str, Any]] = []
    names = []
    for pass_cls in passes:
        options_schema = pass_cls.Options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(options_schema.pop("$defs", {}))
        options_schema["description"] = pass_cls.summary
        def_name = f"{pass_cls.name}_options"
        defs[def_name] = options_schema
        names.append(pass_cls.name)
        variants.append(
            {
                "type": "object",
                "properties": {pass_cls.name: {"anyOf": [{"$ref": f"#/$defs/{def_name}"}, {"type": "null"}]}},
                "required": [pass_cls.name],
                "additionalProperties": False,
                "description": pass_cls.summary,
            }
        )
    schema["properties"]["passes"] = {
        "type": "array",
        "description": "Stages, in order: a pass name, or 'name: {options}'.",
        "items": {"anyOf": [{"enum": names, "type": "string"}, *variants]},
    }
    return schema
