"""Data for ``optkit optimize`` tests: the digits val images without their labels (``python:optimize_toys:unlabeled``)."""

from __future__ import annotations

import torch
import torchvision


class Unlabeled(torch.utils.data.Dataset):
    """An image folder's images, each with label -1 (none): accuracy is then agreement with the baseline."""

    def __init__(self, root: str):
        self.images = torchvision.datasets.ImageFolder(root, transform=torchvision.transforms.ToTensor())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index][0], -1


def unlabeled(root: str) -> Unlabeled:
    return Unlabeled(root)
