"""Rules for timm (``timm.layers``) modules whose ``forward`` is their own.

- ``BatchNormAct2d``, ``SyncBatchNormAct``, ``FrozenBatchNormAct2d``: an eval batch norm with the
  module's own statistics, then ``self.drop``, then ``self.act``. fuse_bn folds the batch norm into
  the convolution before it and keeps ``drop`` and ``act`` as the module's replacement.
- ``Attention``: ``qkv`` (a Linear) viewed as ``(3, num_heads, head_dim)``, attention per head,
  then ``proj``. Channel pruning removes whole heads and updates ``num_heads`` and ``attn_dim``.
- timm's own activation modules (``timm.layers.activations``, ``activations_me``): elementwise,
  zero MACs (without a rule they would be listed as uncounted: leaves that ran no counted operator).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from optkit import AttentionHeads, ModuleRule, zero_macs

__all__ = ["TIMM_RULES", "bn_drop_act", "drop_act"]


def _eval_batch_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eval batch norm of ``module``'s state: running statistics, affine parameters, eps."""
    norm: Any = module  # timm's BatchNormAct2d family; torch types its attributes as Tensor | Module
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def _extras(module: nn.Module) -> list[nn.Module]:
    """``drop`` then ``act``, those the module has (``SyncBatchNormAct`` gets them only from timm's
    conversion) and that are not ``nn.Identity``."""
    parts = [getattr(module, name, None) for name in ("drop", "act")]
    return [m for m in parts if m is not None and type(m) is not nn.Identity]


def bn_drop_act(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a timm norm-act module computes in eval mode: ``act(drop(batch_norm(x)))``."""
    y = _eval_batch_norm(module, x)
    for extra in _extras(module):
        y = extra(y)
    return y


def drop_act(module: nn.Module) -> nn.Module:
    """What stays of a norm-act module once its batch norm is folded: its dropout and activation."""
    parts = _extras(module)
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _attention_problem(module: nn.Module) -> str | None:
    """The options of timm's Attention the head rule does not cover."""
    if getattr(module, "gate", None) is not None:
        return "it has a gate projection"
    if type(getattr(module, "norm", nn.Identity())) is not nn.Identity:
        return "it normalizes the heads' outputs together (scale_norm)"
    if not isinstance(getattr(module, "qkv", None), nn.Linear) or not isinstance(getattr(module, "proj", None), nn.Linear):
        return "qkv or proj is not an nn.Linear"
    return None


def _attention_fixup(module: nn.Module) -> None:
    attention: Any = module  # timm's Attention: num_heads and head_dim are ints
    attention.attn_dim = attention.num_heads * attention.head_dim


_NORM_ACT = "batch_norm(x; running statistics, weight, bias, eps) -> self.drop -> self.act"

#: timm's activation modules (PReLU derives from nn.PReLU, which optkit counts already).
_ACTIVATIONS = {
    "timm.layers.activations": (
        "GELU",
        "GELUTanh",
        "HardMish",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "QuickGELU",
        "Sigmoid",
        "Swish",
        "Tanh",
    ),
    "timm.layers.activations_me": ("HardMishMe", "HardSigmoidMe", "HardSwishMe", "MishMe", "SwishMe"),
}

TIMM_RULES: tuple[ModuleRule, ...] = (
    *(
        ModuleRule(
            f"timm.layers.norm_act.{name}",
            computes=_NORM_ACT,
            bn_reference=bn_drop_act,
            bn_remainder=drop_act,
            macs=zero_macs,
            note="fuse_bn folds the batch norm into the layer before it; drop and act stay",
        )
        for name in ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d")
    ),
    ModuleRule(
        "timm.layers.attention.Attention",
        computes="qkv = Linear(x) viewed as (3, num_heads, head_dim); softmax(q k^T * scale) v per head; proj = Linear",
        check=_attention_problem,
        attention=AttentionHeads(qkv="qkv", proj="proj", num_heads="num_heads", head_dim="head_dim"),
        fixup=_attention_fixup,
        note="channel pruning removes whole heads; head_dim and the softmax scale stay as trained",
    ),
    *(
        ModuleRule(f"{module}.{name}", computes="an elementwise activation: no multiply-accumulates", macs=zero_macs)
        for module, names in _ACTIVATIONS.items()
        for name in names
    ),
)
