"""The standard model sources: ``torchvision:``, ``python:`` and ``file:``."""

from __future__ import annotations

from optkit import STANDARD_SOURCES, hookimpl

__all__ = ["optkit_register_sources"]


@hookimpl
def optkit_register_sources(register):
    """Register the ``torchvision``, ``python`` and ``file`` schemes."""
    for scheme, loader in STANDARD_SOURCES.items():
        register(scheme, loader)
