"""The MAC-counting convention: thop's rules, adjusted to count what torchvision's ``_ops`` count.

torchvision's published figures (``weights.meta["_ops"]``, GMACs) count the multiply-accumulates
of convolutions and matrix products only, at the level of aten operators (a ``TorchDispatchMode``
counter over ``convolution``, ``mm``, ``addmm``, ``bmm``, ``baddbmm`` and attention; see
pytorch/vision#6936). Normalization, pooling, activations, softmax and other elementwise work
count zero. thop agrees for convolution and linear layers and adds a little for the rest (up to
10% on small mobile networks); :data:`MAC_RULES` makes those zero and fixes transposed
convolutions, so that thop's module rules and the aten counter for functional code (attention)
speak the same unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.models.rules import find_rule

if TYPE_CHECKING:
    from optkit.models.rules import ModuleRule

__all__ = [
    "MAC_RULES",
    "THOP_COUNTED",
    "UNIT",
    "zero_macs",
    "conv_transpose_macs",
    "quantized_linear_macs",
    "quantized_conv_macs",
    "rules_for",
    "has_rule",
    "module_rule_macs",
]

#: What the MAC figures mean; stored with every count.
UNIT = (
    "MACs (multiply-accumulates of convolutions and matrix products, batch included; "
    "normalization, pooling and elementwise ops count zero, as in torchvision's _ops); GFLOPs = 2 x GMACs"
)

Rule = Callable[[nn.Module, tuple[Any, ...], Any], None]


def _add_macs(module: nn.Module, macs: float) -> None:
    """Add ``macs`` to the ``total_ops`` tensor that thop attached to ``module`` (in place)."""
    total = module.total_ops
    if not isinstance(total, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.total_ops is {type(total).__name__}, not thop's counter tensor")
    total += torch.tensor([macs], dtype=torch.float64)


def zero_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """A thop rule for modules that do no convolution or matrix product (counted as zero on purpose)."""
    _add_macs(module, 0.0)


def conv_transpose_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """A thop rule for transposed convolutions: every input element meets ``C_out/groups × kernel`` weights.

    thop counts them like a forward convolution over the output, which overstates a stride-2
    transposed convolution fourfold.
    """
    x, weight = inputs[0], module.get_parameter("weight")
    per_input = weight.shape[1] * math.prod(weight.shape[2:])
    _add_macs(module, float(x.numel() * per_input))


def quantized_linear_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """A rule for quantized Linear layers (``torch.ao``, static and dynamic): ``in_features`` per output element."""
    quantized: Any = module  # torch types module attributes as Tensor | Module; in_features is an int
    _add_macs(module, float(output.numel() * int(quantized.in_features)))


def quantized_conv_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """A rule for quantized convolutions (``torch.ao``): ``C_in/groups × kernel`` per output element.

    Their weight is a method (``module.weight()``), which thop's convolution rule cannot read.
    """
    quantized: Any = module  # torch types module attributes as Tensor | Module; here weight is a method
    per_output = math.prod(quantized.weight().shape[1:])
    _add_macs(module, float(output.numel() * per_output))


def _quantized_rules() -> dict[type[nn.Module], Rule]:
    """torch.ao's quantized Linear and convolution layers (fused with an activation too)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    linear = [nnq.Linear, nnqd.Linear, nniq.LinearReLU, nniqd.LinearReLU]
    linear += [getattr(nniq, name) for name in ("LinearLeakyReLU", "LinearTanh") if hasattr(nniq, name)]
    conv = [nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d]
    conv += [getattr(nniq, name) for name in ("ConvAdd2d", "ConvAddReLU2d") if hasattr(nniq, name)]
    return {**{t: quantized_linear_macs for t in linear}, **{t: quantized_conv_macs for t in conv}}


