"""Mapping one TTA branch's YOLO-layout detections back to the input, and merging branches.

Each branch ran on the input flipped, then resized to ``h' x w'`` and padded on the right and
bottom. Its boxes are xywh in that branch input's pixels; padding on the right and bottom does not
move content, so a branch maps back by one affine map per channel, ``out = pred * m + a``:

* x and w scale by ``W / w'``, y and h by ``H / h'`` (exact; YOLOv5 divides by the nominal scale,
  which is off by the rounding of ``w' = int(W * s)``: ``descale="nominal"`` does that);
* a horizontal flip maps ``x -> W - x`` (continuous coordinates: pixel ``i`` spans ``[i, i+1)``),
  a vertical one ``y -> H - y``; keypoints likewise, re-ordered by ``flip_idx`` after a horizontal
  flip; an OBB angle ``t -> -t``, wrapped into ``[-pi/4, 3pi/4)``.

The branches' anchors are then concatenated (:func:`merge_detections`), as YOLOv5 and Ultralytics
do before NMS, so NMS sees every box: averaging anchors element-wise would mix unrelated boxes
(a box at x=50 and its flipped twin at x=W-50 average to the image centre).
"""

from __future__ import annotations

import math

import torch

from optkit_plugins.tta.kinds import DetectionLayout

__all__ = ["restore_detections", "clip_augmented_tails", "merge_detections"]


def _affine(
    channels: int, layout: DetectionLayout, ratio: tuple[float, float], flip: str | None, img_hw: tuple[int, int]
) -> tuple[list[float], list[float]]:
    """Per-channel ``(multiplier, offset)`` mapping a branch's rows back to the input frame."""
    rx, ry = ratio
    height, width = img_hw
    mul, add = [1.0] * channels, [0.0] * channels

    def place(x: int, y: int) -> None:
        mul[x], add[x] = (-rx, float(width)) if flip == "horizontal" else (rx, 0.0)
        mul[y], add[y] = (-ry, float(height)) if flip == "vertical" else (ry, 0.0)

    place(0, 1)
    mul[2], mul[3] = rx, ry
    if layout.extra == "keypoints" and layout.kpt_shape is not None and layout.extra_start is not None:
        count, size = layout.kpt_shape
        for j in range(count):
            place(layout.extra_start + j * size, layout.extra_start + j * size + 1)
    return mul, add


def restore_detections(
    pred: torch.Tensor,
    layout: DetectionLayout,
    content_hw: tuple[int, int],
    img_hw: tuple[int, int],
    flip: str | None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Map one branch's predictions back to the un-augmented input's pixels.

    Args:
        pred: ``[B, C, A]`` (``layout.channels_dim == 1``) or ``[B, A, C]`` predictions, boxes
            xywh in the branch input's pixels.
        layout: where boxes, classes and extra channels are.
        content_hw: the size the input was resized to, before padding.
        img_hw: the input's size ``(H, W)``.
        flip: ``None``, ``horizontal`` or ``vertical``: the flip applied before resizing.
        scale: when given, de-scale by ``1 / scale`` on both axes (YOLOv5's ``_descale_pred``)
            instead of the exact ratio of sizes.

    Returns:
        A tensor of the same shape: boxes (and keypoints) in input pixels with the flip undone;
        scores and other channels unchanged.

    Raises:
        ValueError: keypoints under a horizontal flip without ``flip_idx``.
    """
    height, width = img_hw
    ratio = (1.0 / scale, 1.0 / scale) if scale is not None else (width / content_hw[1], height / content_hw[0])
    dim = layout.channels_dim
    channels = int(pred.shape[dim])
    mul, add = _affine(channels, layout, ratio, flip, img_hw)
    view = [1, 1, 1]
    view[dim] = channels
    out = pred * torch.tensor(mul, dtype=pred.dtype, device=pred.device).view(view) + torch.tensor(
        add, dtype=pred.dtype, device=pred.device
    ).view(view)
    start = layout.extra_start
    if flip is not None and layout.extra == "angle" and start is not None:
        # Mirroring either axis maps a direction at angle t to -t (mod pi).
        angle = torch.remainder(math.pi / 4 - out.narrow(dim, start, 1), math.pi) - math.pi / 4
        out = torch.cat([out.narrow(dim, 0, start), angle, out.narrow(dim, start + 1, channels - start - 1)], dim=dim)
    if flip == "horizontal" and layout.extra == "keypoints" and layout.kpt_shape is not None and start is not None:
        if layout.flip_idx is None:
            raise ValueError("keypoints under a horizontal flip need flip_idx (which keypoint mirrors which): set tta: {flip_idx: [...]}")
        count, size = layout.kpt_shape
        order = list(range(start))
        for j in layout.flip_idx:
            order.extend(range(start + j * size, start + (j + 1) * size))
        order.extend(range(start + count * size, channels))
        out = out.index_select(dim, torch.tensor(order, device=pred.device))
    return out


def clip_augmented_tails(preds: list[torch.Tensor], levels: int, anchor_dim: int) -> list[torch.Tensor]:
    """Ultralytics' ``_clip_augmented``: drop the coarsest level of the first (largest) branch and
    the finest level of the last (smallest) one; anchors are ordered level by level, each level
    4x the next."""
    total = sum(4**x for x in range(levels))
    preds = list(preds)
    first, last = preds[0], preds[-1]
    cut = int(first.shape[anchor_dim]) // total
    preds[0] = first.narrow(anchor_dim, 0, int(first.shape[anchor_dim]) - cut)
    skip = (int(last.shape[anchor_dim]) // total) * 4 ** (levels - 1)
    preds[-1] = last.narrow(anchor_dim, skip, int(last.shape[anchor_dim]) - skip)
    return preds


def merge_detections(preds: list[torch.Tensor], layout: DetectionLayout, clip_levels: int | None = None) -> torch.Tensor:
    """Concatenate the branches' anchors (clipping the tails first when ``clip_levels`` is given)."""
    if clip_levels and len(preds) > 1:
        preds = clip_augmented_tails(preds, clip_levels, layout.anchor_dim)
    return preds[0] if len(preds) == 1 else torch.cat(preds, dim=layout.anchor_dim)
