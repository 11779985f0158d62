"""Folding an eval-mode BatchNorm into the Conv/ConvTranspose/Linear layer that feeds it.

An eval BatchNorm is a per-channel affine map ``y = x * scale + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``. Folding
multiplies the layer's weight by ``scale`` along its output-channel axis and maps its bias
through the same affine map. ``torch.nn.utils.fusion`` does this for plain convolutions, but not
for grouped transposed convolutions (their weight is ``(in, out/groups, *k)``), nor for a Linear
with an ``affine=False`` BatchNorm, nor for torchvision's ``FrozenBatchNorm2d``; the arithmetic
here covers all of them and is done in float64, then cast back, so the fused layer matches the
pair as closely as its dtype allows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.ops.misc import FrozenBatchNorm2d

from optkit.models import out_width

__all__ = [
    "FOLDABLE_LAYERS",
    "NORM_LAYERS",
    "bn_affine",
    "fold_bn_into_layer",
    "fold_problem",
]

#: Layers a BatchNorm can be folded into.
FOLDABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
#: Normalizations that fold: every BatchNorm flavour with running statistics, and FrozenBatchNorm2d.
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)

# The stock forward of each foldable class: a subclass that overrides it (weight
# standardization, a scaled conv, ...) computes something the arithmetic here does not model.
_STOCK_METHODS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv1d: ("forward", "_conv_forward"),
    nn.Conv2d: ("forward", "_conv_forward"),
    nn.Conv3d: ("forward", "_conv_forward"),
    nn.ConvTranspose1d: ("forward",),
    nn.ConvTranspose2d: ("forward",),
    nn.ConvTranspose3d: ("forward",),
    nn.Linear: ("forward",),
    nn.BatchNorm1d: ("forward",),
    nn.BatchNorm2d: ("forward",),
    nn.BatchNorm3d: ("forward",),
    nn.SyncBatchNorm: ("forward",),
    FrozenBatchNorm2d: ("forward",),
}


def _overridden_method(module: nn.Module) -> str | None:
    """The name of a stock method ``module``'s class overrides, or ``None`` if it has none."""
    for base in type(module).__mro__:
        methods = _STOCK_METHODS.get(base)
        if methods is not None:
            for method in methods:
                if getattr(type(module), method) is not getattr(base, method):
                    return f"{method}()"
            return None
    return "forward() of a class this fold does not know"


def fold_problem(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``bn`` cannot be folded into ``layer`` by their types and state, or ``None`` if it can.

    This checks the two modules alone; whether ``bn`` consumes exactly ``layer``'s output is for
    the caller to prove.

    Args:
        layer: a Conv, ConvTranspose or Linear module.
        bn: a BatchNorm or FrozenBatchNorm2d module.

    Returns:
        A reason a person can read, or ``None``.
    """
    if not isinstance(layer, FOLDABLE_LAYERS):
        return f"{type(layer).__name__} is not a Conv, ConvTranspose or Linear layer"
    if not isinstance(bn, NORM_LAYERS):
        return f"{type(bn).__name__} is not a BatchNorm"
    for module in (layer, bn):
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            return f"{type(module).__name__} is lazy and not yet initialized"
        method = _overridden_method(module)
        if method is not None:
            return f"{type(module).__name__} overrides {method}, so its arithmetic is unknown"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{type(module).__name__} has forward hooks, which would observe the change"
        if parametrize.is_parametrized(module):
            return f"{type(module).__name__} has parametrized tensors"
    if bn.training:
        return "BatchNorm is in training mode (it normalizes with batch statistics)"
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return "BatchNorm has no running statistics (track_running_stats=False): it normalizes with batch statistics"
    if bn.running_mean.numel() != out_width(layer):
        return f"BatchNorm has {bn.running_mean.numel()} features but {type(layer).__name__} has {out_width(layer)} outputs"
    return None


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``y = x * scale + shift``, per channel, in float64.

    Args:
        bn: an eval BatchNorm (``affine`` or not) or a FrozenBatchNorm2d.

    Returns:
        ``(scale, shift)``, each of shape ``(num_features,)``.
    """
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _scale_output_channels(layer: nn.Module, scale: torch.Tensor) -> torch.Tensor:
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
        layer: the Conv/ConvTranspose/Linear module whose output ``bn`` normalizes.
        bn: the BatchNorm; :func:`fold_problem` must have returned ``None`` for the pair.

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval()
        >>> fold_bn_into_layer(conv, bn)  # conv now computes bn(conv(x))
    """
    weight = layer.weight
    scale, shift = (t.to(weight.device) for t in bn_affine(bn))
    new_weight = _scale_output_channels(layer, scale).to(weight.dtype)
    old_bias = layer.bias
    bias = old_bias.detach().double() if old_bias is not None else torch.zeros_like(scale)
    bias_dtype = old_bias.dtype if old_bias is not None else weight.dtype
    new_bias = (bias * scale + shift).to(bias_dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=old_bias.requires_grad if old_bias is not None else weight.requires_grad)
