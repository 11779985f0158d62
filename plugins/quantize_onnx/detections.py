"""A quantized detector against its float graph: per-image detections matched by IoU, not by index.

Comparing detection lists in score order (what export parity does, :func:`optkit.compare_outputs`)
needs the same detections in the same order on both sides. int8 moves every score a little (±0.03 on a
random SSDlite whose 300 scores lie within 0.52-0.58), so the order changes, tied sets differ and the
lists are no longer comparable, while the boxes are the same objects. Detection metrics match instead:
each float detection, highest score first, takes the quantized detection of its label that overlaps it
most, when their IoU is at least :data:`MATCH_IOU`; a quantized detection is matched once.

The figures feed the similarity gate: ``agreement`` (the share of the float model's detections the
quantized one finds) stands for top-1 agreement, and ``cosine`` is that of the matched pairs' boxes and
scores. Tied scores do not matter here: a random Faster R-CNN's 100 detections of one score are compared.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_iou

__all__ = ["MATCH_IOU", "is_detections", "match_detections"]

#: IoU from which a quantized detection is the float one's (the usual threshold of detection metrics).
MATCH_IOU = 0.5


def is_detections(output: Any) -> bool:
    """Whether ``output`` is a list of per-image dicts of ``boxes`` [N, 4], ``scores`` [N] and ``labels`` [N]."""
    return (
        isinstance(output, list | tuple)
        and bool(output)
        and all(
            isinstance(image, dict)
            and all(isinstance(image.get(key), torch.Tensor) for key in ("boxes", "scores", "labels"))
            and image["boxes"].dim() == 2
            for image in output
        )
    )


def match_detections(outputs: list[dict[str, torch.Tensor]], reference: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Match ``outputs``' detections to ``reference``'s, image by image (see the module's docstring).

    Returns:
        ``reference`` (detections of the reference), ``found`` (those matched), ``extra`` (detections of
        ``outputs`` matching none), ``agreement`` (found / reference; ``None`` when the reference has
        none) and ``cosine`` of the matched pairs' boxes and scores (``None`` when none matched).
    """
    total = found = extra = 0
    mine: list[torch.Tensor] = []
    theirs: list[torch.Tensor] = []
    for got, want in zip(outputs, reference, strict=True):
        got = {key: got[key].detach().double().cpu() for key in ("boxes", "scores", "labels")}
        want = {key: want[key].detach().double().cpu() for key in ("boxes", "scores", "labels")}
        order = want["scores"].argsort(descending=True, stable=True)
        overlap = box_iou(want["boxes"][order], got["boxes"]).nan_to_num(0.0)  # NaN: two boxes of no area
        overlap[want["labels"][order][:, None] != got["labels"][None, :]] = -1.0
        used = torch.zeros(got["scores"].shape[0], dtype=torch.bool)
        for row, index in enumerate(order.tolist()):
            candidates = overlap[row].masked_fill(used, -1.0)
            best = int(candidates.argmax()) if candidates.numel() else -1
            if best >= 0 and candidates[best] >= MATCH_IOU:
                used[best] = True
                mine.append(torch.cat([got["boxes"][best], got["scores"][best : best + 1]]))
                theirs.append(torch.cat([want["boxes"][index], want["scores"][index : index + 1]]))
        total += int(order.shape[0])
        found += int(used.sum())
        extra += int((~used).sum())
    cosine = None
    if mine:
        cosine = float(torch.nn.functional.cosine_similarity(torch.cat(mine), torch.cat(theirs), dim=0, eps=1e-12))
    return {"reference": total, "found": found, "extra": extra, "agreement": found / total if total else None, "cosine": cosine}
