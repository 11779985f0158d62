"""The built-in importance criteria: one score per channel of a :class:`~optkit.PruningGroup`.

Every criterion scores each of the group's tensors on its own (one value per channel, summed over
the channel's positions) and combines them with the group's ``reduction`` (sum, mean or max), as
Torch-Pruning's group importance does. Magnitudes read the weights of the layers that produce
and read the channels (``output`` and ``input``) and the normalization scales (``norm``); biases
and shifts do not say how much a channel carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from optkit import PruningGroup

__all__ = ["BUILTIN", "WEIGHT_ROLES", "l1", "l2", "bn_scale", "taylor", "random_scores", "normalized"]

#: The tensors whose magnitude a criterion reads.
WEIGHT_ROLES: tuple[Literal["output", "input", "norm"], ...] = ("output", "input", "norm")


def l1(group: PruningGroup) -> torch.Tensor:
    """Sum of |w| over each channel, per tensor, combined over the group."""
    return group.aggregate([t.per_channel(t.tensor.abs()) for t in group.weights(*WEIGHT_ROLES)])


def l2(group: PruningGroup) -> torch.Tensor:
    """Sum of w² over each channel (Torch-Pruning's ``GroupMagnitudeImportance(p=2)``), combined over the group."""
    return group.aggregate([t.per_channel(t.tensor.pow(2)) for t in group.weights(*WEIGHT_ROLES)])


def bn_scale(group: PruningGroup) -> torch.Tensor:
    """|γ| of the group's BatchNorm scales (network slimming); a group without one falls back to :func:`l2`."""
    scales = [t for t in group.weights("norm") if isinstance(group.layers[t.module], torch.nn.modules.batchnorm._BatchNorm)]
    if not scales:
        return l2(group)
    return group.aggregate([t.per_channel(t.tensor.abs()) for t in scales])


def taylor(group: PruningGroup) -> torch.Tensor:
    """First-order Taylor: |w · ∂L/∂w| summed over each channel (Molchanov et al.), combined over the group."""
    gradients = group.gradients()
    return group.aggregate([t.per_channel((t.tensor * gradients[t.name]).abs()) for t in group.weights(*WEIGHT_ROLES)])


def random_scores(group: PruningGroup) -> torch.Tensor:
    """Uniform random scores: the floor any criterion should beat (seeded by the pass)."""
    return torch.rand(group.channels)


#: The criteria ``prune_channels`` knows without plugins.
#: A criterion: one score per channel of a group (what optkit_register_importances registers).
Importance = Callable[[PruningGroup], torch.Tensor]

BUILTIN: dict[str, Importance] = {"l1": l1, "l2": l2, "bn_scale": bn_scale, "taylor": taylor, "random": random_scores}


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` divided by their mean, so that groups of different size and scale compare in one ranking."""
    scores = scores.detach().float()
    return scores / scores.abs().mean().clamp_min(torch.finfo(torch.float32).tiny)
