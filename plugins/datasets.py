"""The standard dataset sources: ``imagefolder:``, ``images:`` (unlabeled) and ``python:``."""

from __future__ import annotations

from optkit import STANDARD_DATASETS, hookimpl

__all__ = ["optkit_register_datasets"]


@hookimpl
def optkit_register_datasets(register):
    """Register the ``imagefolder``, ``images`` and ``python`` schemes."""
    for scheme, loader in STANDARD_DATASETS.items():
        register(scheme, loader)
