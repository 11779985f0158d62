"""Small facts about layers and module trees: channel widths, replacing a submodule, and
train/eval flags set for a block and then restored module by module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["in_width", "out_width", "replace_module", "module_mode", "eval_mode", "buffers_restored", "make_pruning_permanent"]


def in_width(layer: nn.Module) -> int:
    """Input channels of a convolution, or in-features of a Linear layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels
    raise TypeError(f"{type(layer).__name__} is neither a convolution nor a Linear layer")


def out_width(layer: nn.Module) -> int:
    """Output channels of a convolution, or out-features of a Linear layer (a classifier's classes)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    raise TypeError(f"{type(layer).__name__} is neither a convolution nor a Linear layer")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` (dotted) is, in place; returns the module it replaced.

    Raises:
        AttributeError: ``name`` is empty or names no submodule of ``model``.
    """
    if not name:
        raise AttributeError("cannot replace the model itself; name one of its submodules")
    old = model.get_submodule(name)
    model.set_submodule(name, new)
    return old


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every submodule in train (``True``) or eval mode for the block, then restore each one's own flag.

    ``model.train(previous)`` would set every submodule to the root's flag; a model whose
    submodules differ (a frozen backbone in eval mode under a training head) would come back
    changed. Here each module gets exactly its own flag back, also when the block raises.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """:func:`module_mode` in eval mode."""
    return module_mode(model, False)


@contextlib.contextmanager
def buffers_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Give every buffer of ``model`` back its own tensor and values after the block.

    Symbolic tracing in train mode runs a BatchNorm's ``num_batches_tracked.add_(1)`` for real
    (``torch.fx`` proxies parameters, not buffers); code that only inspects a model uses this so
    the model it was given comes back unchanged.
    """
    saved = [(module, dict(module._buffers)) for module in model.modules()]
    values = {id(t): t.detach().clone() for _, buffers in saved for t in buffers.values() if t is not None}
    try:
        yield model
    finally:
        with torch.no_grad():
            for module, buffers in saved:
                module._buffers.clear()
                module._buffers.update(buffers)
                for tensor in buffers.values():
                    if tensor is not None:
                        tensor.copy_(values[id(tensor)])


def make_pruning_permanent(model: nn.Module) -> list[str]:
    """Apply ``torch.nn.utils.prune`` masks for good: ``weight_orig * weight_mask`` becomes ``weight``.

    A model pruned and not finalised keeps its weights as a computed tensor (which ``deepcopy``
    refuses) next to ``weight_orig`` and ``weight_mask``; afterwards it is an ordinary module
    computing exactly the same.

    Returns:
        The names made permanent (``conv1.weight``), in module order.
    """
    from torch.nn.utils import prune

    made = []
    for module_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                made.append(f"{module_name}.{hook._tensor_name}" if module_name else hook._tensor_name)
    return made
