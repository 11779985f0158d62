"""Sizes: the bytes ``torch.save(model.state_dict())`` writes, an artifact's files, a model's tensors in memory."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

__all__ = ["state_dict_bytes", "file_bytes", "tensor_bytes"]


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory (shared tensors once): what a copy of it takes.

    Example:
        >>> tensor_bytes(nn.Linear(256, 256))
        263168
    """
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a checkpoint of this model costs on disk).

    Example:
        >>> state_dict_bytes(nn.Linear(256, 256)) > 4 * (256 * 256 + 256)
        True
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def file_bytes(path: str | Path) -> int:
    """Bytes of an artifact on disk: the file, plus the external-data files an ONNX model names.

    ONNX models over 2 GB keep their weights in side files; the ``.onnx`` alone would understate
    the deployable size.
    """
    path = Path(path)
    total = path.stat().st_size
    if path.suffix == ".onnx":
        total += sum(p.stat().st_size for p in _onnx_external_files(path))
    return total


def _onnx_external_files(path: Path) -> set[Path]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:  # exporters put weights in the main graph's initializers
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                files.add(path.parent / location)
    return files
