"""Copies to measure on: a deep copy whose weights live on the ``meta`` device, or an ordinary one."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["meta_copy", "copy_memo"]


def _computed_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors held as plain attributes that ``deepcopy`` refuses: results of autograd, such as the
    ``weight`` that ``torch.nn.utils.prune`` (or the old ``weight_norm``) recomputes before each forward."""
    return [value for module in model.modules() for value in vars(module).values() if isinstance(value, torch.Tensor) and not value.is_leaf]


def copy_memo(model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """A ``deepcopy`` memo under which ``model`` can be copied even when it holds computed tensors.

    Args:
        model: the module to copy.
        make: what each tensor becomes in the copy (parameters and buffers included); by default
            only computed tensors are replaced, by detached clones, and the rest is copied as usual.

    Returns:
        ``{id(tensor): replacement}`` to pass to :func:`copy.deepcopy`.
    """
    memo: dict[int, torch.Tensor] = {}
    if make is not None:
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in memo:
                replacement = make(tensor)
                memo[id(tensor)] = (
                    nn.Parameter(replacement, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else replacement
                )
    for tensor in _computed_tensors(model):
        memo.setdefault(id(tensor), make(tensor) if make is not None else tensor.detach().clone())
    return memo


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
    return copy.deepcopy(model, copy_memo(model, lambda tensor: torch.empty_like(tensor, device="meta")))
