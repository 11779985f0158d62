"""Sweep files: many (model × pipeline) jobs from one file, validated like a pipeline file.

Example sweep file::

    output: runs/sweep
    device: cpu
    measure: {warmup: 3, iters: 10}
    models: [torchvision:resnet18, torchvision:mobilenet_v3_large]
    pipelines:
      fuse: [fuse_bn]
      fuse_export: [fuse_bn, export_onnx]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from optkit.config.data import DataSpec
from optkit.config.documents import ConfigDocument, StrictModel, parse_config, read_config
from optkit.config.pipeline import InputShape, MeasureSpec, ModelSpec, check_accuracy_settings
from optkit.files import resolve_path

__all__ = ["SweepModel", "SweepFile", "load_sweep", "parse_sweep", "NAME_PATTERN"]

#: Model and pipeline names of a sweep: they become file names, job names and report cells.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a name: 1 to 100 letters, digits and _ . + - only, starting with a letter or digit")
    return name


class SweepModel(ModelSpec):
    """One model of a sweep: a pipeline file's ``model:`` section, with a label and the input shape optional.

    A bare ``scheme:name`` string is shorthand for ``{source: ...}``.
    """

    name: str | None = Field(None, description="Label in reports and job names; default: the part after the last ':'.")
    # Deliberately optional here (the sweep's shape applies), where a pipeline's ModelSpec requires it.
    input_shape: InputShape | None = Field(None, description="Overrides the sweep's input shape for this model.")
    input_size_kwarg: str | None = Field(
        None, description="Builder keyword that must equal the input's height (e.g. image_size for vit_b_16)."
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, name: str | None) -> str | None:
        return _check_name(name) if name is not None else None

    @property
    def label(self) -> str:
        return self.name or self.source.rsplit(":", 1)[-1]

    def model_section(self, input_shape: list[int] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The ``model:`` section of one job's pipeline file (``input_shape: None``: the model's ``inputs``, or its source's)."""
        section = self.model_dump(mode="json", exclude={"name", "input_size_kwarg", "input_shape"}, exclude_defaults=True)
        return {**section, **({"input_shape": input_shape} if input_shape is not None else {}), "kwargs": kwargs}


class SweepFile(StrictModel):
    """The schema of a sweep file: models × pipelines, and how to run them."""

    models: list[SweepModel] = Field(min_length=1, description="scheme:name strings or mappings (see SweepModel).")
    pipelines: dict[str, list[str | dict[str, Any]]] = Field(
        min_length=1, description="name: list of passes (as in a pipeline file's passes:); [] measures the baseline only."
    )
    device: str | int = Field("auto", description="Device of every job: auto | cpu | cuda | cuda:N.")
    input_shape: InputShape = Field(default_factory=lambda: [1, 3, 224, 224])
    input_size: PositiveInt | None = Field(None, description="Square input size; replaces the last two input dimensions.")
    seed: int = 0
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    data: DataSpec | None = Field(None, description="The data: section of every job (relative paths: relative to the sweep file).")
    output: str = Field("runs/sweep", description="Sweep folder: jobs/, runs/ and the combined report.")
    executor: Literal["local", "ray"] = "local"
    workers: PositiveInt = Field(1, description="Jobs run at once by the local executor (and CPUs of a local Ray).")
    timeout_s: PositiveFloat | None = Field(None, description="A job running longer is stopped and reported failed.")
    gpus_per_job: float | None = Field(None, ge=0, description="Ray num_gpus per job; default 1 for a cuda device, else 0.")
    save_model: bool = Field(False, description="Keep each job's final model.pt (large for big models).")

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, pipelines: dict[str, Any]) -> dict[str, Any]:
        for name in pipelines:
            _check_name(name)
        return pipelines

    @field_validator("models", mode="before")
    @classmethod
    def _expand_shorthand(cls, models: Any) -> Any:
        if isinstance(models, list):
            return [{"source": m} if isinstance(m, str) else m for m in models]
        return models


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file.

    Raises:
        PipelineError: unreadable file, bad YAML or a wrong key, with ``file:line``.
    """
    return _validate(read_config(path, "sweep file"), Path(path).parent)


def parse_sweep(text: str, filename: str = "<sweep>", base_dir: Path | None = None) -> SweepFile:
    """Validate sweep YAML ``text`` (see :func:`load_sweep`); relative data paths resolve against
    ``base_dir`` (default: the current folder)."""
    return _validate(parse_config(text, filename), base_dir if base_dir is not None else Path.cwd())


def _validate(doc: ConfigDocument, base_dir: Path) -> SweepFile:
    if not isinstance(doc.data, dict):
        raise doc.error("a sweep file is a mapping with at least 'models:' and 'pipelines:'")
    sweep = doc.validate(SweepFile, doc.data)
    check_accuracy_settings(sweep.measure, sweep.data, doc)
    if sweep.data is not None:
        # Each job's pipeline file is written under the sweep folder: its relative data paths must
        # still mean what they meant beside the sweep file.
        root = resolve_path(sweep.data.root or ".", base_dir).resolve()
        sweep = sweep.model_copy(update={"data": sweep.data.model_copy(update={"root": str(root)})})
    return sweep
