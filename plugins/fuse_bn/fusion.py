"""Fusing BatchNorm: fold every BatchNorm into the Conv/ConvTranspose/Linear layer that feeds it.

First, modules whose module rule has ``fuse`` (Ultralytics' ``Conv``, ``RepConv``, ...) are fused
as their library does, each proven on the inputs it received
(:func:`~optkit_plugins.fuse_bn.rules.fuse_library_modules`). Then pairs: a pair is fused only
when it is proven safe: the BatchNorm consumes exactly the layer's output, nothing else reads
that output, each module is registered and called once, and the BatchNorm normalizes the layer's
output channels. The proof comes from torch.fx graphs (the whole model, or scope by scope where
it does not trace) and from a dataflow probe on the example input, which also covers code no
graph reaches. A BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``) pairs
only through a module rule (``bn_reference``) whose claim holds on the input it received, and a
layer-like module with its own ``forward`` (a scaled conv) takes the role of the Conv only
through a module rule with ``fold_bn``, proven the same way. The model keeps its own classes: the
fused layer gets the folded weights and the BatchNorm becomes ``nn.Identity``, or the rule's
``bn_remainder`` (timm: its dropout and activation).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from optkit import ModuleRule, fold_bn_into_layer, replace_module
from optkit_plugins.fuse_bn.dataflow import DataflowRecord, probe_dataflow
from optkit_plugins.fuse_bn.folding import FOLDABLE_LAYERS, NORM_LAYERS, fold_problem
from optkit_plugins.fuse_bn.graph import GraphEvidence, find_graph_pairs, to_graph_module
from optkit_plugins.fuse_bn.rules import (
    PROOF_RTOL,
    LibraryFusion,
    ReceivedInputs,
    bn_rule,
    bn_rule_error,
    fold_bn_by_rule,
    fuse_library_modules,
    layer_rule,
    received_inputs,
)

__all__ = ["FusionResult", "fuse_batchnorm"]

log = logging.getLogger(__name__)


@dataclass
class FusionResult:
    """The fused model and what was done.

    Attributes:
        model: the fused model (the input itself when fused in place).
        method: ``"fx"`` when the whole model traced, else ``"fallback"`` (scoped graphs + probe).
        fused: one entry per fused pair (layer, bn, kind, evidence), and per module fused by its
            rule (layer = the module, bn = the BatchNorms it held, kind, rule, evidence).
        skipped: one entry per pair (or module with a ``fuse`` rule) found but not fused, with its reason.
        unpaired: BatchNorms no layer feeds directly, with what feeds them.
        untraceable: modules that did not trace, with the error.
        notes: anything else a reader of the report should know.
    """

    model: nn.Module
    method: str
    fused: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    unpaired: dict[str, str] = field(default_factory=dict)
    untraceable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    batchnorms_folded: int = 0

    def details(self) -> dict[str, Any]:
        """A JSON-serializable summary for the run report."""
        return {
            "method": self.method,
            "pairs_fused": len(self.fused),
            "pairs_skipped": len(self.skipped),
            "batchnorms_folded": self.batchnorms_folded,
            "fused": self.fused,
            "skipped": self.skipped,
            "unpaired_bn": self.unpaired,
            "untraceable": self.untraceable,
            "notes": self.notes,
        }


def _registrations(model: nn.Module) -> tuple[dict[str, nn.Module], Counter[int]]:
    modules = dict(model.named_modules(remove_duplicate=False))
    return modules, Counter(id(m) for m in modules.values())


def _shape_problem(layer: nn.Module, bn: nn.Module, output_dim: int | None, by_rule: bool) -> str | None:
    """Why the BatchNorm may not normalize the layer's output channels, or ``None`` if it does."""
    if by_rule:  # a rule's layer: the fold is proven numerically on the inputs it received
        return (
            None if output_dim is not None else "the layer did not run on the example input, so its module rule's fold_bn cannot be checked"
        )
    expected = 2 if isinstance(layer, nn.Linear) else cast(torch.Tensor, layer.weight).dim()
    if output_dim is None:
        # BatchNorm2d/3d refuse anything but 4-D/5-D input: a Conv2d/3d output they accept is batched.
        for bn_class, dims in ((nn.BatchNorm2d, 4), (nn.BatchNorm3d, 5)):
            if isinstance(bn, bn_class) and type(bn)._check_input_dim is bn_class._check_input_dim and expected == dims:
                return None
        return "not run on the example input, so its output shape (channels in dim 1?) cannot be checked"
    if output_dim != expected:
        return f"the layer's output has {output_dim} dims, not {expected}: BatchNorm normalizes dim 1, which is not its channel axis"
    return None


