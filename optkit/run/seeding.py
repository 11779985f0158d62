"""Seeding the global random number generators before a model is built.

A ``python:`` factory that builds a model with random weights (``reclassify``'s new head, a YOLO
built from yaml, any model without a checkpoint) draws from torch's global generator: seeded, two
runs of one pipeline build the same model, so their drift figures can be compared.
"""

from __future__ import annotations

import random

import torch

__all__ = ["seed_model_construction"]


def seed_model_construction(seed: int) -> dict[str, int]:
    """Seed ``torch`` (every device), ``random`` and, when installed, ``numpy`` with ``seed``.

    A factory that seeds itself still wins: it runs after this.

    Returns:
        What the stage's details record: ``{"seed": seed}``.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # numpy is optional for optkit itself
        pass
    else:
        numpy.random.seed(seed % 2**32)
    return {"seed": seed}
