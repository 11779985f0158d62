"""Per-image detections (a list of dicts of ``boxes``, ``scores``, ``labels``, as torchvision's
detectors return) made comparable between two runs of a model.

Detections come sorted by score after NMS and top-k. Where scores tie (a random model's uniform
class scores: all 272 of a random SSDlite's are exactly 0.2), which of the tied boxes survive and
in what order is the runtime's choice: onnxruntime's TopK and NonMaxSuppression break ties
differently from PyTorch's, and a fused BatchNorm's rounding reorders them. Comparing such lists
index by index reports a box error of hundreds of pixels for a correct export. So each image's
detections are put in one order (score, highest first) and the detections whose score lies
within a tie tolerance of a score tied on either side are left out of the comparison; what was
compared and what was not is reported (``detections`` in the drift figures), and a comparison that
compared no detection says so.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SCORE_TIES", "align_detections", "is_detection_list", "not_compared"]

#: Scores closer than this share of an image's largest score are tied (their order is not the model's).
SCORE_TIES = 1e-4


def is_detection_list(value: Any) -> bool:
    """Whether ``value`` is a list of per-image dicts with ``boxes [N, 4]`` and ``scores [N]``."""
    if not isinstance(value, list | tuple) or not value:
        return False
    for image in value:
        if not isinstance(image, dict):
            return False
        boxes, scores = image.get("boxes"), image.get("scores")
        if not (isinstance(boxes, torch.Tensor) and isinstance(scores, torch.Tensor)):
            return False
        if boxes.dim() != 2 or scores.dim() != 1 or boxes.shape[0] != scores.shape[0]:
            return False
    return True


def _tied_scores(scores: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The scores (float64) that lie within ``tolerance`` of another score of the same list."""
    ranked = torch.sort(scores.detach().double().flatten().cpu(), descending=True).values
    close = (ranked[:-1] - ranked[1:]).abs() <= tolerance
    tied = torch.zeros_like(ranked, dtype=torch.bool)
    tied[:-1] |= close
    tied[1:] |= close
    return ranked[tied]


def _untied_in_order(scores: torch.Tensor, tied: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Indices of the detections whose score is not within ``tolerance`` of any ``tied`` score, by decreasing score."""
    values = scores.detach().double().cpu()
    order = torch.sort(values, descending=True, stable=True).indices
    if tied.numel():
        near = ((values[order].unsqueeze(1) - tied.unsqueeze(0)).abs() <= tolerance).any(dim=1)
        order = order[~near]
    return order.to(scores.device)


def _select(image: dict[str, Any], index: torch.Tensor, count: int) -> dict[str, Any]:
    """``image`` with every per-detection tensor (first dimension ``count``) indexed by ``index``."""
    return {
        key: value[index.to(value.device)] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == count else value
        for key, value in image.items()
    }


def align_detections(outputs: Any, reference: Any, ties: float = SCORE_TIES) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Both outputs' per-image detections in score order, tied ones left out; other outputs as given.

    Args:
        outputs: a model output; only a top-level list of per-image detection dicts is changed.
        reference: the output it is compared with.
        ties: scores closer than this share of the image's largest score are tied.

    Returns:
        ``(outputs, reference, rows)``: ``rows`` has one entry per image (``output``,
        ``reference_detections``, ``compared``, ``tied``), empty when the outputs are not
        detection lists of the same length.
    """
    if not (is_detection_list(outputs) and is_detection_list(reference) and len(outputs) == len(reference)):
        return outputs, reference, []
    aligned: list[dict[str, Any]] = []
    aligned_reference: list[dict[str, Any]] = []
    rows = []
    for i, (image, reference_image) in enumerate(zip(outputs, reference, strict=True)):
        # One tolerance and one set of tied scores for both sides: a score tied on one side (its twin
        # there kept, the other dropped) is left out on the other side too, where it may stand alone.
        both = torch.cat([image["scores"].detach().double().cpu(), reference_image["scores"].detach().double().cpu()])
        tolerance = ties * float(both.abs().max()) if both.numel() else 0.0
        tied = torch.cat([_tied_scores(image["scores"], tolerance), _tied_scores(reference_image["scores"], tolerance)])
        keep = _untied_in_order(image["scores"], tied, tolerance)
        reference_keep = _untied_in_order(reference_image["scores"], tied, tolerance)
        aligned.append(_select(image, keep, int(image["scores"].shape[0])))
        aligned_reference.append(_select(reference_image, reference_keep, int(reference_image["scores"].shape[0])))
        count = int(reference_image["scores"].shape[0])
        rows.append(
            {"output": f"output_{i}", "reference_detections": count, "compared": len(reference_keep), "tied": count - len(reference_keep)}
        )
    return aligned, aligned_reference, rows


def not_compared(rows: list[dict[str, Any]], ties: float = SCORE_TIES) -> str | None:
    """One line naming the images whose detections all tied (none compared), or ``None``."""
    empty = [row for row in rows if row["reference_detections"] and not row["compared"]]
    if not empty:
        return None
    names = ", ".join(f"{row['output']} ({row['reference_detections']} detections)" for row in empty)
    return (
        f"no detection compared in {names}: every score ties with another (closer than {ties:g} × the largest score), so which "
        "boxes are kept and in what order is the runtime's choice; a random model's scores tie, give trained weights"
    )
