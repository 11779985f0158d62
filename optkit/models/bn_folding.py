"""BatchNorm folding arithmetic: an eval BatchNorm folded into the Conv/ConvTranspose/Linear layer
that feeds it.

An eval BatchNorm is a per-channel affine map ``y = x * scale + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``. Folding
multiplies the layer's weight by ``scale`` along its output-channel axis and maps its bias
through the same affine map. ``torch.nn.utils.fusion`` does this for plain convolutions, but not
for grouped transposed convolutions (their weight is ``(in, out/groups, *k)``), nor for a Linear
with an ``affine=False`` BatchNorm, nor for torchvision's ``FrozenBatchNorm2d``; the arithmetic
here covers all of them and is done in float64, then cast back, so the fused layer matches the
pair as closely as its dtype allows.

Public because module rules need it: a plugin whose rule fuses a library's block (its ``fuse``)
folds with :func:`fold_bn_into_layer` as fuse_bn does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["bn_affine", "fold_bn_into_layer"]

#: A layer BatchNorm folds into: a convolution (transposed too) or a Linear layer.
FoldableLayer = nn.modules.conv._ConvNd | nn.Linear


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``y = x * scale + shift``, per channel, in float64.

    Args:
        bn: anything with ``running_mean``, ``running_var``, ``eps`` and optional ``weight`` and
            ``bias`` (a BatchNorm, ``affine`` or not, torchvision's FrozenBatchNorm2d, timm's
            BatchNormAct2d).

    Returns:
        ``(scale, shift)``, each of shape ``(num_features,)``.
    """
    norm: Any = bn  # duck-typed (see Args); torch types a module's attributes as Tensor | Module
    mean = norm.running_mean.detach().double()
    scale = torch.rsqrt(norm.running_var.detach().double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().double()
    return scale, shift


def _scale_output_channels(layer: FoldableLayer, scale: torch.Tensor) -> torch.Tensor:
    """``layer.weight`` (float64) with each output channel multiplied by ``scale``."""
    weight = layer.weight.detach().double()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        # (in, out/groups, *k): output channel g*(out/groups)+j lives at [g-th input block, j].
        groups = layer.groups
        grouped = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], *weight.shape[2:])
        per_channel = scale.reshape(groups, 1, weight.shape[1], *([1] * (weight.dim() - 2)))
        return (grouped * per_channel).reshape(weight.shape)
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))


@torch.no_grad()
def fold_bn_into_layer(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer`` in place: afterwards ``layer(x) == bn(layer_before(x))``.

    A layer without a bias gains one. Parameters keep their dtype, device and ``requires_grad``.

    Args:
        layer: the Conv/ConvTranspose/Linear module whose output ``bn`` normalizes (in eval mode).
        bn: the BatchNorm (see :func:`bn_affine`); its width must be the layer's output width.

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval()
        >>> fold_bn_into_layer(conv, bn)  # conv now computes bn(conv(x))
    """
    if not isinstance(layer, FoldableLayer):
        raise TypeError(f"BatchNorm folds into a convolution or a Linear layer, not {type(layer).__name__}")
    weight = layer.weight
    scale, shift = (t.to(weight.device) for t in bn_affine(bn))
    new_weight = _scale_output_channels(layer, scale).to(weight.dtype)
    old_bias = layer.bias
    bias = old_bias.detach().double() if old_bias is not None else torch.zeros_like(scale)
    bias_dtype = old_bias.dtype if old_bias is not None else weight.dtype
    new_bias = (bias * scale + shift).to(bias_dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=old_bias.requires_grad if old_bias is not None else weight.requires_grad)
