"""A dataset plugin as issue 29's author wrote one: ``npz:FILE`` (arrays ``x`` and ``y``), following
the error contract, and ``buggy:FILE``, a loader with a bug (installed through a fake entry point)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from optkit.data.sources import DatasetRequest
from optkit.errors import PipelineError
from optkit.host.hookspecs import hookimpl


def load_npz(request: DatasetRequest) -> TensorDataset:
    """Arrays x (inputs) and y (labels) of an .npz file."""
    path = request.resolve(request.target)
    if not path.is_file():
        raise PipelineError(f"no such file {path}")  # the user's input: exit 2, the entry named
    arrays = np.load(path)
    return TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))


def load_buggy(request: DatasetRequest) -> TensorDataset:
    """Reads an array the file does not have: a KeyError, a bug in the loader."""
    return np.load(request.resolve(request.target))["no such array"]


@hookimpl
def optkit_register_datasets(register):
    register("npz", load_npz)
    register("buggy", load_buggy)
