"""Which of a model's inputs TTA augments: its image batches.

An image input is a floating-point ``[B, C, H, W]`` batch (or a video ``[B, C, T, H, W]``); every
image input of one call gets the same flip and scale (RAFT's two frames together), and every other
input (token ids, masks, scalars, feature vectors) is passed through untouched. The first image
input, in call order (positional, then keyword), is the reference whose size outputs are restored to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from optkit import ExampleInputs

__all__ = ["is_image", "first_image", "sizes_differ", "image_inputs_problem", "DIFFERENT_SIZES"]

DIFFERENT_SIZES = "image inputs of different sizes cannot be scaled to one size; use scales: [1.0] (flips only)"


def is_image(value: Any) -> bool:
    """``value`` is a floating-point batch of images ``[B, C, H, W]`` or videos ``[B, C, T, H, W]``."""
    return isinstance(value, torch.Tensor) and value.dim() in (4, 5) and value.is_floating_point()


def first_image(args: Sequence[Any], kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The reference image input of a call: the first positional, else keyword, image batch.

    Raises:
        ValueError: the call has no image input.
    """
    for value in (*args, *kwargs.values()):
        if is_image(value):
            return value
    raise ValueError("tta: the model was called without an image input ([B, C, H, W] or [B, C, T, H, W] floating point)")


def sizes_differ(images: Iterable[torch.Tensor]) -> bool:
    """The images' spatial sizes ``(H, W)`` are not all the same."""
    return len({(int(t.shape[-2]), int(t.shape[-1])) for t in images}) > 1


def image_inputs_problem(inputs: ExampleInputs, scales: Sequence[float]) -> str | None:
    """Why TTA cannot augment ``inputs`` with ``scales``, in one line, or ``None`` when it can."""
    images = [t for t in inputs.tensors if is_image(t)]
    if not images:
        described = [f"{d['shape']} {d['dtype']}" for d in inputs.describe()]
        if len(described) == 1:
            found = f"the model's input is {described[0]}, which cannot be resized or flipped"
        else:
            named = ", ".join(f"{name} {d}" for name, d in zip(inputs.names, described, strict=True))
            found = f"the model's inputs are {named}, none of which can be resized or flipped"
        return f"tta augments image batches ([B, C, H, W] or video [B, C, T, H, W], floating point); {found}"
    if any(s != 1.0 for s in scales) and sizes_differ(images):
        sizes = ", ".join(f"{name} {list(t.shape[-2:])}" for name, t in zip(inputs.names, inputs.tensors, strict=True) if is_image(t))
        return f"tta: {DIFFERENT_SIZES} (image inputs {sizes})"
    return None
