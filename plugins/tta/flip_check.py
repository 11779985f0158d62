"""A check that an undeclared dense output is a map TTA may simply un-flip.

Un-flipping is right for scalar maps (segmentation logits, depth, heatmaps without sides). A vector
field's horizontal component changes sign under a horizontal flip (optical flow), and left/right
channels swap (keypoint heatmaps): averaged as maps, they cancel or blur. The model is run once
more on the flipped example; a channel that is anti-correlated with itself after un-flipping, or
correlated better with another channel, is flagged.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit import ExampleInputs
from optkit_plugins.tta.image_inputs import is_image
from optkit_plugins.tta.kinds import OutputPlan
from optkit_plugins.tta.wrapper import FLIP_DIMS

__all__ = ["flip_warnings"]

#: Correlations beyond which a channel is taken to change under the flip.
_ANTI, _SWAPPED, _MARGIN = -0.5, 0.5, 0.25


def _channel_correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[C, C]`` Pearson correlations between the channels of ``a`` and ``b`` (``[B, C, h, w]``)."""
    a = a.transpose(0, 1).flatten(1).double()
    b = b.transpose(0, 1).flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def flip_warnings(model: nn.Module, example: ExampleInputs, plan: OutputPlan, flip: str) -> list[str]:
    """Warnings for the ``dense`` outputs of ``plan`` whose channels change under ``flip``.

    Args:
        model: the model (run once on the flipped example, in inference mode).
        example: the example inputs (every image input is flipped, the others kept).
        plan: the output plan (``flow`` outputs are declared vector fields and not checked).
        flip: ``horizontal`` or ``vertical``.

    Returns:
        One line per flagged output, naming the channels and what to declare.
    """
    dense = [i for i in plan.kept if plan.kind_of(i).name == "dense"]
    if not dense:
        return []
    dim = FLIP_DIMS[flip]
    with torch.inference_mode():
        plain = pytree.tree_leaves(example.call(model))
        flipped = pytree.tree_leaves(example.map(lambda t, _: t.flip(dim) if is_image(t) else t).call(model))
    warnings = []
    for i in dense:
        corr = _channel_correlations(plain[i], flipped[i].flip(dim))
        own = corr.diagonal()
        others = corr - torch.diag(torch.full_like(own, 2.0))  # every other channel's, below any correlation
        anti = [c for c in range(len(own)) if own[c] < _ANTI]
        swapped = [c for c in range(len(own)) if len(own) > 1 and others[c].max() > max(_SWAPPED, float(own[c]) + _MARGIN)]
        if anti or swapped:
            said = [f"channels {anti} change sign" if anti else "", f"channels {swapped} swap with others" if swapped else ""]
            warnings.append(
                f"output {plan.paths[i]}: under a {flip} flip {' and '.join(s for s in said if s)} (correlation after "
                f"un-flipping, example batch): it looks like a vector field or a map with sides, which averaging un-flipped "
                f"cancels; declare `tta: {{output: flow}}` for a [B, 2, h, w] vector field, or leave out flips: [{flip}]"
            )
    return warnings
