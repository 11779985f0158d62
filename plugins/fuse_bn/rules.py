"""Fusion that module rules describe (:class:`optkit.ModuleRule`), each claim proven on the
inputs the module received.

- A module whose rule has ``fuse`` (Ultralytics' ``Conv``, ``RepConv``, ...) is fused as its
  library does, on a copy; the copy replaces the module only when its outputs equal the module's
  on every input the module received on the example run. Modules are taken outermost first, and
  a module with a ``fuse`` rule is fused (or left alone) as a whole: its children are not
  fused on their own, which would leave it in a state its library does not know.
- A BatchNorm-like module whose rule has ``bn_reference`` (timm's ``BatchNormAct2d``) folds like
  a BatchNorm only when ``bn_reference(module, x)`` equals ``module(x)`` on the input it received
  (see :func:`bn_rule_error`); it is then replaced by ``bn_remainder(module)``.
- A layer-like module whose rule has ``fold_bn`` (a conv times a learned scale) takes the
  BatchNorm that reads its output like a Conv does, only when a copy with the BatchNorm folded
  in computes ``bn(module(x))`` on every input the module received (see :func:`fold_bn_by_rule`).

Rule callables are plugin code: they run under :func:`optkit.models.call_rule`, so what they
raise names the rule and its plugin.

"Equal" means a largest difference of at most :data:`PROOF_RTOL` times the largest output
magnitude (at least 1): what folding in float64 and casting back leaves.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from optkit import ExampleInputs, ModuleRule, call_rule, find_rule, replace_module

__all__ = [
    "PROOF_RTOL",
    "LibraryFusion",
    "ReceivedInputs",
    "bn_rule",
    "bn_rule_error",
    "fold_bn_by_rule",
    "fuse_library_modules",
    "layer_rule",
    "received_inputs",
    "scaled_error",
]

log = logging.getLogger(__name__)

#: How close a rule's claim must come to the module's own output, relative to its largest magnitude.
PROOF_RTOL = 1e-5
#: Calls per module whose inputs are kept for the proof.
_CALLS_KEPT = 2


def scaled_error(reference: Any, candidate: Any) -> float:
    """``max|reference - candidate| / max(1, max|reference|)`` over every tensor of two outputs;
    ``inf`` when their structure or shapes differ."""
    a = [t for t in tree_leaves(reference) if isinstance(t, torch.Tensor)]
    b = [t for t in tree_leaves(candidate) if isinstance(t, torch.Tensor)]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return float("inf")
    error = 0.0
    for x, y in zip(a, b, strict=True):
        if x.numel():
            x, y = x.detach().double(), y.detach().double()
            error = max(error, float((x - y).abs().max()) / max(1.0, float(x.abs().max())))
    return error


def bn_rule(module: nn.Module, rules: Mapping[str, ModuleRule]) -> ModuleRule | None:
    """The rule that describes ``module`` as a BatchNorm with extras (``bn_reference``), or ``None``."""
    rule = find_rule(module, rules)
    return rule if rule is not None and rule.bn_reference is not None else None


def layer_rule(module: nn.Module, rules: Mapping[str, ModuleRule]) -> ModuleRule | None:
    """The rule that folds a following BatchNorm into ``module`` (``fold_bn``), or ``None``."""
    rule = find_rule(module, rules)
    return rule if rule is not None and rule.fold_bn is not None else None


@torch.no_grad()
def bn_rule_error(module: nn.Module, rule: ModuleRule, x: torch.Tensor, rules: Mapping[str, ModuleRule] | None = None) -> float:
    """How far ``rule.bn_reference(module, x)`` is from ``module(x)`` (see :func:`scaled_error`)."""
    return scaled_error(module(x.clone()), call_rule(rules or {}, rule, "bn_reference", module, x.clone()))


#: The calls each module received on one run: ``(args, kwargs)`` per call, the first few.
ReceivedInputs = dict[str, list[tuple[tuple, dict]]]


@torch.no_grad()
def fold_bn_by_rule(
    layer: nn.Module, bn: nn.Module, rule: ModuleRule, calls: list[tuple[tuple, dict]], rules: Mapping[str, ModuleRule]
) -> tuple[nn.Module, float]:
    """A copy of ``layer`` with ``bn`` folded in by ``rule.fold_bn``, and how far it is from ``bn(layer(x))``.

    Args:
        layer: the module the rule describes (unchanged).
        bn: the eval BatchNorm that reads ``layer``'s output.
        rule: the rule with ``fold_bn``.
        calls: the inputs ``layer`` received on the example run (see :func:`received_inputs`).
        rules: the table ``rule`` came from (for messages naming its plugin).

    Returns:
        ``(folded copy, error)``; the error is the largest :func:`scaled_error` over ``calls``.
    """
    folded = copy.deepcopy(layer)
    call_rule(rules, rule, "fold_bn", folded, bn)
    error = max(scaled_error(bn(layer(*args, **kwargs)), folded(*args, **kwargs)) for args, kwargs in calls)
    return folded, error


@dataclass
class LibraryFusion:
    """What :func:`fuse_library_modules` did.

    Attributes:
        fused: one entry per module fused: ``layer`` (the module), ``bn`` (the BatchNorms folded,
            comma-separated), ``kind``, ``rule`` and ``evidence``.
        skipped: modules with a ``fuse`` rule left alone, with the reason.
        batchnorms_folded: how many BatchNorm modules the fused modules held.
        owned: every module with a ``fuse`` rule, fused or not, by name -> its class name: what
            is inside belongs to the rule, and no pair inside is fused on its own.
    """

    fused: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    batchnorms_folded: int = 0
    owned: dict[str, str] = field(default_factory=dict)

    def owner_of(self, name: str) -> str | None:
        """The module with a ``fuse`` rule that ``name`` is inside (or is), or ``None``."""
        return next((owner for owner in self.owned if name == owner or name.startswith(owner + ".")), None)


def _candidates(model: nn.Module, rules: Mapping[str, ModuleRule], result: LibraryFusion) -> dict[str, tuple[nn.Module, ModuleRule]]:
    """Modules with a ``fuse`` rule, outermost first; a module's subtree is never searched again."""
    found: dict[str, tuple[nn.Module, ModuleRule]] = {}
    taken: list[str] = []
    registered = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        rule = find_rule(module, rules)
        if rule is None or rule.fuse is None:
            continue
        taken.append(name)
        result.owned[name] = type(module).__name__
        problem = call_rule(rules, rule, "check", module) if rule.check is not None else None
        if problem is None and registered[id(module)] > 1:
            problem = f"it is registered under {registered[id(module)]} names (a module used twice)"
        if problem is None and any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
            problem = "it has forward hooks, which would observe the change"
        if problem is None and not name:
            problem = "it is the model itself"
        if problem:
            result.skipped.append({"layer": name, "bn": "", "reason": f"{type(module).__name__}: {problem}"})
        else:
            found[name] = (module, rule)
    return found


