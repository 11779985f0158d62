"""The settings of one search: a pipeline file's ``optimize:`` section with command-line options on
top, or, for a model named on the command line, the pipeline file the search runs from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from optkit.config.data import data_source
from optkit.config.optimize import OptimizeSpec
from optkit.errors import PipelineError

__all__ = ["merged_settings", "model_pipeline"]


def merged_settings(section: OptimizeSpec | None, overrides: dict[str, Any]) -> OptimizeSpec:
    """``section`` (or the defaults) with every override that is not ``None``.

    Raises:
        PipelineError: an override the settings refuse, named as its command-line option.
    """
    data = section.model_dump(exclude_unset=True) if section is not None else {}
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return OptimizeSpec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
        raise PipelineError(f"{option}: {error['msg']}") from None


def model_pipeline(
    model: str,
    data: str | None,
    *,
    train: str | None = None,
    input_shape: list[int] | None = None,
    weights: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """The pipeline file ``optkit optimize MODEL --data ...`` runs from: ``model`` as its source,
    ``data`` as ``data.eval`` (an image folder, or a source such as ``python:pkg.mod:dataset``), and
    ``train`` as ``data.train`` (fine-tuning after pruning).

    Raises:
        PipelineError: no ``data``: the accuracy budget is judged on it.
    """
    if data is None:
        raise PipelineError(
            f"optimize {model}: give --data (an image folder or python:pkg.mod:dataset; labels -1 for agreement with "
            "the model): the accuracy budget is judged on it; or give a pipeline file with data.eval"
        )

    def source(text: str) -> str:
        """:func:`~optkit.config.data.data_source`, an image folder made absolute (the file is written elsewhere)."""
        scheme, _, rest = data_source(text).partition(":")
        return f"imagefolder:{Path(rest).expanduser().resolve()}" if scheme == "imagefolder" else text

    spec: dict[str, Any] = {"source": model}
    if input_shape is not None:
        spec["input_shape"] = input_shape
    if weights is not None:
        spec["weights"] = weights
    sets: dict[str, Any] = {"eval": {"source": source(data), "batch_size": 64}}
    if train is not None:
        sets["train"] = {"source": source(train), "shuffle": True}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.split(":", 1)[-1]).strip("-.") or "model"
    return {"model": spec, "device": device, "data": sets, "output": f"runs/{name}"}
