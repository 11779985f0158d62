"""Channel pruning of torchvision's detectors: their backbone alone.

A torchvision detector (Faster R-CNN, SSD, SSDlite, RetinaNet, FCOS) resizes and normalizes its
images inside the model (``transform``), needs targets in train mode, and after its backbone keeps
a data-dependent number of proposals and detections (NMS): the tracer can follow neither the
train-mode forward nor a replay in which pruning changes how many boxes survive. Its ``backbone``
(the feature extractor, with the FPN for the R-CNN family) is an ordinary network of tensors. It is
traced alone, in eval and train mode, on the batch the model's transform makes of the example, and
keeps the widths of the features it hands the heads (every output keeps its shape), so the heads,
the anchors and the postprocess are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BackboneOnly", "backbone_batch", "backbone_to_prune"]


class BackboneOnly(nn.Module):
    """A detector's ``backbone`` under the same attribute name, so that layer names (``backbone.body.0.0``)
    match the detector's: ``include``/``exclude`` patterns and the report name the same layers."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        backbone: Any = detector.backbone  # shared, not copied: the pruned copy replaces it
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> Any:
        return self.backbone(images)


def backbone_batch(detector: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """What ``detector.backbone`` receives for ``example`` in eval mode: the images resized,
    normalized and padded by the detector's own ``transform``.

    Args:
        detector: a torchvision detector (not changed: its transform's mode is restored).
        example: ``[B, 3, H, W]`` images.

    Returns:
        The batched tensor the backbone reads.
    """
    transform: Any = detector.transform  # torchvision's GeneralizedRCNNTransform
    training = transform.training
    transform.eval()  # train mode picks a random size among min_size
    try:
        with torch.no_grad():
            return transform(list(example))[0].tensors
    finally:
        transform.train(training)


def backbone_to_prune(detector: nn.Module, name: str, example: torch.Tensor, details: dict[str, Any]) -> tuple[BackboneOnly, torch.Tensor]:
    """What channel pruning traces and cuts for a torchvision detector, and on what; ``details`` says so.

    Args:
        detector: the detector (its backbone is shared with the result, not copied).
        name: its class name, for the report.
        example: the pipeline's ``[B, 3, H, W]`` example images.
        details: the stage's details (``pruned_part`` is added).

    Returns:
        The :class:`BackboneOnly` wrapper and the batch its backbone receives.
    """
    details["pruned_part"] = f"backbone (torchvision's {name}: heads, anchors and postprocess unchanged)"
    return BackboneOnly(detector), backbone_batch(detector, example)
