"""The ``data:`` section of pipeline and sweep files: where the eval, train and calibration samples
come from and how images become tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from optkit.config.documents import SourceSpec, StrictModel

__all__ = ["DATA_ROLES", "TransformSpec", "DatasetSpec", "DataSpec", "available_cpus", "data_source"]

#: The entries of ``data:`` that name a data set, in the order they are built.
DATA_ROLES = ("eval", "train", "calibration")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as ``taskset`` or a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


class TransformSpec(StrictModel):
    """How an image becomes the model's input (torchvision ``transforms.v2``, in this order):
    resize, center crop, float in [0, 1], normalize. No keys: the image as float in [0, 1]."""

    resize: PositiveInt | list[PositiveInt] | None = Field(
        None, description="The shorter side to this many pixels (aspect kept), or [height, width]."
    )
    center_crop: PositiveInt | list[PositiveInt] | None = Field(None, description="Crop the centre: a side, or [height, width].")
    mean: list[float] | None = Field(None, min_length=1, description="Per-channel mean subtracted after scaling to [0, 1].")
    std: list[float] | None = Field(None, min_length=1, description="Per-channel standard deviation divided by (with mean).")

    @field_validator("resize", "center_crop")
    @classmethod
    def _one_or_two_sides(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) not in (1, 2):
            raise ValueError("expected a side or [height, width]")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(s <= 0 for s in value):
            raise ValueError("every std must be positive")
        return value

    @model_validator(mode="after")
    def _mean_with_std(self) -> TransformSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give one per channel in both")
        return self


class DatasetSpec(SourceSpec):
    """One data set: its source and how it is batched. A bare string is shorthand for ``{source: ...}``."""

    SOURCE_EXAMPLES: ClassVar[str] = "imagefolder:data/val or python:package.module:callable"

    source: str = Field(
        description="scheme:target — imagefolder:PATH (relative to the pipeline file), python:package.module:callable, "
        "or a scheme a plugin registers."
    )
    batch_size: PositiveInt = Field(64, description="Samples per batch.")
    shuffle: bool = Field(False, description="Shuffle every epoch (seeded by the pipeline's seed); with limit, a seeded random subset.")
    limit: PositiveInt | None = Field(
        None, description="Use only this many samples: the first ones, or a seeded random subset with shuffle."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a python: callable (or a plugin's loader).")


class DataSpec(StrictModel):
    """The ``data:`` section: what every stage is evaluated on (``eval``) and what passes may read.

    ``calibration`` defaults to ``train``, else ``eval``.
    """

    transform: TransformSpec = Field(
        default_factory=TransformSpec, description="How images become inputs (imagefolder: and plugin sources that take it)."
    )
    eval: DatasetSpec | None = Field(None, description="Every stage's accuracy and agreement are measured on it.")
    train: DatasetSpec | None = Field(None, description="For passes that train (ctx.data.train).")
    calibration: DatasetSpec | None = Field(
        None, description="For passes that calibrate (ctx.data.calibration); default: train, else eval."
    )
    num_workers: NonNegativeInt = Field(
        0, description="DataLoader worker processes (0: load in the main process); at most the CPUs available."
    )
    root: str | None = Field(None, description="Folder relative dataset paths resolve against; default: the pipeline file's folder.")

    @field_validator("num_workers")
    @classmethod
    def _at_most_the_cpus(cls, value: int) -> int:
        # Each worker is a process with its own copy of the dataset: 1000 of them ran a machine out of memory.
        cpus = available_cpus()
        if value > cpus:
            raise ValueError(
                f"{value} worker processes, but this process may use {cpus} CPU{'s' if cpus != 1 else ''}; give at most {cpus}"
            )
        return value

    @field_validator(*DATA_ROLES, mode="before")
    @classmethod
    def _source_shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _names_a_data_set(self) -> DataSpec:
        if all(getattr(self, role) is None for role in DATA_ROLES):
            raise ValueError(f"data: names no data set; give at least one of {', '.join(DATA_ROLES)}")
        return self

    def datasets(self) -> dict[str, DatasetSpec]:
        """The entries given, by role (``eval``, ``train``, ``calibration``)."""
        return {role: spec for role in DATA_ROLES if (spec := getattr(self, role)) is not None}


def data_source(text: str) -> str:
    """A data source as given on the command line: a folder (or a text without a scheme) is ``imagefolder:FOLDER``."""
    return f"imagefolder:{text}" if Path(text).expanduser().exists() or ":" not in text else text
