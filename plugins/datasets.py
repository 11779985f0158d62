"""The standard dataset sources: ``imagefolder:`` and ``python:``."""

from __future__ import annotations

from optkit import hookimpl
from optkit.data import load_imagefolder, load_python_dataset

__all__ = ["optkit_register_datasets"]


@hookimpl
def optkit_register_datasets(register):
    """Register the ``imagefolder`` and ``python`` schemes."""
    register("imagefolder", load_imagefolder)
    register("python", load_python_dataset)
