"""The standard model sources: ``torchvision:``, ``python:``, ``file:`` and ``hf:`` (transformers, optional)."""

from __future__ import annotations

from optkit import STANDARD_SOURCES, hookimpl
from optkit_plugins.hf_source import load_hf

__all__ = ["optkit_register_sources"]


@hookimpl
def optkit_register_sources(register):
    """Register the ``torchvision``, ``python``, ``file`` and ``hf`` schemes."""
    for scheme, loader in STANDARD_SOURCES.items():
        register(scheme, loader)
    register("hf", load_hf)