def _pair_problem(
    layer_name: str,
    bn_name: str,
    modules: dict[str, nn.Module],
    registered: Counter[int],
    graphs: GraphEvidence,
    record: DataflowRecord,
    from_graph: bool,
    rule: ModuleRule | None,
    rule_of_layer: ModuleRule | None,
    rules: Mapping[str, ModuleRule],
) -> str | None:
    layer, bn = modules[layer_name], modules[bn_name]
    problem = fold_problem(layer, bn, rule, rule_of_layer)
    if problem:
        return problem
    for name, module in ((layer_name, layer), (bn_name, bn)):
        if registered[id(module)] > 1:
            return f"{name} is registered under {registered[id(module)]} names (a module used twice)"
        if graphs.calls[name] > 1:
            return f"{name} is called {graphs.calls[name]} times in the traced graph"
    for name in (layer_name, bn_name):
        if record.calls[name] > 1:
            return f"{name} was called {record.calls[name]} times on the example input"
    if from_graph and record.calls[layer_name] != record.calls[bn_name]:
        return f"{layer_name} and {bn_name} were not called together on the example input (a call outside the traced graph)"
    if record.calls[bn_name] and record.bn_source.get(bn_name) != layer_name:
        return f"on the example input {bn_name}'s input was not {layer_name}'s output"
    if record.foreign_uses.get(layer_name):
        uses = ", ".join(sorted(set(record.foreign_uses[layer_name])))
        return f"{layer_name}'s output is also read by {uses} on the example input"
    readers = [b for b, source in record.bn_source.items() if source == layer_name]
    if len(readers) > 1:
        return f"{layer_name}'s output feeds several BatchNorms: {', '.join(sorted(readers))}"
    by_rule = rule_of_layer is not None
    problem = _shape_problem(layer, bn, record.output_dims.get(layer_name), by_rule)
    if problem or rule is None:
        return problem
    x = record.bn_inputs.get(bn_name)
    if x is None:
        return f"{bn_name} did not run on the example input, so module rule {rule.class_path} cannot be checked on it"
    error = bn_rule_error(bn, rule, x, rules)
    if error > PROOF_RTOL:
        return f"module rule {rule.class_path} does not match {type(bn).__name__}'s output on the example input (error {error:.2e})"
    return None


def _owned_problem(layer_name: str, bn_name: str, library: LibraryFusion) -> str | None:
    """Why a pair inside a module with a ``fuse`` rule is left to that rule, ``""`` when the rule
    fused the module that holds the BatchNorm (its entry lists it), ``None`` when the pair is not
    inside one.

    The module itself may be the pair's layer (a rule with ``fuse`` and ``fold_bn``): a BatchNorm
    after it is not inside it.
    """
    inside = {}
    for name, role in ((bn_name, "BatchNorm"), (layer_name, "layer")):
        owner = library.owner_of(name)
        if owner is not None and not (name == owner and role == "layer"):
            inside[role] = (name, owner)
    if not inside:
        return None
    name, owner = inside.get("BatchNorm") or inside["layer"]
    fused = owner in {e["layer"] for e in library.fused}
    if fused and "BatchNorm" in inside:
        return ""
    if len(inside) == 2 and inside["layer"][1] == owner:
        what = "inside"  # the whole pair
    else:
        role = "BatchNorm" if "BatchNorm" in inside else "layer"
        what = f"the {role} `{name}` {'is' if name == owner else 'is inside'}"
    return f"{what} `{owner}` ({library.owned[owner]}), which its module rule {'fused' if fused else 'fuses'} as a whole"


