"""Data for ``optkit optimize`` tests: scikit-learn's digits without their labels (``python:optimize_toys:unlabeled_digits``)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def unlabeled_digits(count: int = 120) -> list[tuple[torch.Tensor, int]]:
    """The last ``count`` of scikit-learn's digits as the digits CNN takes them (3×32×32 in [0, 1],
    upscaled bilinearly, as ``python -m optkit.data`` writes them), each with label -1 (none): accuracy
    is then agreement with the eager model."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[-count:], dtype=torch.float32).unsqueeze(1) / 16
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return [(image, -1) for image in images]
