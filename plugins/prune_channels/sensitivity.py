"""Sensitivity allocation: what removing part of one group alone costs, measured, cheapest first.

Each group loses 25%, 50% and 75% of its channels (its lowest importance first) in a draft cut of
its own; the cost is the drift of the model's logits from the unpruned model's on a probe batch
(mean squared difference over the logits' variance). Between those points the cost of each
channel is interpolated along its rank, so that every channel has the cost of removing it and
those ranked below it; one ranking of these costs over all groups then removes the cheapest first.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from optkit_plugins.prune_channels.groups import logits_of
from optkit_plugins.prune_l1.channels import ChannelPlanner, Chooser
from optkit_plugins.prune_l1.plan import Group
from optkit_plugins.prune_l1.trace import Analysis

__all__ = ["RATIOS", "removal_costs"]

#: The shares of a group removed to measure its sensitivity.
RATIOS = (0.25, 0.5, 0.75)


def _removing(removed: set[int]) -> Chooser:
    """A chooser that removes ``removed``, whatever it is asked."""

    def choose(base: nn.Module, an: Analysis, found: list[Group]) -> set[int]:
        return removed

    return choose


@torch.no_grad()
def removal_costs(planner: ChannelPlanner, groups: list[Group], scores: Mapping[int, float], probe: torch.Tensor) -> dict[int, float]:
    """Per unit: the output drift of removing it and every unit of its group ranked below it.

    Args:
        planner: the traced model (drafts are cut from it).
        groups: the groups to measure.
        scores: importance per unit (the order of removal within a group).
        probe: a batch the model takes (the first of ``data.eval``, or the example input).
    """
    reference = logits_of(planner.base(probe)).float()
    scale = reference.var().clamp_min(torch.finfo(torch.float32).tiny)
    costs: dict[int, float] = {}
    for group in groups:
        ranked = sorted(group.units, key=lambda u: (scores.get(u, 0.0), u))
        points, drifts = [0], [0.0]
        for ratio in RATIOS:
            count = min(len(ranked) - 1, max(1, round(len(ranked) * ratio)))
            if count <= points[-1]:
                continue
            removed = set(ranked[:count])
            draft = planner.draft(_removing(removed))
            drift = (logits_of(draft.model(probe)).float() - reference).pow(2).mean() / scale
            points.append(count)
            drifts.append(max(drifts[-1], float(drift)))  # removing more never costs less
        positions = np.arange(1, len(ranked) + 1)
        values = np.interp(positions, points, drifts, right=drifts[-1] * len(ranked) / max(points[-1], 1))
        # Past the last point the cost grows with the share removed; ties are broken by rank.
        costs.update({unit: float(value) + 1e-9 * rank for rank, (unit, value) in enumerate(zip(ranked, values, strict=False))})
    return costs
