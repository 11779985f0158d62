"""An importance criterion for prune_channels: ``importance: scaled_l2``."""

from __future__ import annotations

import torch

from optkit import PruningGroup, hookimpl


def scaled_l2(group: PruningGroup) -> torch.Tensor:
    """L2 norm of the producing rows times |γ| of the group's BatchNorm scales (1 without one)."""
    rows = group.aggregate([t.per_channel(t.tensor.pow(2)).sqrt() for t in group.weights("output")])
    scales = [t.per_channel(t.tensor.abs()) for t in group.weights("norm")]
    return rows * (group.aggregate(scales) if scales else 1.0)


@hookimpl
def optkit_register_importances(register):
    register("scaled_l2", scaled_l2)
