"""Finding the amount that meets a target (a share of the MACs, parameters or latency kept).

The cost of a plan falls (or stays) as the amount grows, so the smallest amount whose pruned
model costs at most the goal is found by bisection on the amount; every candidate is a real cut
(replayed, with its back-offs), measured as the runner measures a stage: MACs and parameters
counted, latency timed side by side with the model before (:mod:`~optkit_plugins.prune_channels.latency`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit import count_macs, count_params

__all__ = ["Ratio", "Search", "counted_ratio", "search_amount"]


@dataclass(frozen=True)
class Ratio:
    """A pruned model's cost over the model's before; timed costs carry the ratio's interval.

    Attributes:
        value: the ratio (for latency, the median of the per-round ratios).
        low, high: its interval (latency only; widened by the run-to-run margin).
    """

    value: float
    low: float | None = None
    high: float | None = None

    def row(self, amount: float) -> list[float]:
        """``[amount, value]``, with ``low, high`` when timed (a row of the search's trail)."""
        figures = [amount, self.value] if self.low is None or self.high is None else [amount, self.value, self.low, self.high]
        return [round(x, 6) for x in figures]


def counted_ratio(metric: str, model: nn.Module, inputs: torch.Tensor, rules: Mapping[str, Any]) -> Callable[[nn.Module], Ratio]:
    """``ratio(pruned)``: the pruned model's MACs (optkit's count) or parameters over ``model``'s."""

    def count(module: nn.Module) -> float:
        if metric == "macs":
            return float(count_macs(module, inputs, rules)["macs"])
        return float(count_params(module)["params"])

    original = count(model)
    return lambda pruned: Ratio(count(pruned) / original)


@dataclass
class Search:
    """How an amount was found: the goal, each amount tried with its cost ratio, and the one chosen."""

    goal: float
    trail: list[tuple[float, Ratio]] = field(default_factory=list)
    amount: float = 0.0
    reached: Ratio = Ratio(1.0)

    def details(self) -> dict[str, Any]:
        timed = self.reached.low is not None
        return {
            "goal": self.goal,
            "amount": round(self.amount, 6),
            "reached": round(self.reached.value, 6),
            "found_by": f"bisection on the amount over {len(self.trail)} cuts (smallest amount whose cost is at most the goal"
            + (": the median of the per-round latency ratios, timed side by side with the model before)" if timed else ")"),
            "tried": [ratio.row(amount) for amount, ratio in self.trail],
            "tried_columns": ["amount", "ratio", "low", "high"] if timed else ["amount", "ratio"],
        }


def search_amount(ratio_at: Callable[[float], Ratio], goal: float, high: float, iterations: int = 12) -> Search:
    """The smallest amount in ``[0, high]`` with ``ratio_at(amount).value <= goal``, by bisection.

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

    def tried(amount: float) -> Ratio:
        ratio = ratio_at(amount)
        search.trail.append((amount, ratio))
        return ratio

    best, best_ratio = high, tried(high)
    if best_ratio.value <= goal:
        low = 0.0
        for _ in range(iterations):
            middle = (low + best) / 2
            ratio = tried(middle)
            if ratio.value <= goal:
                best, best_ratio = middle, ratio
            else:
                low = middle
    search.amount, search.reached = best, best_ratio
    return search
