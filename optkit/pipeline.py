"""Pipeline files: YAML in, a validated :class:`Pipeline` out, every error with file:line."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
)

from optkit.errors import PipelineError, PluginError
from optkit.yaml_lines import line_of, load_yaml_with_lines

if TYPE_CHECKING:
    from optkit.host import Host
    from optkit.passes import Pass

__all__ = [
    "WeightsSpec",
    "ModelSpec",
    "DriftTolerance",
    "MeasureSpec",
    "PipelineFile",
    "Stage",
    "Pipeline",
    "load_pipeline",
    "parse_pipeline",
    "pipeline_json_schema",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WeightsSpec(_Strict):
    """Weights loaded into the model's architecture from a checkpoint file."""

    path: str = Field(description="Checkpoint file (.pt/.pth/.ckpt or .safetensors), relative to the pipeline file.")
    key: str | None = Field(None, description="Entry holding the weights: model, ema, state_dict, model_state_dict, ...; found automatically when unset.")
    map_location: str | dict[str, str] = Field("cpu", description="torch.load map_location: a device, or a mapping such as {'cuda:0': 'cuda:1'}.")
    match: Literal["name", "order"] = Field("name", description="Pair tensors by name (and shape), or by position while shapes agree.")
    exclude: list[str] = Field(default_factory=list, description="Tensor names not to load: module names (fc, head, final_layer) or globs ('layer4.*', '*.bias').")
    strict: bool = Field(False, description="Fail unless every tensor of model and checkpoint is paired.")
    min_loaded: float = Field(0.5, ge=0.0, le=1.0, description="Fail when less than this share of the model's tensors is filled.")
    trust_checkpoint: bool = Field(False, description="Allow arbitrary unpickling (only for files you trust); model.trust_checkpoint also applies here.")


def _weights_kind(value: Any) -> str:
    # A mapping when validating a file, a WeightsSpec when serializing the validated model.
    return "spec" if isinstance(value, (dict, WeightsSpec)) else "name"


class ModelSpec(_Strict):
    """The model to optimize: where it comes from, its weights and its input."""

    source: str = Field(description="scheme:rest — torchvision:resnet50, file:model.pt, python:pkg.module:factory, ...")
    weights: Annotated[
        Union[Annotated[str, Tag("name")], Annotated[WeightsSpec, Tag("spec")]],
        Discriminator(_weights_kind),
    ] | None = Field(None, description="none, a torchvision weights name (DEFAULT, IMAGENET1K_V2), a checkpoint path, or a mapping.")
    input_shape: list[PositiveInt] = Field(default_factory=lambda: [1, 3, 224, 224], min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model builder (e.g. num_classes).")
    trust_checkpoint: bool = Field(False, description="Allow arbitrary unpickling of file: sources and weights (only for files you trust); --trust-checkpoint sets it.")
    freeze: list[str] | None = Field(None, description="Parameters to freeze (requires_grad=False): module names or globs; 'all_but_head' freezes all but the classifier.")
    list_keys: bool = Field(False, description="Name every loaded, missing, unexpected and mismatched tensor in the report, not only counts; --verbose sets it.")

    @field_validator("source")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or not scheme or not rest:
            raise ValueError("expected scheme:name, e.g. torchvision:resnet50, file:model.pt or python:pkg.mod:factory")
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _none_means_none(cls, value: Any) -> Any:
        return None if value is None or (isinstance(value, str) and value.lower() == "none") else value

    @field_validator("freeze", mode="before")
    @classmethod
    def _one_pattern_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def target(self) -> str:
        return self.source.partition(":")[2]


class DriftTolerance(_Strict):
    """A stage that must preserve outputs fails when ``max_abs > atol + rtol * max|baseline|``."""

    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-4, ge=0)


class MeasureSpec(_Strict):
    """How every stage is measured."""

    warmup: NonNegativeInt = 10
    iters: PositiveInt = 50
    latency: bool = Field(True, description="Time the model (set false for quick structural runs).")
    flops: bool = Field(True, description="Count MACs with thop.")
    cudnn_benchmark: bool = False
    threads: PositiveInt | None = Field(None, description="torch/onnxruntime intra-op threads; default: torch's.")
    flush_denormal: bool = Field(True, description="Treat denormal floats as zero on the CPU (random-init models are otherwise timed on denormal arithmetic).")
    drift_tolerance: DriftTolerance = Field(default_factory=DriftTolerance)


class PipelineFile(_Strict):
    """The schema of a pipeline file (stages are validated against each pass's own options)."""

    model: ModelSpec
    device: str | int = Field("auto", description="auto | cpu | cuda | cuda:N | N")
    seed: int = Field(0, description="Seed of the input batch every stage is measured on.")
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    passes: list[str | dict[str, Any]] = Field(default_factory=list)
    output: str | None = Field(None, description="Run folder; default runs/<pipeline file name>.")
    save_model: bool = Field(True, description="Save the final module as model.pt in the run folder.")


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

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

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
            "passes": [{"pass": s.pass_name, "options": s.options.model_dump(mode="json")} for s in self.stages],
        }


