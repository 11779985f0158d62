"""Copies to measure on: a deep copy whose weights live on the ``meta`` device."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["meta_copy"]


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
