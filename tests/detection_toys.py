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


def two_blocks_image(height: int = 64, width: int = 128, batch: int = 1) -> torch.Tensor:
    """Two 2x2 blocks on odd pixel corners, one in each half: white (1.0) at ``(41, 21)`` and grey
    (0.6) at ``(97, 43)``. Halving the image keeps each block one pixel of its value, centred on
    half its corner (bilinear, ``align_corners=False``), so a 0.5 scale is exact too."""
    x = torch.zeros(batch, 3, height, width)
    x[:, :, 20:22, 40:42] = 1.0
    x[:, :, 42:44, 96:98] = 0.6
    return x


class ToyBoxListDetector(nn.Module):
    """A detector in torchvision's output layout (a list of dicts of ``boxes`` xyxy, ``scores``,
    ``labels`` per image) whose boxes are exactly flip- and scale-equivariant.

    Per half of the image (left, right) holding any intensity: a box centred on the
    intensity-weighted centroid of channel 0 (continuous pixel coordinates) with half-size
    ``sqrt(total intensity)``, score the peak intensity, label 1 when the peak exceeds 0.8 else 2
    (by brightness, not position, so a flip keeps it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gain", torch.ones(()))

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        height, width = x.shape[-2], x.shape[-1]
        ys = torch.arange(height, dtype=x.dtype).view(-1, 1) + 0.5
        xs = torch.arange(width, dtype=x.dtype).view(1, -1) + 0.5
        detections = []
        for image in x[:, 0] * self.gain:
            boxes, scores, labels = [], [], []
            left = (xs < width / 2).to(x.dtype)
            for mask in (left, 1 - left):
                full = image * mask
                total = full.sum()
                if total <= 0:
                    continue
                cx, cy, size = (full * xs).sum() / total, (full * ys).sum() / total, total.sqrt()
                boxes.append(torch.stack([cx - size, cy - size, cx + size, cy + size]))
                peak = full.max()
                scores.append(peak)
                labels.append(torch.where(peak > 0.8, 1, 2))
            detections.append(
                {
                    "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                    "scores": torch.stack(scores) if scores else torch.zeros(0),
                    "labels": torch.stack(labels).long() if labels else torch.zeros(0, dtype=torch.long),
                }
            )
        return detections


class ConvNMSDetector(nn.Module):
    """A small network (two convolutions, zero biases: TorchScript's export shares them through an Identity)
    and a torchvision-like postprocess: one box per pixel decoded from the features, scores, NMS, top 10,
    returned as per-image dicts. Exports with NonMaxSuppression, like torchvision's detectors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)
        for conv in (self.stem, self.head):
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        import torchvision

        features = self.head(torch.relu(self.stem(x)))[0]  # [4, H, W]: score logit, two size offsets, class logit
        rows, cols = torch.meshgrid(torch.arange(x.shape[2]), torch.arange(x.shape[3]), indexing="ij")
        corner = torch.stack([cols, rows], -1).flatten(0, 1).float()
        size = 2.0 + 4.0 * features[1:3].flatten(1).t().sigmoid()
        boxes = torch.cat([corner, corner + size], 1)
        scores = features[0].flatten().sigmoid()
        labels = (features[3].flatten() > 0).long() + 1
        keep = torchvision.ops.nms(boxes, scores, 0.5)[:10]
        return [{"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}]


def conv_nms_detector() -> nn.Module:
    return ConvNMSDetector().eval()


class SharedHead(nn.Module):
    """One convolution (non-zero bias) applied to two feature levels of very different ranges, as an RPN or
    RetinaNet head is applied to every FPN level: the exported graph has two Convs reading one bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)
        nn.init.constant_(self.head.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        return torch.cat([self.head(features).flatten(1), self.head(features * 20).flatten(1)], 1)


def shared_head() -> nn.Module:
    return SharedHead().eval()
