"""How much a model's own outputs move under a change of its input at float32 rounding level.

A random deep network can amplify rounding: a 1e-7 change of the input moves a random
``efficientnetv2_rw_t``'s logits (224x224) by ~0.8 of ~844, and folding its BatchNorms, an exact
transform, by ~1.5. Drift of that size says nothing about the transform. The baseline is run on the seeded
input with each element moved by ``INPUT_STEP`` × its RMS (random signs, :data:`DRAWS` draws); the
largest output change per tensor is the model's sensitivity, and the runner does not fail an
element-wise drift bound for drift within :data:`FACTOR` times it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from optkit.inputs import ExampleInputs
from optkit.measure.outputs import output_leaves
from optkit.results import DriftComparison, OutputDrift

__all__ = ["INPUT_STEP", "DRAWS", "FACTOR", "perturbed_input", "output_sensitivity", "within_sensitivity"]

#: The relative change of every input element (about one float32 ulp).
INPUT_STEP = 1e-7
#: Perturbations drawn; the largest change counts.
DRAWS = 2
#: Drift up to this many times the sensitivity is the model's own noise.
FACTOR = 4.0


def perturbed_input(inputs: ExampleInputs, seed: int) -> ExampleInputs:
    """``inputs`` with every floating element moved by ``INPUT_STEP`` × the tensor's RMS, random signs (seeded)."""
    generator = torch.Generator().manual_seed(seed)

    def moved(t: Any) -> Any:
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()):
            return t
        signs = torch.randint(0, 2, t.shape, generator=generator).to(device=t.device, dtype=t.dtype) * 2 - 1
        return t + INPUT_STEP * t.double().pow(2).mean().sqrt().item() * signs

    return inputs.map(lambda t, _: moved(t))


def output_sensitivity(model: Callable[..., Any], inputs: ExampleInputs, outputs: Any, seed: int) -> dict[str, float]:
    """The largest change of each output tensor over :data:`DRAWS` perturbed inputs.

    Args:
        model: the baseline (in eval mode, under inference mode).
        inputs: the seeded batch.
        outputs: ``inputs.call(model)`` (on the CPU).
        seed: of the perturbations.

    Returns:
        Output name (:func:`optkit.measure.output_leaves`) -> max |Δ|; outputs whose shape changes are left out.
    """
    names = [leaf.name for leaf in output_leaves(outputs)]
    reference = pytree.tree_leaves(outputs)
    found: dict[str, float] = {}
    for draw in range(DRAWS):
        moved = pytree.tree_leaves(perturbed_input(inputs, seed + draw).call(model))
        if len(moved) != len(reference):
            return {}
        for name, a, b in zip(names, reference, moved, strict=False):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.numel() and a.is_floating_point():
                change = float((b.detach().cpu().double() - a.double()).abs().max())
                found[name] = max(found.get(name, 0.0), change)
    return found


def within_sensitivity(drift: DriftComparison, sensitivity: dict[str, float]) -> dict[str, Any] | None:
    """Whether every output's drift is within :data:`FACTOR` × the model's sensitivity.

    Args:
        drift: :func:`optkit.measure.compare_outputs` of a stage against the stage before.
        sensitivity: :func:`output_sensitivity` of the baseline.

    Returns:
        The worst output's figures (``output``, ``drift_max_abs``, ``sensitivity_max_abs``, ``factor``)
        when every output is within, else ``None``.
    """
    rows = drift.outputs or []
    if not rows:
        return None

    def ratio(row: OutputDrift) -> float:
        noise = sensitivity.get(row.name, 0.0)  # integer and empty outputs have none: they must not drift
        max_abs = float("nan") if row.max_abs is None else row.max_abs
        return max_abs / noise if noise > 0 else (0.0 if max_abs == 0 else float("inf"))

    worst = max(rows, key=ratio)
    if not ratio(worst) <= FACTOR:
        return None
    return {
        "output": worst.name,
        "drift_max_abs": worst.max_abs,
        "sensitivity_max_abs": sensitivity.get(worst.name, 0.0),
        "factor": FACTOR,
    }
