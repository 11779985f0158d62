"""Outputs whose comparison says nothing: empty tensors, and tensors the input does not change.

A random Faster R-CNN returns ``[0, 4]`` boxes, and SSDlite's anchors-only boxes are the same for
every image: "cosine 1.0, max_abs 0" over them is true and proves nothing about a transform. The
baseline is run once more on a second seeded input; an output that has no elements, or is equal on
both inputs, is named in every stage's drift figures and on the console.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from optkit.inputs import ExampleInputs
from optkit.measure.outputs import output_leaves

__all__ = ["second_input", "uninformative_outputs", "uninformative_warning"]


def second_input(inputs: ExampleInputs, seed: int) -> ExampleInputs:
    """Another seeded input like ``inputs``: floats drawn anew, integers and booleans rolled along
    the last dimension (the same values, so ids stay in their range, in other places)."""
    generator = torch.Generator().manual_seed(seed)

    def other(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
        return torch.roll(t, 1, dims=-1) if t.dim() else t

    return inputs.map(lambda t, _: other(t))


def uninformative_outputs(outputs: Any, other_outputs: Any) -> dict[str, str]:
    """Which outputs a comparison learns nothing from, and why.

    Args:
        outputs: the model's outputs on the seeded input.
        other_outputs: its outputs on :func:`second_input`.

    Returns:
        Output name (:func:`optkit.measure.output_leaves`) -> ``"has no elements"`` or
        ``"is the same for two different inputs"``; empty when every output is informative.
    """
    values = pytree.tree_leaves(outputs)
    others = pytree.tree_leaves(other_outputs)
    same_structure = len(others) == len(values)
    found = {}
    for i, (leaf, value) in enumerate(zip(output_leaves(outputs), values, strict=False)):
        if not isinstance(value, torch.Tensor):
            continue
        if value.numel() == 0:
            found[leaf.name] = f"has no elements (shape {list(value.shape)})"
        elif same_structure and isinstance(others[i], torch.Tensor) and torch.equal(value.cpu(), others[i].detach().cpu()):
            found[leaf.name] = "is the same for two different inputs"
    return found


def uninformative_warning(found: dict[str, str], total: int) -> str | None:
    """A one-line warning for :func:`uninformative_outputs`' result (``total``: tensors in the output), or ``None``."""
    if not found:
        return None
    listed = "; ".join(f"{name} {why}" for name, why in found.items())
    scope = "drift compares nothing" if len(found) == total else f"drift figures of {len(found)} of {total} outputs say nothing"
    return (
        f"{scope}: {listed}; a cosine of 1.0 and max_abs of 0 there are no evidence that a stage preserved the model "
        "(trained weights, or data.eval, give a comparison that does)"
    )
