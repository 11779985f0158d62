"""Parameter counts: total, trainable and non-zero (sparsity), from ``model.parameters()``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["count_params"]


@torch.no_grad()
def count_params(model: nn.Module) -> dict[str, Any]:
    """Exact parameter counts of ``model`` (a parameter shared by several layers counts once).

    Args:
        model: the module; parameters on the ``meta`` device have shapes but no values, so their
            non-zero count is unknown (``None``).

    Returns:
        ``params``, ``trainable_params``, ``nonzero_params`` and ``sparsity`` (share of zeros).
        A weight pruned with ``torch.nn.utils.prune`` and not finalised counts its masked values,
        not the ``weight_orig`` it keeps beside them.

    Example:
        >>> count_params(nn.Linear(3, 2))["params"]
        8
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    counts: dict[str, Any] = {
        "params": total,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "nonzero_params": None,
        "sparsity": None,
    }
    if not any(p.is_meta for p in params):
        effective = _pruned_values(model)
        nonzero = sum(int(torch.count_nonzero(effective.get(id(p), p))) for p in params)
        counts["nonzero_params"] = nonzero
        counts["sparsity"] = 0.0 if total == 0 else 1.0 - nonzero / total
    return counts


def _pruned_values(model: nn.Module) -> dict[int, torch.Tensor]:
    """``id(weight_orig)`` -> ``weight_orig * weight_mask`` for every pruning not made permanent."""
    from torch.nn.utils import prune

    values = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                values[id(getattr(module, name + "_orig"))] = getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return values
