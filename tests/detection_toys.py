"""Detectors whose correct answer is known, for the TTA and export tests."""

from __future__ import annotations

import torch
from torch import nn


def bright_block_image(height: int = 128, width: int = 160, cx: int = 50, cy: int = 100, batch: int = 1) -> torch.Tensor:
    """A black image with a 2x2 white block centred on the pixel corner ``(cx, cy)``.

    In continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``) the block's centroid is
    exactly ``(cx, cy)``, and so is its mirror's once un-flipped (``W - x``).
    """
    x = torch.zeros(batch, 3, height, width)
    x[:, :, cy - 1 : cy + 1, cx - 1 : cx + 1] = 1.0
    return x


class ToyDetector(nn.Module):
    """A detector in YOLO layout whose answer is known.

    Anchor 0 is the intensity-weighted centroid of the image (continuous pixel coordinates), with
    ``w = h = sqrt(total intensity)`` (2 for a 2x2 block) and class scores ``[peak, 1 - peak]``.
    With ``anchors=2`` a second anchor sits at the fixed point ``(W/4, H/4)`` of the branch input,
    so that the order of concatenation shows.

    Args:
        layout: ``ultralytics`` -> ``[B, 4+nc, A]``; ``yolov5`` -> ``[B, A, 5+nc]`` (objectness
            at channel 4, equal to the peak).
        anchors: 1 or 2.
    """

    def __init__(self, layout: str = "ultralytics", anchors: int = 1):
        super().__init__()
        self.layout = layout
        self.anchors = anchors
        self.register_buffer("gain", torch.ones(()))  # something to export as a weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intensity = x.mean(1) * self.gain  # [B, H, W]
        _, height, width = intensity.shape
        cols = torch.arange(width, dtype=x.dtype, device=x.device) + 0.5
        rows = torch.arange(height, dtype=x.dtype, device=x.device) + 0.5
        total = intensity.sum((1, 2)).clamp_min(1e-12)
        cx = (intensity.sum(1) * cols).sum(1) / total
        cy = (intensity.sum(2) * rows).sum(1) / total
        size = total.sqrt()
        peak = intensity.amax((1, 2))
        row = [cx, cy, size, size] + ([peak] if self.layout == "yolov5" else []) + [peak, 1 - peak]
        first = torch.stack(row, 1)  # [B, C]
        preds = [first]
        if self.anchors == 2:
            fixed = torch.zeros_like(first)
            fixed[:, 0], fixed[:, 1], fixed[:, 2], fixed[:, 3] = width / 4, height / 4, 1.0, 1.0
            preds.append(fixed)
        out = torch.stack(preds, 2)  # [B, C, A]
        return out.transpose(1, 2) if self.layout == "yolov5" else out