def _zero_rule_types() -> list[type[nn.Module]]:
    names = [
        # normalization
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LocalResponseNorm",
        "RMSNorm",
        # pooling and resampling
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
        "Upsample",
        "UpsamplingBilinear2d",
        "UpsamplingNearest2d",
        "PixelShuffle",
        "PixelUnshuffle",
        "ChannelShuffle",
        # activations
        "ReLU",
        "ReLU6",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "SELU",
        "CELU",
        "GELU",
        "SiLU",
        "Mish",
        "Hardswish",
        "Hardsigmoid",
        "Hardtanh",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Softmax",
        "LogSoftmax",
        "Softmin",
        # shape and regularization
        "Identity",
        "Flatten",
        "Unflatten",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "ZeroPad1d",
        "ZeroPad2d",
        "ZeroPad3d",
        "ConstantPad1d",
        "ConstantPad2d",
        "ConstantPad3d",
        "ReflectionPad1d",
        "ReflectionPad2d",
        "ReflectionPad3d",
        "ReplicationPad1d",
        "ReplicationPad2d",
        "ReplicationPad3d",
        "CircularPad1d",
        "CircularPad2d",
        "CircularPad3d",
    ]
    types: list[type[nn.Module]] = [getattr(nn, name) for name in names if hasattr(nn, name)]
    from torchvision.ops import Permute, StochasticDepth

    return [*types, StochasticDepth, Permute]


def _build_rules() -> dict[type[nn.Module], Rule]:
    rules: dict[type[nn.Module], Rule] = {t: zero_macs for t in _zero_rule_types()}
    for t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        rules[t] = conv_transpose_macs
    rules.update(_quantized_rules())
    return rules


#: thop ``custom_ops``: module type -> counting rule (convolution, linear and RNN rules stay thop's).
MAC_RULES: dict[type[nn.Module], Rule] = _build_rules()


#: Module types counted by thop's own rules (conv2d's formula and linear's are the same in both
#: thop distributions; the recurrent ones for batched tensor input). Every other type thop knows is
#: left out on purpose: :data:`MAC_RULES` covers what optkit counts as zero, and the aten counter the
#: rest, so counts do not depend on which distribution owns the ``thop/`` folder (ultralytics-thop
#: adds rules for containers and nn.MultiheadAttention, and counts functional code itself).
THOP_COUNTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.RNNCell,
    nn.GRUCell,
    nn.LSTMCell,
    nn.RNN,
    nn.GRU,
    nn.LSTM,
)


def module_rule_macs(model: nn.Module, module_rules: Mapping[str, ModuleRule] | None) -> dict[type[nn.Module], Rule]:
    """The ``macs`` of the module rules (``optkit_register_module_rules``) that describe ``model``'s modules.

    Rules are counted by module type; a type is counted by its rule only when the rule holds for
    every module of that type (``ModuleRule.check``).
    """
    rules: dict[type[nn.Module], Rule] = {}
    refused: set[type[nn.Module]] = set()
    if not module_rules:
        return rules
    for module in model.modules():
        kind = type(module)
        if kind in refused:
            continue
        rule = find_rule(module, module_rules)
        if rule is None or rule.macs is None:
            continue
        if rule.problem(module) is not None:
            refused.add(kind)
            rules.pop(kind, None)
            continue
        rules[kind] = rule.macs
    return rules


def rules_for(model: nn.Module, module_rules: Mapping[str, ModuleRule] | None = None) -> dict[type[nn.Module], Rule]:
    """Counting rules for ``model``'s modules: thop's for :data:`THOP_COUNTED`, :data:`MAC_RULES`,
    inherited rules for leaf subclasses, and the ``macs`` of module rules (which win).

    A leaf module whose class derives from a class with a rule (``class LayerNorm2d(nn.LayerNorm)``,
    ``NonDynamicallyQuantizableLinear(nn.Linear)``) is counted by that rule (the nearest base in
    the MRO). Containers never get a rule: their children are counted.
    """
    from thop.profile import register_hooks

    known: dict[type[nn.Module], Rule] = {t: register_hooks[t] for t in THOP_COUNTED if t in register_hooks}
    known.update(MAC_RULES)
    rules = dict(known)
    rules.update(module_rule_macs(model, module_rules))
    for module in model.modules():
        kind = type(module)
        if kind in rules or next(module.children(), None) is not None:
            continue
        base = next((b for b in kind.__mro__[1:] if b in known), None)
        if base is not None:
            rules[kind] = known[base]
    return rules


def has_rule(module: nn.Module, rules: dict[type[nn.Module], Rule]) -> bool:
    """Whether ``module`` itself is counted by a rule (rather than through its children and aten ops)."""
    return type(module) in rules and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
