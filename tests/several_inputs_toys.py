"""Models of several and integer inputs for tests: a RAFT-like two-frame flow toy and a tiny BERT-like encoder."""

from __future__ import annotations

import torch
from torch import nn


class TwoFrameFlow(nn.Module):
    """RAFT in miniature: both frames through one shared encoder, their features correlated and a 2-channel flow decoded."""

    def __init__(self, width: int = 8, shared: bool = True):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        # RAFT shares one encoder between the frames; a model of two encoders has a BatchNorm pair each.
        self.encoder2 = self.encoder if shared else nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(2 * width + 1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 3, padding=1))

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.encoder(frame1), self.encoder2(frame2)
        correlation = (f1 * f2).mean(1, keepdim=True)
        return self.head(torch.cat([f1, f2, correlation], 1))


class TinyEncoder(nn.Module):
    """A BERT-like classifier: token and position embeddings, masked self-attention written out in
    matrix products, an MLP, and a classifier on the first token."""

    def __init__(self, vocab: int = 100, hidden: int = 32, heads: int = 2, layers: int = 2, classes: int = 3, positions: int = 64):
        super().__init__()
        self.heads = heads
        self.tokens, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
        self.qkv = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2 * layers))
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        x = self.tokens(input_ids) + self.positions(torch.arange(length, device=input_ids.device))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for i, (qkv, out, mlp) in enumerate(zip(self.qkv, self.out, self.mlp)):
            q, k, v = qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, -1)
            x = self.norms[2 * i](x + out((attention @ v).transpose(1, 2).reshape(batch, length, -1)))
            x = self.norms[2 * i + 1](x + mlp(x))
        return self.classifier(x[:, 0])


def two_frame(shared: bool = True) -> nn.Module:
    return TwoFrameFlow(shared=shared)


def tiny_encoder() -> nn.Module:
    return TinyEncoder()


def tiny_encoder_with_inputs() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The encoder and its example inputs (a python: source may return both): ids in [0, 100), a mask with padding."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 12:] = 0
    return TinyEncoder(), {"input_ids": ids, "attention_mask": mask}


class PairDataset(torch.utils.data.Dataset):
    """(inputs, label) samples for the two-frame toy: the inputs a tuple of frames, or a dict of them (``as_dict``)."""

    def __init__(self, size: int = 8, as_dict: bool = False):
        generator = torch.Generator().manual_seed(1)
        self.frames = torch.randn(size, 2, 3, 32, 32, generator=generator)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int):
        frame1, frame2 = self.frames[index]
        return ({"frame1": frame1, "frame2": frame2} if self.as_dict else (frame1, frame2)), 0


def pairs(as_dict: bool = False) -> PairDataset:
    return PairDataset(as_dict=as_dict)


class TokenSamples(torch.utils.data.Dataset):
    """({"input_ids", "attention_mask"}, label) samples for the tiny encoder: 32 tokens, 3 classes."""

    def __init__(self, size: int = 12):
        generator = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, 100, (size, 32), generator=generator)
        self.labels = torch.randint(0, 3, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, int(self.labels[index])


def token_samples() -> TokenSamples:
    return TokenSamples()
