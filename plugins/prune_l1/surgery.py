"""Channel surgery: shrink convolutions, Linear and BatchNorm layers to the channels kept.

Every function changes the module in place and keeps it a plain, dense layer of the same type,
so the model stays an ordinary ``nn.Module`` that can be saved whole and exported.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["keep_outputs", "keep_inputs", "keep_channelwise"]

_Conv = nn.modules.conv._ConvNd
_BatchNorm = nn.modules.batchnorm._BatchNorm


def _select(tensor: torch.Tensor, dim: int, keep: list[int]) -> torch.Tensor:
    index = torch.as_tensor(keep, dtype=torch.long, device=tensor.device)
    return tensor.detach().index_select(dim, index).clone()


def _replace_parameter(module: nn.Module, name: str, dim: int, keep: list[int]) -> None:
    param = getattr(module, name)
    if param is not None:
        setattr(module, name, nn.Parameter(_select(param, dim, keep), requires_grad=param.requires_grad))


def keep_outputs(module: nn.Module, keep: list[int]) -> None:
    """Keep only output channels ``keep`` of a convolution (``groups == 1``) or Linear layer.

    Args:
        module: an ``nn.Conv*d`` or ``nn.Linear``.
        keep: the indices of the output channels (features) to keep, in order.
    """
    _replace_parameter(module, "weight", 0, keep)
    _replace_parameter(module, "bias", 0, keep)
    if isinstance(module, nn.Linear):
        module.out_features = len(keep)
    else:
        module.out_channels = len(keep)


def keep_inputs(module: nn.Module, keep: list[int]) -> None:
    """Keep only input channels ``keep`` of a convolution (``groups == 1``) or Linear layer.

    Args:
        module: an ``nn.Conv*d`` or ``nn.Linear``.
        keep: the indices of the input channels (in-features) to keep, in order.
    """
    _replace_parameter(module, "weight", 1, keep)
    if isinstance(module, nn.Linear):
        module.in_features = len(keep)
    else:
        module.in_channels = len(keep)


def keep_channelwise(module: nn.Module, keep: list[int]) -> None:
    """Keep channels ``keep`` of a layer that maps channel i to channel i.

    Args:
        module: a BatchNorm layer, or a depthwise/grouped convolution with as many outputs as
            inputs (``keep`` then holds whole groups, so the group width is unchanged).
        keep: the indices of the channels to keep, in order.
    """
    if isinstance(module, _BatchNorm):
        _replace_parameter(module, "weight", 0, keep)
        _replace_parameter(module, "bias", 0, keep)
        for name in ("running_mean", "running_var"):
            buffer = getattr(module, name)
            if buffer is not None:
                setattr(module, name, _select(buffer, 0, keep))
        module.num_features = len(keep)
    elif isinstance(module, _Conv):
        width = module.in_channels // module.groups
        _replace_parameter(module, "weight", 0, keep)
        _replace_parameter(module, "bias", 0, keep)
        module.in_channels = module.out_channels = len(keep)
        module.groups = len(keep) // width
    else:
        raise TypeError(f"cannot shrink channels of {type(module).__name__}")
