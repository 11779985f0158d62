"""Toys for ``quantize_onnx: {mode: auto}``: a CNN with one layer int8 cannot hold, and a small attention classifier."""

from __future__ import annotations

import torch
from torch import nn


class OneSensitiveLayer(nn.Module):
    """A CNN whose second convolution is quantization-sensitive, and only it.

    Each of that convolution's output channels has one weight of 1000 beside weights of about
    0.1, on an input channel that is always zero (the first convolution's channel 0 is cut by its
    ReLU): the float output never sees the large weight, while an int8 weight scale fitted to it
    rounds every other weight of the channel to zero. Keeping that one node in float restores the output.
    """

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.sensitive = nn.Conv2d(width, width, 3, padding=1)
        self.last = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, classes)
        with torch.no_grad():
            self.stem.weight[0].fill_(1e-3)  # not zero: int8 cannot scale an all-zero channel
            self.stem.bias[0] = -1.0  # channel 0 is ReLU(-1 + 1e-3 * sum of 27 inputs) = 0 for any input under ~37 in magnitude
            self.sensitive.weight[:, 0, 1, 1] = 1000.0
            for layer in (self.sensitive, self.last, self.head):  # the output is made by the weights, not by biases
                layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.sensitive(x))
        x = torch.relu(self.last(x))
        return self.head(x.mean((2, 3)))


def one_sensitive_layer() -> nn.Module:
    """:class:`OneSensitiveLayer`, for ``python:quantize_auto_toys:one_sensitive_layer``."""
    return OneSensitiveLayer()


class TinyViT(nn.Module):
    """A ViT in miniature: patches embedded by a convolution, two pre-norm blocks of single-head
    attention written as MatMuls around a Softmax and an MLP, mean-pooled into a classifier."""

    def __init__(self, dim: int = 32, patch: int = 8, blocks: int = 2, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * blocks))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(blocks))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(blocks))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(blocks))
        self.head = nn.Linear(dim, classes)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        for index, (qkv, proj, mlp) in enumerate(zip(self.qkv, self.proj, self.mlp, strict=True)):
            q, k, v = qkv(self.norms[2 * index](x)).chunk(3, dim=-1)
            attention = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)
            x = x + proj(attention @ v)
            x = x + mlp(self.norms[2 * index + 1](x))
        return self.head(x.mean(1))


def tiny_vit() -> nn.Module:
    """:class:`TinyViT`, for ``python:quantize_auto_toys:tiny_vit``."""
    return TinyViT()
