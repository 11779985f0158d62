"""Output drift between two stages: max-abs difference, cosine similarity, top-1 agreement."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["flatten_outputs", "compare_outputs", "drift_exceeds"]


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list, dict or namedtuple) in a stable order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for key in sorted(outputs, key=str) for t in flatten_outputs(outputs[key])]
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in flatten_outputs(item)]
    return []


def compare_outputs(outputs: Any, reference: Any) -> dict[str, Any]:
    """Compare ``outputs`` with ``reference`` tensor by tensor.

    Returns:
        ``max_abs`` (largest absolute difference), ``cosine`` (of the flattened outputs), and
        ``top1_agreement`` when the first output is a ``[batch, classes]`` logits matrix;
        ``comparable`` is ``False`` (with both shape lists) when the outputs cannot be compared.
    """
    a, b = flatten_outputs(outputs), flatten_outputs(reference)
    shapes = [tuple(t.shape) for t in a], [tuple(t.shape) for t in b]
    if shapes[0] != shapes[1]:
        return {"comparable": False, "shapes": shapes[0], "reference_shapes": shapes[1]}
    if not a:
        return {"comparable": False}
    a64 = torch.cat([t.detach().double().flatten().cpu() for t in a])
    b64 = torch.cat([t.detach().double().flatten().cpu() for t in b])
    result: dict[str, Any] = {
        "comparable": True,
        "max_abs": float((a64 - b64).abs().max()) if a64.numel() else 0.0,
        "reference_max_abs": float(b64.abs().max()) if b64.numel() else 0.0,
        "cosine": float(torch.nn.functional.cosine_similarity(a64, b64, dim=0, eps=1e-12)),
    }
    if a[0].dim() == 2 and a[0].shape[1] > 1:
        result["top1_agreement"] = float((a[0].argmax(1) == b[0].argmax(1)).double().mean())
    return result


def drift_exceeds(drift: dict[str, Any], atol: float, rtol: float) -> str | None:
    """Why ``drift`` breaks the tolerance ``atol + rtol * max|reference|``, or ``None``."""
    if not drift.get("comparable", False):
        return f"outputs changed shape: {drift.get('reference_shapes')} -> {drift.get('shapes')}"
    allowed = atol + rtol * drift["reference_max_abs"]
    if not math.isfinite(drift["max_abs"]):
        return f"outputs are not finite (max |Δ| = {drift['max_abs']}); the stage produced NaN or infinity"
    if drift["max_abs"] > allowed:
        return (
            f"outputs drifted by max |Δ| = {drift['max_abs']:.3g}, over the tolerance {allowed:.3g} "
            f"(atol {atol:g} + rtol {rtol:g} × max|ref| {drift['reference_max_abs']:.3g}) by "
            f"{drift['max_abs'] / allowed if allowed else float('inf'):.3g}×"
        )
    return None
