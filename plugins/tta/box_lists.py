"""TTA for detectors that return a list of dicts per image, as torchvision's do (``boxes`` xyxy in
the input's pixels, ``scores``, ``labels``): Faster R-CNN, SSD, SSDlite, RetinaNet, FCOS.

Each branch runs on the input flipped, resized by ``scale`` and padded on the right and bottom
(as :class:`~optkit_plugins.tta.wrapper.TestTimeAugmentation` does for YOLO); its boxes are mapped
back to the input (``x * W / w'``, and ``x -> W - x`` with x1 and x2 swapped after a horizontal
flip), then every branch's detections of an image are merged by class-wise NMS
(``torchvision.ops.batched_nms``) at the model's own IoU threshold, highest score first, and cut
to the model's detections per image. These detections come after the model's NMS, so the merge
is one more NMS over the union, as ensembles of detectors do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms

from optkit_plugins.tta.image_inputs import first_image
from optkit_plugins.tta.wrapper import TestTimeAugmentation

__all__ = ["BOX_LIST_KEYS", "BoxListTTA", "box_list_problem", "restore_boxes", "merge_box_lists"]

#: The keys of one image's detections.
BOX_LIST_KEYS = ("boxes", "scores", "labels")
#: IoU threshold and detections per image when the model does not say (torchvision's defaults).
DEFAULT_IOU, DEFAULT_DETECTIONS = 0.5, 100


def box_list_problem(output: Any, batch: int) -> str | None:
    """Why ``output`` is not a list of ``batch`` dicts of ``boxes [N, 4]``, ``scores [N]`` and ``labels [N]``
    that this module merges, or ``None`` when it is. A list of dicts with other keys (Mask R-CNN's
    ``masks``, keypoints) is refused: those would need de-augmenting too."""
    if not (isinstance(output, list) and output and all(isinstance(d, dict) for d in output)):
        return "not a list of dicts"
    keys = set(output[0])
    if not set(BOX_LIST_KEYS) <= keys:
        return f"dicts without {', '.join(k for k in BOX_LIST_KEYS if k not in keys)}"
    if keys != set(BOX_LIST_KEYS):
        extra = ", ".join(sorted(str(k) for k in keys - set(BOX_LIST_KEYS)))
        return f"its detections also have {extra}, which TTA does not de-augment (it merges boxes, scores and labels only)"
    if len(output) != batch:
        return f"{len(output)} dicts for a batch of {batch}"
    return None


def restore_boxes(boxes: torch.Tensor, content_hw: tuple[Any, Any], image_hw: tuple[Any, Any], flip: str | None) -> torch.Tensor:
    """Map one branch's ``[N, 4]`` xyxy boxes back to the un-augmented input's pixels.

    Args:
        boxes: boxes in the branch input's pixels (padding on the right and bottom moves nothing).
        content_hw: the size the input was resized to, before padding.
        image_hw: the input's size ``(H, W)``.
        flip: ``None``, ``horizontal`` or ``vertical``: the flip applied before resizing.

    Returns:
        The boxes in input pixels, xyxy with ``x1 <= x2`` and ``y1 <= y2`` as given.
    """
    height, width = float(image_hw[0]), float(image_hw[1])
    scale = torch.tensor([width / float(content_hw[1]), height / float(content_hw[0])] * 2, dtype=boxes.dtype, device=boxes.device)
    out = boxes * scale
    x1, y1, x2, y2 = out.unbind(-1)
    if flip == "horizontal":
        x1, x2 = width - x2, width - x1
    elif flip == "vertical":
        y1, y2 = height - y2, height - y1
    return torch.stack([x1, y1, x2, y2], dim=-1)


def merge_box_lists(branches: Sequence[dict[str, torch.Tensor]], iou: float, limit: int) -> dict[str, torch.Tensor]:
    """One image's detections from every branch (boxes already restored) merged by class-wise NMS.

    Args:
        branches: per branch, the image's ``boxes``, ``scores`` and ``labels``.
        iou: boxes of one class overlapping more than this are one detection (the highest score's).
        limit: the most detections kept, highest scores first.

    Returns:
        ``boxes``, ``scores`` and ``labels``, sorted by decreasing score.
    """
    boxes = torch.cat([b["boxes"] for b in branches])
    scores = torch.cat([b["scores"] for b in branches])
    labels = torch.cat([b["labels"] for b in branches])
    keep = batched_nms(boxes, scores, labels, iou)[:limit]  # indices by decreasing score
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _model_setting(model: nn.Module, names: Sequence[str], default: Any) -> Any:
    """The first of ``model``'s attributes (dotted) found: torchvision keeps its NMS settings on the
    model (SSD, RetinaNet, FCOS) or on ``roi_heads`` (the R-CNN family)."""
    for name in names:
        owner: Any = model
        for part in name.split("."):
            owner = getattr(owner, part, None)
        if isinstance(owner, int | float) and not isinstance(owner, bool):
            return owner
    return default


class BoxListTTA(TestTimeAugmentation):
    """Run a list-of-dicts detector at several scales and flips and merge its detections by NMS.

    Args: as :class:`~optkit_plugins.tta.wrapper.TestTimeAugmentation` (``merge``, ``plan``,
    ``descale`` and ``clip_levels`` do not apply); ``iou`` and ``limit`` default to the model's
    own NMS threshold and detections per image.
    """

    def __init__(
        self,
        model: nn.Module,
        scales: Sequence[float] = (1.0,),
        flips: Sequence[str] = (),
        stride: int = 32,
        pad_value: float = 0.0,
        same_shape: bool = False,
        *,
        iou: float | None = None,
        limit: int | None = None,
    ):
        super().__init__(model, scales, flips, stride=stride, pad_value=pad_value, same_shape=same_shape)
        self.iou = float(iou if iou is not None else _model_setting(model, ("roi_heads.nms_thresh", "nms_thresh"), DEFAULT_IOU))
        self.limit = int(
            limit
            if limit is not None
            else _model_setting(model, ("roi_heads.detections_per_img", "detections_per_img"), DEFAULT_DETECTIONS)
        )

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        args = args if x is None else (x, *args)  # as TestTimeAugmentation.forward
        x = first_image(args, kwargs)
        image_hw = (x.shape[-2], x.shape[-1])
        per_image: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(x.shape[0])]
        for scale, flip in self.branch_list:
            branch_args, branch_kwargs, content, _ = self._augment(args, kwargs, scale, flip)
            output = self.model(*branch_args, **branch_kwargs)
            problem = box_list_problem(output, int(x.shape[0]))
            if problem is not None:
                raise RuntimeError(f"tta: a branch's output is not per-image detections: {problem}")
            for image, detections in zip(per_image, output, strict=True):
                image.append({**detections, "boxes": restore_boxes(detections["boxes"], content, image_hw, flip)})
        return [merge_box_lists(branches, self.iou, self.limit) for branches in per_image]

    def extra_repr(self) -> str:
        return (
            f"branches={self.branch_list}, stride={self.stride}, pad_value={self.pad_value}, same_shape={self.same_shape}, "
            f"merge=batched_nms(iou={self.iou}), limit={self.limit}"
        )