@torch.no_grad()
def received_inputs(model: nn.Module, example_input: Any, modules: dict[str, nn.Module]) -> ReceivedInputs:
    """The arguments each of ``modules`` (name -> module) received on one run of the model (the first calls)."""
    received: ReceivedInputs = defaultdict(list)

    def keep(name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if len(received[name]) < _CALLS_KEPT:
                clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
                received[name].append((tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()}))

        return hook

    handles = [m.register_forward_pre_hook(keep(n), with_kwargs=True) for n, m in modules.items()]
    try:
        ExampleInputs.of(example_input).call(model)
    finally:
        for handle in handles:
            handle.remove()
    return received


@torch.no_grad()
def fuse_library_modules(model: nn.Module, example_input: Any, rules: Mapping[str, ModuleRule]) -> LibraryFusion:
    """Fuse, in place, every module of ``model`` whose rule has ``fuse``, as its library does.

    Args:
        model: an eval model, changed in place (fused modules are replaced by fused copies).
        example_input: a tensor, a tuple of positional arguments or :class:`~optkit.inputs.ExampleInputs`; the model runs on it once.
        rules: module rules by class path (``ctx.module_rules``).

    Returns:
        A :class:`LibraryFusion`.
    """
    result = LibraryFusion()
    candidates = _candidates(model, rules, result)
    if not candidates:
        return result
    received = received_inputs(model, example_input, {name: m for name, (m, _) in candidates.items()})
    for name, (module, rule) in candidates.items():
        calls = received.get(name)
        if not calls:
            result.skipped.append(
                {
                    "layer": name,
                    "bn": "",
                    "reason": f"{type(module).__name__} did not run on the example input, so its fused form cannot be checked",
                }
            )
            continue
        fused = copy.deepcopy(module)
        call_rule(rules, rule, "fuse", fused)
        error = max(scaled_error(module(*args, **kwargs), fused(*args, **kwargs)) for args, kwargs in calls)
        if error > PROOF_RTOL:
            result.skipped.append(
                {
                    "layer": name,
                    "bn": "",
                    "reason": f"the fused form of {type(module).__name__} (module rule {rule.class_path}) differs from it by {error:.2e} on the example input",
                }
            )
            continue
        folded = [f"{name}.{sub}" for sub, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        replace_module(model, name, fused)
        result.batchnorms_folded += len(folded)
        result.fused.append(
            {
                "layer": name,
                "bn": ", ".join(folded),
                "kind": type(module).__name__,
                "rule": rule.class_path,
                "evidence": f"module rule {rule.class_path}: fused as its library does; outputs equal on the example input "
                f"(largest difference {error:.1e} of the largest output)",
            }
        )
    log.debug("fused %d modules by their rules, skipped %d", len(result.fused), len(result.skipped))
    return result
