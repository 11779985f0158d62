"""The standard model sources: ``torchvision:``, ``python:`` and ``file:``."""

from __future__ import annotations

from optkit import hookimpl
from optkit.sources import load_python, load_torchvision


@hookimpl
def optkit_register_sources(register):
    register("torchvision", load_torchvision)
    register("python", load_python)
