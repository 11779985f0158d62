"""Finding the amount that meets a target (a share of the MACs, parameters or latency kept).

The cost of a plan falls (or stays) as the amount grows, so the smallest amount whose pruned
model costs at most the goal is found by bisection on the amount; every candidate is a real cut
(replayed, with its back-offs), measured as the runner measures a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit import count_macs, count_params, time_callable

__all__ = ["Search", "cost_of", "search_amount"]


def cost_of(metric: str, model: nn.Module, inputs: torch.Tensor, rules: Mapping[str, Any], device: torch.device) -> float:
    """What ``model`` costs by ``metric``: ``macs`` (optkit's count), ``params`` or ``latency``
    (the median of 30 timed calls after 5 warm-ups, in ms, under torch)."""
    if metric == "macs":
        return float(count_macs(model, inputs, rules)["macs"])
    if metric == "params":
        return float(count_params(model)["params"])
    return float(time_callable(model.eval(), inputs, device, warmup=5, iters=30)["p50"])


@dataclass
class Search:
    """How an amount was found: the goal, each amount tried with its cost ratio, and the one chosen."""

    goal: float
    trail: list[tuple[float, float]] = field(default_factory=list)
    amount: float = 0.0
    reached: float = 1.0

    def details(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "amount": round(self.amount, 6),
            "reached": round(self.reached, 6),
            "found_by": f"bisection on the amount over {len(self.trail)} cuts (smallest amount whose cost is at most the goal)",
            "tried": [[round(a, 6), round(r, 6)] for a, r in self.trail],
        }


def search_amount(ratio_at: Callable[[float], float], goal: float, high: float, iterations: int = 12) -> Search:
    """The smallest amount in ``[0, high]`` with ``ratio_at(amount) <= goal``, by bisection.

    Args:
        ratio_at: cost of the model pruned at ``amount`` over the original cost.
        goal: the ratio wanted (``0.25``: a quarter of the cost kept).
        high: the largest amount allowed.
        iterations: halvings of the interval after ``high`` is tried.

    Returns:
        A :class:`Search`; when even ``high`` costs more than ``goal``, ``amount`` is ``high``
        and ``reached`` says by how much it missed.
    """
    search = Search(goal)

    def tried(amount: float) -> float:
        ratio = ratio_at(amount)
        search.trail.append((amount, ratio))
        return ratio

    best, best_ratio = high, tried(high)
    if best_ratio <= goal:
        low = 0.0
        for _ in range(iterations):
            middle = (low + best) / 2
            ratio = tried(middle)
            if ratio <= goal:
                best, best_ratio = middle, ratio
            else:
                low = middle
    search.amount, search.reached = best, best_ratio
    return search