def _unseen_reason(name: str, library: LibraryFusion, record: DataflowRecord) -> str:
    """Why a BatchNorm that no pair and no graph names was left alone."""
    owner = library.owner_of(name)
    if owner is not None:
        verb = "fused" if owner in {e["layer"] for e in library.fused} else "fuses"
        return f"inside `{owner}` ({library.owned[owner]}), which its module rule {verb} as a whole"
    if record.calls[name]:
        return f"it ran {record.calls[name]} time(s) on the example input, but no traced graph or probe paired it with a layer"
    return "no traced graph reaches it and it did not run on the example input"


def _fold_pair(
    model: nn.Module,
    modules: dict[str, nn.Module],
    layer_name: str,
    bn_name: str,
    evidence: str,
    rule: ModuleRule | None,
    rule_of_layer: ModuleRule | None,
    received: ReceivedInputs,
    rules: Mapping[str, ModuleRule],
    result: FusionResult,
) -> None:
    """Fold one accepted pair into ``model`` (a layer rule's fold only once proven) and record it in ``result``."""
    layer, bn = modules[layer_name], modules[bn_name]
    entry = {"layer": layer_name, "bn": bn_name, "kind": f"{type(layer).__name__}+{type(bn).__name__}", "evidence": evidence}
    if rule_of_layer is not None:
        # An accepted pair's layer ran on the example input (_shape_problem), so its calls are known.
        folded, error = fold_bn_by_rule(layer, bn, rule_of_layer, received[layer_name], rules)
        if error > PROOF_RTOL:
            reason = f"module rule {rule_of_layer.class_path}: fold_bn differs from {bn_name}({layer_name}(x)) by {error:.2e} on the example input"
            result.skipped.append({"layer": layer_name, "bn": bn_name, "reason": reason})
            return
        replace_module(model, layer_name, folded)
        entry["evidence"] += (
            f"; module rule {rule_of_layer.class_path}: fold_bn checked on the example input (largest difference {error:.1e})"
        )
        entry["rule"] = rule_of_layer.class_path
    else:
        fold_bn_into_layer(layer, bn)
    remainder: nn.Module = nn.Identity()
    if rule is not None:
        # bn_rule picks rules with bn_reference, and ModuleRule requires bn_remainder with it.
        assert rule.bn_remainder is not None
        remainder = rule.bn_remainder(bn)
    replace_module(model, bn_name, remainder)
    if rule is not None:
        entry["evidence"] += f"; module rule {rule.class_path} checked on the example input"
        entry["rule"] = rule.class_path
    result.fused.append(entry)
    result.batchnorms_folded += 1


