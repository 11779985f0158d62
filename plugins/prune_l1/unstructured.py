"""Unstructured L1 pruning: zero the smallest weights through ``torch.nn.utils.prune``, permanently.

The result has plain ``weight`` tensors with zeros in them, no masks and no hooks. Dense
kernels multiply those zeros like any other number, so this alone buys no speed.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import prune

__all__ = ["prune_unstructured"]


def prune_unstructured(selected: dict[str, nn.Module], amount: float, scope: str, details: dict[str, Any]) -> None:
    """Zero the smallest-magnitude weights of ``selected`` in place, permanently.

    Args:
        selected: the layers to prune, by name.
        amount: the share of weights to zero.
        scope: ``global`` (one threshold over all layers) or ``layer`` (the same share in each).
        details: receives the sparsity reached, overall and per layer.
    """
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in selected.values()], pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module in selected.values():
            prune.l1_unstructured(module, "weight", amount=amount)
    for module in selected.values():
        prune.remove(module, "weight")  # weight = weight_orig * mask, made a plain parameter again
    weights = {name: m.get_parameter("weight") for name, m in selected.items()}
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    details.update(
        mode="unstructured",
        scope=scope,
        amount=amount,
        layers_pruned=len(selected),
        weights=total,
        zero_weights=sum(zeros.values()),
        sparsity=sum(zeros.values()) / total,
        layer_sparsity={name: zeros[name] / w.numel() for name, w in weights.items()},
        note="zeros are stored and multiplied like any weight: dense kernels run no faster; the latency shown is measured",
    )
