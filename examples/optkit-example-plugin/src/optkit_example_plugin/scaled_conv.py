"""A custom layer and the module rule that lets ``fuse_bn`` fold the BatchNorm after it.

``ScaledConv`` is a ``Conv2d`` whose output is multiplied by a learned scalar. Its ``forward`` is
its own, so fuse_bn cannot know what it computes and leaves ``ScaledConv -> BatchNorm`` alone
("overrides forward(), so its arithmetic is unknown"). The rule says how to fold a following
BatchNorm into it: fold the scale into the weights, then fold the BatchNorm as into any conv.
fuse_bn checks the claim on the example batch before it keeps the change.
"""

from __future__ import annotations

import torch
from torch import nn

from optkit import hookimpl
from optkit import ModuleRule, class_path, fold_bn_into_layer

__all__ = ["ScaledConv", "fold_bn_into_scaled_conv"]


class ScaledConv(nn.Conv2d):
    """``conv(x) * scale``, with a learned scalar ``scale``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, **kwargs)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


@torch.no_grad()
def fold_bn_into_scaled_conv(module: ScaledConv, bn: nn.Module) -> None:
    """Afterwards ``module(x)`` computes what ``bn(module(x))`` did: the scale goes into the weights
    (and bias), then the BatchNorm is folded as into a plain convolution."""
    module.weight.mul_(module.scale)
    if module.bias is not None:
        module.bias.mul_(module.scale)
    module.scale.fill_(1.0)
    fold_bn_into_layer(module, bn)


@hookimpl
def optkit_register_module_rules(register):
    register(ModuleRule(
        class_path(ScaledConv),              # "optkit_example_plugin.scaled_conv.ScaledConv"
        computes="conv(x) * scale",          # shown in reports
        fold_bn=fold_bn_into_scaled_conv,    # fuse_bn: fold the BatchNorm that reads its output
    ))
