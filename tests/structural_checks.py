"""Checks every channel-pruned model must pass: the same output shapes, a forward and backward pass
in train mode (auxiliary branches included), a save and reload with equal outputs, and an ONNX
export (optkit's own export_onnx pass) whose outputs match PyTorch at batch 1, 2 and 8."""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from optkit import OnnxArtifact, PassContext
from optkit_plugins.export_onnx import ExportOnnx

__all__ = ["assert_sound", "leaves", "output_shapes"]


def leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in leaves(copy.deepcopy(model).eval()(x))]


def assert_sound(original: nn.Module, pruned: nn.Module, x: torch.Tensor, *, onnx_dir: Path | None = None) -> None:
    """Assert the checks above; ONNX only when ``onnx_dir`` is given (it takes a few seconds)."""
    assert output_shapes(pruned, x) == output_shapes(original, x)
    trained = copy.deepcopy(pruned).train()
    sum(t.float().mean() for t in leaves(trained(torch.cat([x, x])))).backward()
    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False).eval()
    with torch.no_grad():
        for a, b in zip(leaves(pruned.eval()(x)), leaves(reloaded(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    if onnx_dir is not None:
        ctx = PassContext(torch.device("cpu"), x, onnx_dir, logging.getLogger("test.onnx"))
        artifact = ExportOnnx(ExportOnnx.Options(exporter="dynamo", verify_batch_sizes=[1, 2, 8])).apply(pruned, ctx)
        assert isinstance(artifact, OnnxArtifact)  # the pass raises when onnxruntime and PyTorch disagree
        assert sorted(f["batch"] for f in ctx.details["parity"]["inputs"].values()) == sorted([x.shape[0], 1, 2, 8])
