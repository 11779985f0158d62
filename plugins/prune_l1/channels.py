"""Channel pruning: remove whole output channels with the smallest L1 norm, together with everything
that depends on them (see :mod:`optkit_plugins.prune_l1.dependency`), leaving a smaller dense model
with the same output shapes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from optkit import PassContext
from optkit.errors import StageError
from optkit.measure import flatten_outputs
from optkit.models import out_width
from optkit_plugins.prune_l1.dependency import ChannelGraph, ChannelGroup, UntraceableModelError, build_channel_graph
from optkit_plugins.prune_l1.surgery import keep_channelwise, keep_inputs, keep_outputs

__all__ = ["PRUNABLE", "prune_channels"]

#: Layers whose weights channel and unstructured pruning remove.
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def prune_channels(model: nn.Module, selected: dict[str, nn.Module], amount: float, round_to: int, ctx: PassContext) -> None:
    """Remove whole channels of ``model`` in place; ``ctx.details`` gets channels per layer.

    Args:
        model: the model (an eval copy the pass owns).
        selected: the layers whose output channels may be removed.
        amount: the share of each group's channels to remove.
        round_to: keep a multiple of this many channels per group.
        ctx: the stage context (example input, details, logger).

    Raises:
        StageError: the model cannot be analysed, or the pruned model no longer runs or changed
            its output shapes.
    """
    with torch.no_grad():
        reference = [t.shape for t in flatten_outputs(model(ctx.example_input))]

    try:
        graph = build_channel_graph(model, ctx.example_input)
    except UntraceableModelError as exc:
        raise StageError(f"prune_l1 mode: channels needs a model torch.fx can trace ({exc}); mode: unstructured works on any model") from exc
    for name in graph.producers:
        if name not in selected:
            graph.atoms.fix(graph.producers[name], "are excluded (include/exclude/prune_classifier)")
    groups = graph.groups()
    removed, group_details = _choose_removed_units(model, graph, groups, amount, round_to)
    before = _widths(model, graph)
    _shrink(model, graph, removed)
    after = _widths(model, graph)

    with torch.no_grad():
        try:
            outputs = [t.shape for t in flatten_outputs(model(ctx.example_input))]
        except RuntimeError as exc:
            raise StageError(f"prune_l1: the channel-pruned model no longer runs ({exc}); exclude the layers named in the error") from exc
    if outputs != reference:
        raise StageError(f"prune_l1: channel pruning changed the output shapes from {reference} to {outputs}")
    if not groups:
        ctx.logger.warning("prune_l1: no channel group can be pruned; the model is unchanged (see details.left_alone)")
    ctx.details.update(
        mode="channels",
        amount=amount,
        round_to=round_to,
        channels={name: [before[name], after[name]] for name in before},
        groups=group_details,
        left_alone=[{"layers": f.layers, "channels": f.channels, "reason": f.reason} for f in graph.fixed()],
        unsupported_ops=graph.unsupported,
        not_traced=_not_traced(model, graph),
    )


def _not_traced(model: nn.Module, graph: ChannelGraph) -> list[str]:
    """Layers with weights that the eval-mode graph never calls (e.g. auxiliary heads used only in
    training): their input channels were not adjusted, so they may not fit the pruned model."""
    return [
        name for name, m in model.named_modules()
        if name and next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None
        and not any(name == c or name.startswith(c + ".") for c in graph.called_modules)
    ]


def _importance(model: nn.Module, graph: ChannelGraph) -> dict[int, float]:
    """Summed L1 norm of each unit's filters, each layer's norms divided by their mean.

    Normalizing per layer lets layers of different fan-in weigh alike in a coupled group.
    """
    scores: dict[int, float] = {}
    layers = list(graph.producers.items()) + [(n, a) for n, a in graph.channelwise.items() if isinstance(model.get_submodule(n), PRUNABLE)]
    for name, atoms in layers:
        weight = model.get_submodule(name).weight.detach()
        norms = weight.abs().flatten(1).sum(1)
        norms = norms / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny)
        for atom, value in zip(atoms, norms.tolist()):
            root = graph.atoms.find(atom)
            scores[root] = scores.get(root, 0.0) + value
    return scores


def _units_to_keep(group: ChannelGroup, amount: float, round_to: int) -> int:
    """How many units of ``group`` survive: ``1 - amount`` of them, rounded up for ``round_to``."""
    count = len(group.units)
    keep = max(1, count - int(count * amount))
    width = group.widths[0] if group.widths else 1
    step = round_to // math.gcd(round_to, width)  # units per multiple of round_to channels
    return min(count, math.ceil(keep / step) * step)


def _choose_removed_units(
    model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], amount: float, round_to: int
) -> tuple[set[int], list[dict[str, Any]]]:
    """The units to remove (lowest importance in each group) and a summary per group."""
    scores = _importance(model, graph)
    removed: set[int] = set()
    summary = []
    for group in groups:
        keep = _units_to_keep(group, amount, round_to)
        ranked = sorted(group.units, key=lambda unit: scores.get(unit, 0.0), reverse=True)
        removed.update(ranked[keep:])
        width = group.widths[0] if group.widths else 1
        summary.append({"layers": group.producers, "channels": [len(group.units) * width, keep * width]})
    return removed, summary


def _keep(graph: ChannelGraph, atoms: list[int], removed: set[int]) -> list[int]:
    return [i for i, atom in enumerate(atoms) if graph.atoms.find(atom) not in removed]


def _shrink(model: nn.Module, graph: ChannelGraph, removed: set[int]) -> None:
    """Cut every producer, consumer and channel-wise layer down to the units kept."""
    for name, atoms in graph.consumers.items():
        keep = _keep(graph, atoms, removed)
        if len(keep) < len(atoms):
            keep_inputs(model.get_submodule(name), keep)
    for name, atoms in graph.producers.items():
        keep = _keep(graph, atoms, removed)
        if len(keep) < len(atoms):
            keep_outputs(model.get_submodule(name), keep)
    for name, atoms in graph.channelwise.items():
        keep = _keep(graph, atoms, removed)
        if len(keep) < len(atoms):
            keep_channelwise(model.get_submodule(name), keep)


def _widths(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """Output channels of every convolution and Linear layer in the graph."""
    names = list(graph.producers) + [n for n in graph.channelwise if isinstance(model.get_submodule(n), PRUNABLE)]
    return {name: out_width(model.get_submodule(name)) for name in names}
