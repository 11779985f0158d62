"""MACs through thop plus an aten-level counter for functional code, on a copy of the model.

thop counts modules by their type (convolution, linear, ...) through forward hooks, so matrix
products done by functions (attention in ``nn.MultiheadAttention``, torchvision's
``ShiftedWindowAttention``, ``F.scaled_dot_product_attention``) are invisible to it. The same
forward pass therefore also runs under :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts convolutions and matrix products per module at the aten level. The total is thop's count
for the modules thop has a rule for, plus the aten count of everything that ran outside them.
Both follow one convention (:data:`optkit.measure.mac_rules.UNIT`), the one behind torchvision's
published ``_ops``.

The count runs on :func:`~optkit.measure.probe.meta_copy` (no weight memory, no arithmetic);
a model that cannot run on the meta device (data-dependent control flow, tensors kept outside
parameters and buffers) is counted on an ordinary deep copy instead. The measured model is never
touched: thop's buffers and hooks live and die with the copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit.measure.mac_rules import UNIT, has_rule, rules_for
from optkit.measure.probe import meta_copy

__all__ = ["MacsProfile", "profile_macs", "count_macs"]

log = logging.getLogger(__name__)


@dataclass
class MacsProfile:
    """Where the MACs of one forward pass are.

    Attributes:
        macs: the total (batch included).
        module_macs: what thop's module rules counted.
        functional_macs: what the aten counter found outside those modules (attention, ...).
        per_module: module name (``""`` for the root) -> ``{"type", "macs", "counted_by"}`` for every
            module that contributes; ``counted_by`` is ``thop`` or ``aten``.
        uncounted: module types (qualified names) that ran with no rule and no counted op inside,
            with how many of them ran; their cost, if any, is not in ``macs``.
        probe: ``meta`` or ``copy``: what the count ran on.
    """

    macs: int
    module_macs: int
    functional_macs: int
    per_module: dict[str, dict[str, Any]] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)
    probe: str = "meta"

    def metrics(self) -> dict[str, Any]:
        """The metric keys of a stage: ``macs``, ``gmacs``, ``gflops``, ``unit``, ``uncounted``, ``macs_by``."""
        return {
            "macs": self.macs,
            "gmacs": self.macs / 1e9,
            "gflops": 2 * self.macs / 1e9,
            "unit": UNIT,
            "macs_by": {"thop_modules": self.module_macs, "aten_functional": self.functional_macs},
            "uncounted": dict(self.uncounted),
        }


def count_macs(model: nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """MACs and GFLOPs (= 2 × GMACs) of one forward pass of ``model`` on ``inputs``.

    Args:
        model: the module to count; it is not changed (see :func:`profile_macs`).
        inputs: one input batch; MACs scale with its batch size.

    Returns:
        ``macs``, ``gmacs``, ``gflops``, ``unit``, ``macs_by`` and ``uncounted``
        (see :meth:`MacsProfile.metrics`).

    Example:
        >>> count_macs(nn.Linear(8, 4), torch.zeros(2, 8))["macs"]
        64
    """
    return profile_macs(model, inputs).metrics()


def profile_macs(model: nn.Module, inputs: torch.Tensor) -> MacsProfile:
    """Count the MACs of ``model(inputs)`` per module, on a copy (see the module docstring).

    Raises:
        Whatever the model's forward raises on an ordinary copy (the model itself stays untouched).
    """
    try:
        return _profile(meta_copy(model), inputs.to("meta"), probe="meta")
    except (RuntimeError, NotImplementedError) as exc:
        # Ops without a meta kernel raise NotImplementedError; data-dependent code (.item(),
        # tensors kept outside parameters and buffers) raises RuntimeError. A real copy works.
        log.debug("meta-device count of %s failed (%s); counting on a copy", type(model).__name__, exc)
    return _profile(copy.deepcopy(model), inputs, probe="copy")


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """``nn.MultiheadAttention``'s fused inference path is one opaque aten op; the regular path
    is made of matrix products the counter sees. The global flag is restored afterwards."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _profile(model: nn.Module, inputs: torch.Tensor, probe: str) -> MacsProfile:
    """Run ``model`` (a throwaway copy) once under thop and the aten counter; combine per module."""
    from thop import profile
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    rules = rules_for(model)
    ran: set[int] = set()
    for module in model.modules():
        if not has_rule(module, rules) and next(module.children(), None) is None:
            module.register_forward_hook(lambda m, args, out: ran.add(id(m)))
    with _mha_fastpath_disabled(), FlopCounterMode(display=False, depth=None) as counter:
        thop_total, _, thop_tree = profile(model, inputs=(inputs,), custom_ops=rules, verbose=False, ret_layer_info=True)
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate; its modules are named
    # "<RootType>.<child>.<grandchild>" (torch.utils.module_tracker.ModuleTracker).
    aten = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    combined = _Combiner(aten, ran, rules)
    root = type(model).__name__
    if has_rule(model, rules):
        combined.add_thop("", model, int(thop_total))  # a bare layer: thop's total is its own count
    else:
        combined.walk(model, "", root, thop_tree)
    return MacsProfile(
        macs=combined.module_macs + combined.functional_macs,
        module_macs=combined.module_macs,
        functional_macs=combined.functional_macs,
        per_module=combined.per_module,
        uncounted=dict(sorted(combined.uncounted.items())),
        probe=probe,
    )


def _qualname(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


class _Combiner:
    """Walks the module tree like thop's ``dfs_count``: a module with a rule is counted by thop;
    the aten ops of any other module that ran outside its children are counted as functional."""

    def __init__(self, aten: dict[str, int], ran: set[int], rules: dict[type[nn.Module], Any]):
        self.aten, self.ran, self.rules = aten, ran, rules
        self.per_module: dict[str, dict[str, Any]] = {}
        self.uncounted: dict[str, int] = {}
        self.module_macs = 0
        self.functional_macs = 0
        self._seen: set[int] = set()

    def add_thop(self, path: str, module: nn.Module, macs: int) -> None:
        self.module_macs += macs
        if macs:
            self.per_module[path] = {"type": type(module).__name__, "macs": macs, "counted_by": "thop"}

    def walk(self, module: nn.Module, path: str, tracked: str, thop_tree: dict[str, Any]) -> None:
        inside_children = 0
        for name, child in module.named_children():
            if id(child) in self._seen:
                continue  # a module shared by two parents is counted once, where thop would count it twice
            self._seen.add(id(child))
            child_path = f"{path}.{name}" if path else name
            child_tracked = f"{tracked}.{name}"
            thop_macs, _, child_tree = thop_tree.get(name, (0.0, 0.0, {}))
            if has_rule(child, self.rules):
                self.add_thop(child_path, child, int(thop_macs))
            else:
                self.walk(child, child_path, child_tracked, child_tree)
            inside_children += self.aten.get(child_tracked, 0)
        own = self.aten.get(tracked, 0) - inside_children
        if own:
            self.functional_macs += own
            self.per_module[path] = {"type": type(module).__name__, "macs": own, "counted_by": "aten"}
        elif id(module) in self.ran:
            self.uncounted[_qualname(module)] = self.uncounted.get(_qualname(module), 0) + 1
