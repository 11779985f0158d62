"""Copies to measure on, and evaluation mode that leaves every ``training`` flag as it was."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["meta_copy", "eval_mode"]


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the ``meta`` device.

    The copy has the same structure, shapes, dtypes and hooks, but allocates no memory for
    weights, so counting a 600-million-parameter model costs no more than counting a small one.
    Shared tensors stay shared. The original is not touched.

    Args:
        model: the module to copy.

    Returns:
        The copy, in the same ``training`` state as ``model``.
    """
    memo: dict[int, torch.Tensor] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in memo:
            continue
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block, then restore each one's own flag.

    ``model.train(previous)`` would set every submodule to the root's flag; a model whose
    submodules differ (a frozen backbone in eval mode under a training head) would come back
    changed. Here each module gets exactly its own flag back, also when the block raises.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
