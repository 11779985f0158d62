"""Channel surgery from a plan: slice parameters and buffers, then update module attributes.

Every parameter and buffer the traces saw has atoms on some dimensions; the positions whose
unit is removed are cut with ``index_select``. Modules stay their own classes (``nn.Conv2d``
with fewer channels, a timm ``Attention`` with fewer heads), so the model saves, exports and
reloads like any other. Attributes are updated by class (torch layers here, others through their
module rule: ``num_heads`` of attention heads, then the rule's ``fixup``); anything no rule knows
is caught by the replay (see
:mod:`optkit_plugins.prune_l1.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from optkit import ModuleRule, find_rule
from optkit_plugins.prune_l1.attention import heads_after_surgery
from optkit_plugins.prune_l1.trace import Analysis

__all__ = ["apply_plan", "fix_attributes"]


@torch.no_grad()
def apply_plan(model: nn.Module, an: Analysis, removed: set[int], rules: Mapping[str, ModuleRule]) -> list[str]:
    """Cut ``removed`` units out of ``model`` in place; returns the tensors changed.

    Tied parameters (one tensor under several names) are cut once and stay tied.
    """
    changed: list[str] = []
    if not removed:
        return changed
    all_named = {
        **{n: t for n, t in model.named_parameters(remove_duplicate=False)},
        **{n: t for n, t in model.named_buffers(remove_duplicate=False)},
    }
    aliases: dict[int, list[str]] = {}
    for name, t in all_named.items():
        aliases.setdefault(id(t), []).append(name)
    for name, ann in an.tensor_anns.items():
        tensor = all_named.get(name)
        if tensor is None:
            continue
        new = tensor.detach()
        for dim, atoms in enumerate(ann):
            if atoms is None:
                continue
            keep = [i for i, a in enumerate(atoms) if an.uf.find(a) not in removed]
            if len(keep) < len(atoms):
                new = new.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=new.device))
        if new is tensor.detach():
            continue
        new = _in_memory_format_of(new, tensor)
        kind = an.kinds.get(name, "parameter")
        shared = nn.Parameter(new, requires_grad=tensor.requires_grad) if kind == "parameter" else new
        for alias in aliases[id(tensor)]:
            owner_name, _, attr = alias.rpartition(".")
            owner = model.get_submodule(owner_name)
            if kind == "parameter":
                setattr(owner, attr, shared)
            else:
                owner._buffers[attr] = shared
        changed.append(name)
    fix_attributes(model, an, rules)
    return changed


def _in_memory_format_of(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A copy of ``new`` (cut by ``index_select``, so contiguous) laid out as ``old`` was: a
    ``channels_last`` weight stays ``channels_last``, so that the pruned model's convolutions give
    outputs in the same memory format and run the same kernels (and aten steps) as the traced model."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    layout = formats.get(old.dim())
    if layout is not None and not old.is_contiguous() and old.is_contiguous(memory_format=layout):
        return new.contiguous(memory_format=layout).clone(memory_format=torch.preserve_format)
    return new.clone()


def fix_attributes(model: nn.Module, an: Analysis, rules: Mapping[str, ModuleRule]) -> None:
    """Make every module's size attributes agree with its (possibly cut) tensors."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.modules.conv._ConvNd) and module.weight is not None:
            _fix_conv(module, an.conv_groups.get(f"{prefix}weight"))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            ref = module.running_mean if module.running_mean is not None else module.weight
            if ref is not None:
                module.num_features = ref.shape[0]
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)
        elif isinstance(module, nn.GroupNorm) and module.weight is not None:
            module.num_channels = module.weight.shape[0]
        elif isinstance(module, nn.PReLU):
            module.num_parameters = module.weight.numel()
        elif isinstance(module, nn.Embedding):
            module.num_embeddings, module.embedding_dim = module.weight.shape
    for name, module in model.named_modules():  # after every torch layer is right: rules read their children
        rule = find_rule(module, rules)
        if rule is None:
            continue
        if rule.attention is not None and name in an.rules:
            heads_after_surgery(module, rule.attention)
        if rule.fixup is not None and rule.problem(module) is None:
            rule.fixup(module)


def _fix_conv(conv: nn.modules.conv._ConvNd, policy: tuple[str, int] | None) -> None:
    w = conv.weight
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        conv.in_channels = w.shape[0]
        conv.out_channels = w.shape[1] * conv.groups
        return
    if policy is not None and policy[0] == "unit":
        conv.groups = w.shape[0] // policy[1]
    conv.out_channels = w.shape[0]
    conv.in_channels = w.shape[1] * conv.groups
