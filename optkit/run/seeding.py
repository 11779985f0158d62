"""Seeding the random number generators while a model is built.

A ``python:`` factory that builds a model with random weights (a YOLO built from its yaml, any
model without a checkpoint) draws from the global generators: seeded, two runs of one pipeline
build the same model, so their drift figures can be compared. The generators' states are put back
afterwards, so building a model leaves the caller's random state as it was.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["seeded_construction"]


@contextlib.contextmanager
def seeded_construction(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and, when installed, ``numpy`` for the block.

    CUDA generators are left alone (models are built on the CPU and moved afterwards), and a
    factory that seeds itself still wins: it runs inside the block.
    """
    numpy: Any
    try:
        import numpy
    except ImportError:  # numpy is optional for optkit itself
        numpy = None
    states = (torch.random.get_rng_state(), random.getstate(), numpy.random.get_state() if numpy is not None else None)
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        random.setstate(states[1])
        if numpy is not None:
            numpy.random.set_state(states[2])
