"""The ``data.transform`` keys as a torchvision ``transforms.v2`` pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.transforms import v2

if TYPE_CHECKING:
    from optkit.config.data import TransformSpec

__all__ = ["build_transform"]


def build_transform(spec: TransformSpec) -> v2.Compose:
    """The transform ``spec`` describes: an image (PIL or tensor) in, a plain float tensor out.

    In this order: resize (the shorter side, or ``[height, width]``), center crop, scale to
    float in [0, 1], normalize with ``mean``/``std``. No keys: the image as float in [0, 1].

    Example:
        >>> from optkit.config.data import TransformSpec
        >>> build_transform(TransformSpec(resize=36, center_crop=32))  # doctest: +ELLIPSIS
        Compose(...)
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if spec.resize is not None:
        steps.append(v2.Resize(spec.resize, antialias=True))
    if spec.center_crop is not None:
        steps.append(v2.CenterCrop(spec.center_crop))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if spec.mean is not None and spec.std is not None:
        steps.append(v2.Normalize(spec.mean, spec.std))
    steps.append(v2.ToPureTensor())  # a plain tensor, not a tv_tensors.Image, reaches the model
    return v2.Compose(steps)
