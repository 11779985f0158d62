"""Output drift between two stages, output tensor by output tensor.

Every output tensor (and, where a caller names them, every channel group of a tensor, such as the
boxes and the class scores of a YOLO prediction) is held to its own tolerance,
``max|Δ| <= atol + rtol × max|that reference|``: box coordinates of ~500 pixels must not set the
tolerance of class scores around 1e-4. The runner's drift check and export_onnx's parity check
both use this module.

:func:`compare_outputs` returns a :class:`~optkit.results.DriftComparison`: the figures of the whole
output (``max_abs``, ``cosine``, ``top1_agreement``: what report.json always had) and ``outputs``,
one :class:`~optkit.results.OutputDrift` per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from optkit.measure.detections import SCORE_TIES, align_detections, not_compared
from optkit.measure.outputs import flatten_outputs, output_leaves
from optkit.models.rules import ChannelGroup, ModuleRule, find_rule
from optkit.results import DriftComparison, DriftFigures, GroupDrift, OutputDrift, Similarity

if TYPE_CHECKING:
    from optkit.passes import Tolerance

__all__ = [
    "ChannelGroup",
    "compare_outputs",
    "drift_exceeds",
    "output_excess",
    "output_parts",
    "worst_output",
    "output_excesses",
    "channel_groups_for",
    "similarity_falls_short",
    "tolerance_failure",
]


#: How many wrappers keeping the wrapped model in ``.model`` (optkit's TTA, ...) are looked through.
_MAX_WRAPPERS = 4


def _figures(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a64, b64 = a.detach().double().flatten().cpu(), b.detach().double().flatten().cpu()
    if not b64.numel():
        return {"max_abs": 0.0, "reference_max_abs": 0.0, "cosine": 1.0}
    return {
        "max_abs": float((a64 - b64).abs().max()),
        "reference_max_abs": float(b64.abs().max()),
        "cosine": float(F.cosine_similarity(a64, b64, dim=0, eps=1e-12)),
    }


def compare_outputs(
    outputs: Any, reference: Any, *, groups: Mapping[str, Sequence[ChannelGroup]] | None = None, score_ties: float = SCORE_TIES
) -> DriftComparison:
    """Compare ``outputs`` with ``reference`` tensor by tensor.

    Args:
        outputs: a model output (tensor, or tuples, lists, dicts of tensors).
        reference: the output it is compared with.
        groups: per output name (see :func:`optkit.output_leaves`), channel groups that get
            a row of their own.
        score_ties: per-image detections whose scores are closer than this share of the image's
            largest score are tied and not compared (at least twice the score error the caller allows).

    Returns:
        ``max_abs`` (largest absolute difference over every tensor), ``reference_max_abs``,
        ``cosine`` (of all outputs flattened together), ``top1_agreement`` when the first output
        is a ``[batch, classes]`` logits matrix, and ``outputs``: per tensor, ``name``, ``shape``,
        ``max_abs``, ``reference_max_abs``, ``cosine`` and, with groups, ``groups`` (the same
        figures per group, with ``group`` and ``channels``). ``comparable`` is ``False`` (with both
        shape lists) when the outputs cannot be compared. Per-image detections (a list of dicts of
        boxes, scores, labels) are compared in score order without their tied scores
        (:mod:`optkit.measure.detections`): ``detections`` counts per image what was compared, and
        ``detections_warning`` says when nothing was.
    """
    outputs, reference, detections = align_detections(outputs, reference, score_ties)
    found: dict[str, Any] = {"detections": detections, "detections_warning": not_compared(detections, score_ties)} if detections else {}
    a, b = flatten_outputs(outputs), flatten_outputs(reference)
    shapes = [list(t.shape) for t in a], [list(t.shape) for t in b]
    if shapes[0] != shapes[1]:
        return DriftComparison(comparable=False, shapes=shapes[0], reference_shapes=shapes[1], **found)
    if not a:
        return DriftComparison(comparable=False)
    names = [
        leaf.name
        for leaf, value in zip(output_leaves(reference), pytree.tree_leaves(reference), strict=True)
        if isinstance(value, torch.Tensor)
    ]
    groups = groups or {}
    rows = []
    for name, got, want in zip(names, a, b, strict=True):
        kept = [g for g in groups.get(name, ()) if g.dim < want.dim() and g.stop <= want.shape[g.dim]]
        by_group = [
            GroupDrift(
                group=g.name,
                channels=[g.start, g.stop],
                **_figures(got.narrow(g.dim, g.start, g.stop - g.start), want.narrow(g.dim, g.start, g.stop - g.start)),
            )
            for g in kept
        ]
        rows.append(OutputDrift(name=name, shape=list(want.shape), **_figures(got, want), groups=by_group if name in groups else None))
    whole = _figures(
        torch.cat([t.detach().flatten().cpu().double() for t in a]), torch.cat([t.detach().flatten().cpu().double() for t in b])
    )
    top1 = float((a[0].argmax(1) == b[0].argmax(1)).double().mean()) if a[0].dim() == 2 and a[0].shape[1] > 1 else None
    return DriftComparison(comparable=True, **whole, top1_agreement=top1, outputs=rows, **found)


def _measured(value: float | None) -> float:
    """A figure, NaN when it is missing (so that it fails every bound)."""
    return math.nan if value is None else value


def _shape_change(drift: DriftComparison) -> str:
    """The outputs' shapes before and after, as tuples."""
    before, after = (
        [tuple(shape) for shape in shapes] if shapes is not None else None for shapes in (drift.reference_shapes, drift.shapes)
    )
    return f"outputs changed shape: {before} -> {after}"


