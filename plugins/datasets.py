"""The standard dataset sources: ``imagefolder:``, ``images:`` (unlabeled) and ``python:``."""

from __future__ import annotations

from optkit import hookimpl
from optkit.data import load_imagefolder, load_images, load_python_dataset

__all__ = ["optkit_register_datasets"]


@hookimpl
def optkit_register_datasets(register):
    """Register the ``imagefolder``, ``images`` and ``python`` schemes."""
    register("imagefolder", load_imagefolder)
    register("images", load_images)
    register("python", load_python_dataset)
