"""The standard model sources: ``torchvision:``, ``python:`` and ``file:``."""

from __future__ import annotations

from optkit import hookimpl
from optkit.models import load_file, load_python, load_torchvision

__all__ = ["optkit_register_sources"]


@hookimpl
def optkit_register_sources(register):
    """Register the ``torchvision``, ``python`` and ``file`` schemes."""
    register("torchvision", load_torchvision)
    register("python", load_python)
    register("file", load_file)