def output_excess(figures: DriftFigures, atol: float, rtol: float) -> float:
    """``max|Δ| / (atol + rtol × max|reference|)`` of one row of figures: above 1 breaks the tolerance."""
    max_abs = _measured(figures.max_abs)
    allowed = atol + rtol * _measured(figures.reference_max_abs)
    if not math.isfinite(max_abs):
        return math.inf
    if allowed <= 0:
        return 0.0 if max_abs == 0 else math.inf
    return max_abs / allowed


def output_parts(drift: DriftComparison) -> list[tuple[str, DriftFigures]]:
    """``(label, figures)`` of every part held to a tolerance of its own: each output tensor, or
    each channel group of a tensor that has groups (``"output_0 (scores)"``); the whole output
    for a comparison without per-output rows."""
    if not drift.outputs:
        return [("outputs", drift)]
    parts: list[tuple[str, DriftFigures]] = []
    for row in drift.outputs:
        parts += [(f"{row.name} ({g.group})", g) for g in row.groups or ()] or [(row.name, row)]
    return parts


def output_excesses(drift: DriftComparison, atol: float, rtol: float) -> list[tuple[str, DriftFigures, float]]:
    """Every part of ``drift`` held to a tolerance of its own (see :func:`output_parts`) with its
    excess ``max|Δ| / (atol + rtol × max|reference|)``: above 1 breaks the tolerance.

    Returns:
        ``(label, figures, excess)`` per output tensor or channel group.
    """
    return [(label, figures, output_excess(figures, atol, rtol)) for label, figures in output_parts(drift)]


def worst_output(drift: DriftComparison, atol: float, rtol: float) -> tuple[str, DriftFigures, float]:
    """The part of ``drift`` (see :func:`output_parts`) furthest over its tolerance: label, figures, excess."""
    return max(output_excesses(drift, atol, rtol), key=lambda part: part[2])


def drift_exceeds(drift: DriftComparison, atol: float, rtol: float) -> str | None:
    """Why ``drift`` breaks the tolerance, output by output (and group by group), or ``None``.

    Each output tensor is held to ``atol + rtol × max|its own reference|``; a tensor with channel
    groups is held group by group instead. The message names the worst one.
    """
    if not drift.comparable:
        return _shape_change(drift)
    label, worst, excess = worst_output(drift, atol, rtol)
    # One tensor without groups is "the outputs", as before per-output figures; otherwise name it.
    label = "outputs" if len(output_parts(drift)) == 1 else f"output {label}"
    max_abs, reference_max_abs = _measured(worst.max_abs), _measured(worst.reference_max_abs)
    if not math.isfinite(max_abs):
        verb = "are" if label == "outputs" else "is"
        return f"{label} {verb} not finite (max |Δ| = {max_abs}); the stage produced NaN or infinity"
    if excess <= 1:
        return None
    allowed = atol + rtol * reference_max_abs
    return (
        f"{label} drifted by max |Δ| = {max_abs:.3g}, over the tolerance {allowed:.3g} "
        f"(atol {atol:g} + rtol {rtol:g} × max|ref| {reference_max_abs:.3g}) by {excess:.3g}×"
    )


