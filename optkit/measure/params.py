"""Parameter counts: total, trainable and non-zero (sparsity), from ``model.parameters()``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["count_params"]


@torch.no_grad()
def count_params(model: nn.Module) -> dict[str, Any]:
    """Exact parameter counts of ``model`` (shared parameters counted once).

    Returns:
        ``params``, ``trainable_params``, ``nonzero_params`` and ``sparsity`` (share of zeros).
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    return {
        "params": total,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "nonzero_params": nonzero,
        "sparsity": 0.0 if total == 0 else 1.0 - nonzero / total,
    }