def load_pipeline(path: str | Path, host: Host) -> Pipeline:
    """Read and validate a pipeline file.

    Raises:
        PipelineError: unreadable file, bad YAML, unknown keys or passes, bad options; each with
            ``file:line`` where YAML gives one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError("no such pipeline file", str(path)) from None
    except IsADirectoryError:
        raise PipelineError("is a folder, not a pipeline file", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline file: {exc}", str(path)) from exc
    return parse_pipeline(text, host, path=path)


def parse_pipeline(text: str, host: Host, path: Path | None = None) -> Pipeline:
    """Validate pipeline YAML ``text`` (see :func:`load_pipeline`)."""
    filename = str(path) if path is not None else "<pipeline>"
    data, lines = load_yaml_with_lines(text, filename)
    source = _Source(filename, lines, data)
    if not isinstance(data, dict):
        raise source.error("a pipeline file is a mapping with at least 'model:' and 'passes:'", ())
    try:
        spec = PipelineFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ypath = _data_path(data, err["loc"])
        raise source.error(_describe(err, PipelineFile, ypath, what="key"), ypath) from None
    stages = tuple(_parse_stage(i, item, host, source) for i, item in enumerate(spec.passes))
    return Pipeline(spec=spec, stages=stages, path=path)


@dataclass(frozen=True)
class _Source:
    """A parsed file with its line map, for errors that point at the right line."""

    filename: str
    lines: dict[tuple[Any, ...], int]
    data: Any

    def error(self, message: str, ypath: tuple[Any, ...]) -> PipelineError:
        return PipelineError(message, self.filename, line_of(self.lines, ypath))


def _parse_stage(i: int, item: Any, host: Host, source: _Source) -> Stage:
    number = i + 1
    if isinstance(item, str):
        name, options, base = item, {}, ("passes", i)
    elif isinstance(item, dict) and len(item) == 1:
        ((name, options),) = item.items()
        options = {} if options is None else options
        base = ("passes", i, name)
        if not isinstance(options, dict):
            raise source.error(f"stage {number} ({name}): options must be a mapping, got {options!r}", base)
    else:
        raise source.error(f"stage {number}: expected a pass name or 'name: {{options}}', got {item!r}", ("passes", i))
    try:
        pass_cls = host.get_pass(name)
    except PipelineError as exc:
        raise source.error(f"stage {number}: {exc.message}", base) from None
    except PluginError as exc:  # two plugins claim the name
        raise source.error(f"stage {number}: {exc}", base) from None
    try:
        parsed = pass_cls.Options.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        opath = _data_path(options, err["loc"])
        what = _describe(err, pass_cls.Options, opath, what="option")
        raise source.error(f"stage {number} ({name}): {what}", base + opath) from None
    return Stage(number, name, pass_cls, parsed, line_of(source.lines, base))


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a pydantic ``loc`` that exists in ``data`` (drops union tags and the like)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and part == loc[-1]:
            pass  # a missing key: keep it for the message, the line comes from its parent
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(err: dict[str, Any], model: type[BaseModel], ypath: tuple[Any, ...], what: str) -> str:
    dotted = ".".join(str(p) for p in ypath) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        return f"missing required {what} {dotted!r}"
    if kind == "extra_forbidden":
        known = _known_keys(model, ypath[:-1])
        message = f"unknown {what} {dotted!r}"
        close = difflib.get_close_matches(str(ypath[-1]), known, n=1, cutoff=0.6)
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
    if origin in (Union, types.UnionType, Annotated, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def pipeline_json_schema(host: Host) -> dict[str, Any]:
    """JSON Schema of pipeline files, with every installed pass's options (for editors)."""
    schema = PipelineFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "optkit pipeline"
    defs = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = []
    names = []
    for entry in host.passes:
        options_schema = entry.obj.Options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(options_schema.pop("$defs", {}))
        options_schema["description"] = entry.obj.summary
        def_name = f"{entry.name}_options"
        defs[def_name] = options_schema
        names.append(entry.name)
        variants.append({
            "type": "object",
            "properties": {entry.name: {"anyOf": [{"$ref": f"#/$defs/{def_name}"}, {"type": "null"}]}},
            "required": [entry.name],
            "additionalProperties": False,
            "description": entry.obj.summary,
        })
    schema["properties"]["passes"] = {
        "type": "array",
        "description": "Stages, in order: a pass name, or 'name: {options}'.",
        "items": {"anyOf": [{"enum": names, "type": "string"}, *variants]},
    }
    return schema