def channel_groups_for(model: nn.Module, outputs: Any, rules: Mapping[str, ModuleRule]) -> dict[str, list[ChannelGroup]]:
    """Channel groups of ``model``'s outputs that deserve tolerances of their own, as the module
    rules say (:attr:`ModuleRule.output_groups <optkit.models.rules.ModuleRule>` of the model's
    class, or of the model a wrapper keeps in ``.model``); a model no rule describes gets none.

    Args:
        model: the model (or artifact's source model) that produced ``outputs``.
        outputs: its outputs.
        rules: the module rules (``ctx.module_rules`` in a pass).

    Returns:
        Output name -> groups, for :func:`compare_outputs`.
    """
    candidate = model
    for _ in range(_MAX_WRAPPERS + 1):
        rule = find_rule(candidate, rules)
        if rule is not None and rule.output_groups is not None:
            return {name: list(groups) for name, groups in rule.output_groups(candidate, outputs).items()}
        inner = getattr(candidate, "model", None)
        if not isinstance(inner, nn.Module):
            break
        candidate = inner
    return {}


def similarity_falls_short(
    cosine: float | None, top1_agreement: float | None, tolerance: Tolerance, where: str = "on the seeded batch"
) -> str | None:
    """Why the measured ``cosine`` and ``top1_agreement`` (``None``: not measured) fall short of
    the minimums ``tolerance`` sets, or ``None``.

    Args:
        cosine: the outputs' cosine similarity to the reference's.
        top1_agreement: the share of samples whose top-1 is the reference's (classifiers only).
        tolerance: its ``cosine`` and ``top1_agreement`` are the minimums (``None``: unbounded).
        where: the samples compared, for the message (``on data.eval``).
    """
    if tolerance.cosine is not None and not (cosine is not None and cosine >= tolerance.cosine):  # NaN falls short too
        measured = "not measured" if cosine is None else f"{cosine:.6f}"
        return f"{where}, the outputs' cosine similarity to the stage before is {measured}, under the minimum {tolerance.cosine:.10g}"
    if tolerance.top1_agreement is not None:
        if top1_agreement is None:
            return f"{where}, the outputs are not [batch, classes] logits, so top-1 agreement cannot be held to a minimum"
        if top1_agreement < tolerance.top1_agreement:
            return (
                f"{where}, top-1 agreement with the stage before is {top1_agreement:.4g}, under the minimum {tolerance.top1_agreement:.10g}"
            )
    return None


def tolerance_failure(
    drift: DriftComparison, tolerance: Tolerance, on_data: Similarity | None = None, where: str = "on data.eval"
) -> str | None:
    """Why a stage breaks ``tolerance``, each bound it sets, against the stage before; or ``None``.

    The element-wise bound (``atol``/``rtol``) is checked on ``drift`` (the seeded batch, where
    exact arithmetic must agree on any input). Outputs that are not comparable fail, except per-image
    detections held to similarity bounds on ``on_data``: a quantized detector's lists differ in count
    and order, and its pass compares them (matched by IoU). The similarity bounds (``cosine``,
    ``top1_agreement``) are checked on ``on_data`` when given (the stage against the stage before
    on data.eval: :func:`optkit.measure.accuracy.similarity_to`), else on ``drift``: a quantized
    model is calibrated for real inputs, and the seeded batch of random values is not one.

    Args:
        drift: :func:`compare_outputs` of the stage against the stage before, on the seeded batch.
        tolerance: the bounds.
        on_data: ``top1``, ``cosine`` of the same comparison on data.eval (comparable outputs), or on
            more samples than the seeded batch (a pass's ``similarity_gate``), or ``None``.
        where: the samples ``on_data`` covers, for the message.
    """
    elementwise = tolerance.atol is not None and tolerance.rtol is not None
    # Per-image detections of another count or order (a quantized detector's) are compared by the pass's
    # own gate (on_data: detections matched by IoU), when only similarity bounds apply.
    if not drift.comparable and not (drift.detections and on_data is not None and not elementwise):
        return _shape_change(drift)
    if tolerance.atol is not None and tolerance.rtol is not None:
        problem = drift_exceeds(drift, tolerance.atol, tolerance.rtol)
        if problem is not None:
            return problem
    if on_data is not None:
        return similarity_falls_short(on_data.cosine, on_data.top1, tolerance, where)
    return similarity_falls_short(drift.cosine, drift.top1_agreement, tolerance)