def fuse_batchnorm(
    model: nn.Module,
    example_input: Any,
    *,
    inplace: bool = False,
    probe: bool = True,
    graph_module: bool = False,
    rules: Mapping[str, ModuleRule] | None = None,
) -> FusionResult:
    """Fold every BatchNorm that provably normalizes a Conv/ConvTranspose/Linear output into it.

    Args:
        model: the model. A model in training mode is never changed: it is copied and put
            in eval mode first, whatever ``inplace`` says.
        example_input: a tensor (or tuple of positional arguments, or :class:`~optkit.inputs.ExampleInputs`) the model runs on; the
            dataflow probe runs it once to check call counts, shapes and hidden readers.
        inplace: change ``model`` itself (when in eval mode) instead of a copy.
        probe: also fuse pairs inside code that does not trace, when the probe shows the
            BatchNorm reads exactly the layer's output and nothing else does; with ``False``
            only pairs a traced graph proves are fused (the probe still checks them).
        graph_module: return one flat ``torch.fx.GraphModule`` (as torch.fx's fuser does) when
            the whole model traces: no Python call per container, but the model's own classes
            are gone. Otherwise the model keeps its classes and each BatchNorm becomes ``nn.Identity``.
        rules: module rules by class path (a pass's ``ctx.module_rules``; the standard ones are
            ``optkit.host.facade.Host().rule_table()``). Without them, modules with their own ``forward``
            are left alone.

    Returns:
        A :class:`FusionResult`; ``result.model`` is the fused model, in eval mode.

    Example:
        >>> fused = fuse_batchnorm(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)).model
    """
    if model.training:
        log.info("model is in training mode: fusing an eval copy, the model itself is left unchanged")
    if model.training or not inplace:
        model = copy.deepcopy(model).eval()
    rules = rules or {}
    library = fuse_library_modules(model, example_input, rules)

    def is_norm(module: nn.Module) -> bool:
        return isinstance(module, NORM_LAYERS) or bn_rule(module, rules) is not None

    def is_layer(module: nn.Module) -> bool:
        return isinstance(module, FOLDABLE_LAYERS) or layer_rule(module, rules) is not None

    graphs = find_graph_pairs(model, is_norm, is_layer)
    modules, registered = _registrations(model)
    described = {name: rule for name, m in modules.items() if (rule := bn_rule(m, rules)) is not None}
    folding = {name: rule for name, m in modules.items() if (rule := layer_rule(m, rules)) is not None}
    record = probe_dataflow(model, example_input, is_norm, keep_inputs=frozenset(described), is_layer=is_layer)
    result = FusionResult(model, "fx" if graphs.whole_model_traced else "fallback", untraceable=graphs.untraceable)
    result.fused, result.skipped, result.batchnorms_folded = library.fused, library.skipped, library.batchnorms_folded

    candidates = [(p.layer, p.bn, f"fx graph of {p.scope or 'the model'}", True) for p in graphs.pairs]
    in_graph = {p.bn for p in graphs.pairs} | set(graphs.bn_inputs)
    for bn_name, source in sorted(record.bn_source.items()):
        if bn_name in in_graph:
            continue
        if source is None:
            result.unpaired[bn_name] = "on the example input its input was not the direct output of a Conv/Linear"
        elif not probe:
            result.skipped.append({"layer": source, "bn": bn_name, "reason": "only the dataflow probe sees this pair, and probe is off"})
        else:
            candidates.append((source, bn_name, "dataflow probe on the example input", False))
    result.unpaired.update(graphs.bn_inputs)

    accepted = []
    for layer_name, bn_name, evidence, from_graph in candidates:
        owned = _owned_problem(layer_name, bn_name, library)
        if owned == "":
            continue  # inside a module its rule fused: that module's entry lists the BatchNorms it held
        problem = owned or _pair_problem(
            layer_name, bn_name, modules, registered, graphs, record, from_graph, described.get(bn_name), folding.get(layer_name), rules
        )
        if problem:
            result.skipped.append({"layer": layer_name, "bn": bn_name, "reason": problem})
        else:
            accepted.append((layer_name, bn_name, evidence))
    received = received_inputs(model, example_input, {n: modules[n] for n, _, _ in accepted if n in folding}) if folding else {}
    for layer_name, bn_name, evidence in accepted:
        _fold_pair(model, modules, layer_name, bn_name, evidence, described.get(bn_name), folding.get(layer_name), received, rules, result)

    seen = {e["bn"] for e in result.skipped} | {bn for e in result.fused for bn in e["bn"].split(", ")} | set(result.unpaired)
    for name, module in modules.items():
        if is_norm(module) and name not in seen:
            result.unpaired[name] = _unseen_reason(name, library, record)
    if graph_module:
        if graphs.whole_model_traced:
            result.model = to_graph_module(model)
        else:
            result.notes.append("graph_module: the model does not trace as a whole, so it keeps its modules")
    log.info("fuse_bn (%s): %d pairs fused, %d skipped", result.method, len(result.fused), len(result.skipped))
    return result
