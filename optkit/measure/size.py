"""Serialized size: the bytes ``torch.save(model.state_dict())`` writes, or an artifact file's size."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

__all__ = ["state_dict_bytes", "file_bytes"]


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a checkpoint of this model costs on disk)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def file_bytes(path: Path) -> int:
    return Path(path).stat().st_size
