"""A dataset source: ``npz:FILE`` reads arrays ``x`` (inputs) and ``y`` (integer labels) of a NumPy file.

``data: {eval: npz:data/val.npz}`` calls :func:`load_npz` with a ``DatasetRequest``; optkit applies
``limit``, batching and shuffling afterwards. The first line of the loader's docstring is its
summary in ``optkit sources``.
"""

from __future__ import annotations

import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

from optkit import hookimpl
from optkit import DatasetRequest, PipelineError

__all__ = ["load_npz"]


def load_npz(request: DatasetRequest) -> TensorDataset:
    """Arrays x (inputs) and y (labels) of a NumPy .npz file."""
    path = request.resolve(request.target)  # absolute, relative to the pipeline file (or data.root)
    if not path.is_file():
        raise PipelineError(f"no such file {path}")
    try:
        arrays = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # what np.load raises for a file that is no .npz
        raise PipelineError(f"{path} is not a NumPy .npz file: {exc}") from exc
    missing = sorted({"x", "y"} - set(arrays.files))
    if missing:
        raise PipelineError(f"{path} has no array {', '.join(missing)} (it has {', '.join(arrays.files) or 'none'})")
    inputs, labels = torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).long()
    if len(inputs) != len(labels):
        raise PipelineError(f"{path}: x has {len(inputs)} samples but y has {len(labels)}")
    request.details["file"] = str(path)
    return TensorDataset(inputs, labels)


@hookimpl
def optkit_register_datasets(register):
    register("npz", load_npz)
