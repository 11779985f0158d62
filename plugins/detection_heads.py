"""The class-dependent heads of torchvision's detectors, which ``reclassify`` must replace together.

A two-stage detector (Faster/Mask/Keypoint R-CNN) predicts, per proposal, ``num_classes`` scores
(``roi_heads.box_predictor.cls_score``) *and* ``num_classes * 4`` box deltas
(``roi_heads.box_predictor.bbox_pred``; Mask R-CNN adds ``num_classes`` mask logits). The
postprocess pairs score ``c`` with deltas ``4c..4c+3``: replacing the scores alone pairs classes
with other classes' boxes. One-stage detectors (SSD, RetinaNet, FCOS) interleave anchors and classes
in per-level convolutions; they are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ClassHead", "DetectorHeadsRefused", "detector_class_heads", "torchvision_detector"]

#: One-stage detectors by class name, with the head that holds their classes.
_ONE_STAGE = {"SSD": "head.classification_head", "RetinaNet": "head.classification_head", "FCOS": "head.classification_head"}


class DetectorHeadsRefused(ValueError):
    """The model is a detector whose class heads reclassify cannot rebuild; the message says why."""


@dataclass(frozen=True)
class ClassHead:
    """A layer with ``rows_per_class`` output rows per class (1 for scores, 4 for box deltas)."""

    name: str
    module: nn.Module
    rows_per_class: int


def _is_torchvision_detector(model: nn.Module, class_name: str) -> bool:
    return any(cls.__name__ == class_name and cls.__module__.startswith("torchvision.models.detection") for cls in type(model).__mro__)


def torchvision_detector(model: nn.Module) -> str | None:
    """The class name of a torchvision detector (R-CNN family, SSD, RetinaNet, FCOS), else ``None``.

    These take a list of images, resize them inside the model, need targets in train mode and return
    post-NMS detections as a list of dicts (``boxes``, ``scores``, ``labels``) per image.
    """
    for family in ("GeneralizedRCNN", *_ONE_STAGE):
        if _is_torchvision_detector(model, family):
            return type(model).__name__
    return None


def detector_class_heads(model: nn.Module) -> list[ClassHead] | None:
    """Every class-dependent layer of a torchvision detector, or ``None`` when ``model`` is not one.

    Args:
        model: any model (not changed).

    Returns:
        The layers to replace together (scores first), or ``None`` for a model that is not a
        torchvision detector.

    Raises:
        DetectorHeadsRefused: a one-stage detector, or a two-stage one whose predictor is not torchvision's.
    """
    for class_name, head in _ONE_STAGE.items():
        if _is_torchvision_detector(model, class_name):
            raise DetectorHeadsRefused(
                f"{type(model).__name__} predicts classes with per-level convolutions ({head}: anchors x classes interleaved), "
                "which reclassify does not rebuild; build the model with num_classes=N in its factory and finetune it instead"
            )
    if not _is_torchvision_detector(model, "GeneralizedRCNN"):
        return None
    box = getattr(model.roi_heads, "box_predictor", None)
    if box is None or not (
        isinstance(getattr(box, "cls_score", None), nn.Linear) and isinstance(getattr(box, "bbox_pred", None), nn.Linear)
    ):
        raise DetectorHeadsRefused(
            f"{type(model).__name__}'s roi_heads.box_predictor is a {type(box).__name__} without Linear cls_score and bbox_pred; "
            "reclassify replaces only torchvision's FastRCNNPredictor (scores and boxes together)"
        )
    heads = [
        ClassHead("roi_heads.box_predictor.cls_score", box.cls_score, 1),
        ClassHead("roi_heads.box_predictor.bbox_pred", box.bbox_pred, 4),
    ]
    masks = getattr(model.roi_heads, "mask_predictor", None)
    if masks is not None:
        heads.append(ClassHead("roi_heads.mask_predictor.mask_fcn_logits", masks.mask_fcn_logits, 1))
    return heads
