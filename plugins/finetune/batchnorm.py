"""BatchNorm during and after training: layers whose weights are frozen keep their statistics, and
``bn_recalibrate`` re-estimates every layer's statistics on training batches (no gradient step)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

__all__ = ["BATCHNORM", "batchnorm_layers", "frozen_batchnorm", "recalibrate_batchnorm"]

#: BatchNorm layers of every dimension (1d, 2d, 3d, SyncBatchNorm, lazy ones).
BATCHNORM = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that keep running statistics."""
    return [name for name, m in model.named_modules() if isinstance(m, BATCHNORM) and m.track_running_stats]


def frozen_batchnorm(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose weights are all frozen (``requires_grad=False``): training leaves
    them in eval mode, so a frozen backbone keeps its statistics as well as its weights."""
    return [
        m
        for m in model.modules()
        if isinstance(m, BATCHNORM) and (params := list(m.parameters(recurse=False))) and not any(p.requires_grad for p in params)
    ]


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    on_batch: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Re-estimate every BatchNorm layer's running mean and variance on ``count`` batches (in place).

    The statistics are reset and then averaged over the batches with equal weight
    (``torch.optim.swa_utils.update_bn``), under ``no_grad``: no weight changes. Pruning leaves
    statistics measured on channels that are gone; this is its cheap fix.

    Args:
        model: the model; it is left in eval mode.
        batches: ``(inputs, labels)`` batches on the model's device (shuffled: an image folder in
            order gives one class at a time).
        count: batches to read at most.
        on_batch: called with the number of batches read so far.

    Returns:
        ``{"layers", "batches", "samples"}``: the layers re-estimated and what they saw.
    """
    layers = batchnorm_layers(model)
    seen = {"batches": 0, "samples": 0}

    def inputs() -> Iterable[torch.Tensor]:
        for batch_inputs, _ in itertools.islice(batches, count):
            seen["batches"] += 1
            seen["samples"] += len(batch_inputs)
            yield batch_inputs
            if on_batch is not None:
                on_batch(seen["batches"])

    if layers:
        update_bn(inputs(), model)
    model.eval()
    return {"layers": len(layers), **seen}
