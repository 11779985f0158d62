"""Which Conv/ConvTranspose/Linear → BatchNorm pairs may be folded, judged from the two modules.

The arithmetic of folding is :func:`optkit.fold_bn_into_layer` (public: module rules use
it too). A BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``) folds only
through a module rule that says what it computes (``bn_reference``), and a layer with its own
``forward`` (a scaled conv) only through a module rule that folds a BatchNorm into it
(``fold_bn``); fuse_bn proves both on the modules' inputs (:mod:`optkit_plugins.fuse_bn.rules`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize
from torchvision.ops.misc import FrozenBatchNorm2d

from optkit import ModuleRule, out_width

__all__ = ["FOLDABLE_LAYERS", "NORM_LAYERS", "fold_problem"]

#: Layers a BatchNorm can be folded into.
FOLDABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
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


def fold_problem(layer: nn.Module, bn: nn.Module, rule: ModuleRule | None = None, layer_rule: ModuleRule | None = None) -> str | None:
    """Why ``bn`` cannot be folded into ``layer`` by their types and state, or ``None`` if it can.

    This checks the two modules alone; whether ``bn`` consumes exactly ``layer``'s output, and
    whether a rule's ``bn_reference`` or ``fold_bn`` holds, is for the caller to prove.

    Args:
        layer: a Conv, ConvTranspose or Linear module, or a module ``layer_rule`` describes.
        bn: a BatchNorm or FrozenBatchNorm2d module, or a module ``rule`` describes as one.
        rule: the module rule describing ``bn`` as a BatchNorm with extras (``bn_reference``).
        layer_rule: the module rule whose ``fold_bn`` folds a BatchNorm into ``layer``.

    Returns:
        A reason a person can read, or ``None``.
    """
    if layer_rule is None and not isinstance(layer, FOLDABLE_LAYERS):
        return f"{type(layer).__name__} is not a Conv, ConvTranspose or Linear layer, and no module rule with fold_bn describes it"
    if rule is None and not isinstance(bn, NORM_LAYERS):
        return f"{type(bn).__name__} is not a BatchNorm"
    if rule is not None and rule.problem(bn):
        return f"{type(bn).__name__}: module rule {rule.class_path} does not apply: {rule.problem(bn)}"
    if layer_rule is not None and layer_rule.problem(layer):
        return f"{type(layer).__name__}: module rule {layer_rule.class_path} does not apply: {layer_rule.problem(layer)}"
    if layer_rule is not None and rule is not None:
        return f"module rule {layer_rule.class_path} folds a BatchNorm, and {type(bn).__name__} is a module rule's BatchNorm with extras"
    for module in (layer, bn):
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            return f"{type(module).__name__} is lazy and not yet initialized"
        described = layer_rule if module is layer else rule
        method = _overridden_method(module) if described is None else None
        if method is not None:
            unknown = " (no module rule describes it)" if module is bn else " (no module rule with fold_bn describes it)"
            return f"{type(module).__name__} overrides {method}, so its arithmetic is unknown{unknown}"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{type(module).__name__} has forward hooks, which would observe the change"
        if parametrize.is_parametrized(module):
            return f"{type(module).__name__} has parametrized tensors"
    if bn.training:
        return "BatchNorm is in training mode (it normalizes with batch statistics)"
    running_mean = getattr(bn, "running_mean", None)
    if running_mean is None or getattr(bn, "running_var", None) is None:
        return "BatchNorm has no running statistics (track_running_stats=False): it normalizes with batch statistics"
    if layer_rule is None and running_mean.numel() != out_width(layer):
        return f"BatchNorm has {running_mean.numel()} features but {type(layer).__name__} has {out_width(layer)} outputs"
    return None
