"""The ``prune_l1`` pass: L1-magnitude pruning, unstructured (zeros) or structured (channels).

``mode: unstructured`` zeroes the smallest weights of the selected convolution and Linear
layers through ``torch.nn.utils.prune`` and makes it permanent: the result has plain ``weight``
tensors with zeros in them, no masks and no hooks. Dense kernels multiply those zeros like any
other number, so this alone buys no speed; the report shows the latency that was measured.

``mode: channels`` removes whole output channels with the smallest L1 norm, together with
everything that depends on them (see :mod:`optkit_plugins.channel_dependency`), and returns a
smaller dense model: fewer parameters, fewer MACs, lower latency, the same output shape.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, PositiveInt, model_validator
from torch import nn
from torch.nn.utils import prune

from optkit import Pass, PassContext, hookimpl
from optkit.classifier_head import ClassifierNotFoundError, find_classifier
from optkit.errors import StageError
from optkit.measure import flatten_outputs
from optkit_plugins.channel_dependency import ChannelGraph, ChannelGroup, UntraceableModelError, build_channel_graph
from optkit_plugins.channel_surgery import keep_channelwise, keep_inputs, keep_outputs

__all__ = ["PruneL1", "optkit_register_passes"]

log = logging.getLogger(__name__)

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


class PruneL1(Pass):
    """L1-magnitude pruning of convolution and Linear layers (weights or whole channels)."""

    name = "prune_l1"
    summary = "L1-magnitude pruning: unstructured zeros, or whole channels for a smaller, faster model."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``prune_l1``."""

        model_config = ConfigDict(extra="forbid")

        mode: Literal["unstructured", "channels"] = Field(
            "unstructured", description="unstructured: zero single weights; channels: remove whole output channels."
        )
        amount: float = Field(
            0.3, ge=0.0, lt=1.0,
            description="Share to remove: of the selected weights (unstructured), or of each group's channels (channels).",
        )
        scope: Literal["global", "layer"] | None = Field(
            None,
            description="unstructured only: global (one threshold over all selected layers, the default) or layer "
            "(the same share in each). Channels are always removed per group (layer).",
        )
        include: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns of layer names to prune.")
        exclude: list[str] = Field(default_factory=list, description="Glob patterns of layer names to leave alone.")
        prune_classifier: bool = Field(False, description="Also prune the final classifier (left alone by default).")
        round_to: PositiveInt = Field(1, description="channels only: keep a multiple of this many channels per group (e.g. 8).")

        @model_validator(mode="after")
        def _mode_options(self) -> PruneL1.Options:
            if self.mode == "channels" and self.scope == "global":
                raise ValueError("scope: global is for mode: unstructured; mode: channels removes `amount` of every channel group (scope: layer)")
            if self.mode == "unstructured" and self.round_to != 1:
                raise ValueError("round_to is for mode: channels; unstructured pruning removes single weights")
            return self

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Prune a copy of ``model``; see the module docstring for the two modes.

        Args:
            model: the model (left unchanged).
            ctx: the stage context; ``details`` receives sparsity or channels per layer.

        Returns:
            The pruned copy.
        """
        options = self.options
        model = copy.deepcopy(model).eval()
        selected = _select_layers(model, options, ctx.details)
        if options.mode == "unstructured":
            _prune_unstructured(selected, options, ctx.details)
        else:
            _prune_channels(model, selected, options, ctx)
        return model


def _select_layers(model: nn.Module, options: PruneL1.Options, details: dict[str, Any]) -> dict[str, nn.Module]:
    """The convolution and Linear layers that ``include``/``exclude`` and the classifier rule allow.

    Raises:
        StageError: a pattern matches no such layer, or nothing is left to prune.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    for option in ("include", "exclude"):
        for pattern in getattr(options, option):
            if pattern != "*" and not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
                examples = ", ".join(list(layers)[:4])
                raise StageError(f"prune_l1: {option} pattern {pattern!r} matches no convolution or Linear layer (they are named like {examples})")
    selected = {
        name: m for name, m in layers.items()
        if any(fnmatch.fnmatchcase(name, p) for p in options.include) and not any(fnmatch.fnmatchcase(name, p) for p in options.exclude)
    }
    if not options.prune_classifier:
        try:
            head, _ = find_classifier(model)
        except ClassifierNotFoundError as exc:
            log.info("prune_l1: no classifier found, none excluded (%s)", exc)
            head = None
        details["classifier_left_alone"] = head
        selected.pop(head, None)
    if not selected:
        raise StageError("prune_l1: no convolution or Linear layer is left to prune; check include, exclude and prune_classifier")
    return selected


# -- unstructured ------------------------------------------------------------------------------
def _prune_unstructured(selected: dict[str, nn.Module], options: PruneL1.Options, details: dict[str, Any]) -> None:
    """Zero the smallest-magnitude weights of ``selected`` in place, permanently."""
    scope = options.scope or "global"
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in selected.values()], pruning_method=prune.L1Unstructured, amount=options.amount)
    else:
        for module in selected.values():
            prune.l1_unstructured(module, "weight", amount=options.amount)
    for module in selected.values():
        prune.remove(module, "weight")  # weight = weight_orig * mask, made a plain parameter again
    zeros = {name: int((m.weight == 0).sum()) for name, m in selected.items()}
    total = sum(m.weight.numel() for m in selected.values())
    details.update(
        mode="unstructured",
        scope=scope,
        amount=options.amount,
        layers_pruned=len(selected),
        weights=total,
        zero_weights=sum(zeros.values()),
        sparsity=sum(zeros.values()) / total,
        layer_sparsity={name: zeros[name] / m.weight.numel() for name, m in selected.items()},
        note="zeros are stored and multiplied like any weight: dense kernels run no faster; the latency shown is measured",
    )


# -- channels ----------------------------------------------------------------------------------
def _prune_channels(model: nn.Module, selected: dict[str, nn.Module], options: PruneL1.Options, ctx: PassContext) -> None:
    """Remove whole channels of ``model`` in place; ``ctx.details`` gets channels per layer."""
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
    removed, group_details = _choose_removed_units(model, graph, groups, options)
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
        amount=options.amount,
        round_to=options.round_to,
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
    layers = list(graph.producers.items()) + [(n, a) for n, a in graph.channelwise.items() if isinstance(model.get_submodule(n), _PRUNABLE)]
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
    model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], options: PruneL1.Options
) -> tuple[set[int], list[dict[str, Any]]]:
    """The units to remove (lowest importance in each group) and a summary per group."""
    scores = _importance(model, graph)
    removed: set[int] = set()
    summary = []
    for group in groups:
        keep = _units_to_keep(group, options.amount, options.round_to)
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
    names = list(graph.producers) + [n for n in graph.channelwise if isinstance(model.get_submodule(n), _PRUNABLE)]
    widths = {}
    for name in names:
        module = model.get_submodule(name)
        widths[name] = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    return widths


@hookimpl
def optkit_register_passes(register):
    register(PruneL1)
