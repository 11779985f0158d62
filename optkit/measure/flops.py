"""MACs through thop's counting rules plus an aten-level counter for functional code, on a copy.

thop's rules count modules by their type (convolution, linear, ...), so matrix products done by
functions (attention in ``nn.MultiheadAttention``, torchvision's ``ShiftedWindowAttention``,
``F.scaled_dot_product_attention``) are invisible to them. The forward pass therefore runs
under :class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix
products at the aten level, while forward hooks on every module (each module once, however
many parents it has) attribute the aten count to the module that ran it: a module with a rule
is counted by its rule, everything else by the aten ops it ran outside its children. Both follow
one convention (:data:`optkit.measure.mac_rules.UNIT`), the one behind torchvision's published
``_ops``. The rules write into a stand-in, never into the module: a model with its own
``total_ops`` attribute is counted like any other.

The rules optkit takes from thop are its convolution, linear and recurrent formulas
(:data:`~optkit.measure.mac_rules.THOP_COUNTED`), the same in the Lyken17 ``thop`` and in
Ultralytics' ``ultralytics-thop``, which install the same ``thop/`` folder; ``thop.profile``, where
they differ (containers, attention and functional code counted, another signature), is never
called. So counts are the same whichever owns the folder.

Per module (:attr:`MacsProfile.layers`, ``optkit info -v``) every module's own count is >= 0, a
container's total is the sum of its children's plus its own code, the root's is the total, and a
container that is iterated rather than called (``for m in self.blocks``) shows its children's sum.

The count runs on :func:`~optkit.measure.probe.meta_copy` (no weight memory, no arithmetic);
a model that cannot run on the meta device (data-dependent control flow, tensors kept outside
parameters and buffers, a forward that refuses ``meta``) is counted on an ordinary deep copy
instead. The measured model is never touched: hooks live and die with the copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.measure.mac_rules import UNIT, has_rule, module_rule_macs, rules_for
from optkit.measure.probe import copy_memo, meta_copy

if TYPE_CHECKING:
    from optkit.models.rules import ModuleRule

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
            module that contributes; ``counted_by`` is ``thop``, ``module rule`` (a plugin's
            :class:`optkit.ModuleRule`) or ``aten``. They add up to ``macs``.
        layers: one row per module with MACs, in ``named_modules()`` order: ``module``, ``type``,
            ``depth``, ``macs`` (everything under it, itself included), ``self_macs`` (its rule or
            its own code), ``counted_by`` (``thop``, ``module rule``, ``aten`` or ``children``) and ``calls``
            (0 for a container that is iterated rather than called). Never negative.
        uncounted: module types (qualified names) that ran with no rule and no counted op inside,
            with how many of them ran; their cost, if any, is not in ``macs``.
        probe: ``meta`` or ``copy``: what the count ran on.
    """

    macs: int
    module_macs: int
    functional_macs: int
    per_module: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
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


def count_macs(model: nn.Module, inputs: torch.Tensor, module_rules: Mapping[str, ModuleRule] | None = None) -> dict[str, Any]:
    """MACs and GFLOPs (= 2 × GMACs) of one forward pass of ``model`` on ``inputs``.

    Args:
        model: the module to count; it is not changed (see :func:`profile_macs`).
        inputs: one input batch; MACs scale with its batch size.
        module_rules: module rules by class path (``ctx.module_rules``); a module whose rule has
            ``macs`` is counted by it, for its whole call.

    Returns:
        ``macs``, ``gmacs``, ``gflops``, ``unit``, ``macs_by`` and ``uncounted``
        (see :meth:`MacsProfile.metrics`).

    Example:
        >>> count_macs(nn.Linear(8, 4), torch.zeros(2, 8))["macs"]
        64
    """
    return profile_macs(model, inputs, module_rules).metrics()


def profile_macs(model: nn.Module, inputs: torch.Tensor, module_rules: Mapping[str, ModuleRule] | None = None) -> MacsProfile:
    """Count the MACs of ``model(inputs)`` per module, on a copy (see the module docstring).

    Raises:
        Whatever the model's forward (or copying it) raises on an ordinary copy; the model itself
        stays untouched.
    """
    try:
        return _profile(meta_copy(model), inputs.to("meta"), "meta", module_rules)
    # The meta device is an optimisation: the model's own code may refuse it in any way
    # (NotImplementedError for ops without a meta kernel, RuntimeError for .item(), a ValueError
    # or assert of its own); a real copy is counted then.
    except Exception as exc:  # noqa: BLE001
        log.debug("meta-device count of %s failed (%s); counting on a copy", type(model).__name__, exc)
    return _profile(copy.deepcopy(model, copy_memo(model)), inputs, "copy", module_rules)


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


def _profile(model: nn.Module, inputs: torch.Tensor, probe: str, module_rules: Mapping[str, ModuleRule] | None) -> MacsProfile:
    """Run ``model`` (a throwaway copy) once under the aten counter with a tally hooked on every module."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False, depth=None) as counter:  # type: ignore[arg-type]  # depth=None (no limit) is documented; the stub says int
        tally = _Tally(model, rules_for(model, module_rules), counter, set(module_rule_macs(model, module_rules)))
        try:
            with _mha_fastpath_disabled(), torch.no_grad():
                model(inputs)
        finally:
            tally.remove_hooks()
    return tally.profile(probe)


class _RuleTarget:
    """What a thop rule writes into: the module's attributes are read through, ``total_ops`` is its own."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self.total_ops = torch.zeros(1, dtype=torch.float64)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@dataclass
class _Call:
    """One module call in progress: the aten count when it started, what its children ran."""

    module: nn.Module
    start: int
    children: int = 0
    had_child: bool = False


class _Tally:
    """Forward hooks on every module (each once) that split the aten count between the modules that
    ran it: a module with a rule gets its rule's count for its whole call (children included); any
    other module gets the aten ops it ran outside its children; nothing inside a ruled module is
    counted again."""

    def __init__(self, model: nn.Module, rules: dict[type[nn.Module], Any], counter: Any, ruled_by_plugins: set[type[nn.Module]]) -> None:
        self.rules, self.counter, self.ruled_by_plugins = rules, counter, ruled_by_plugins
        self.named = list(model.named_modules())
        self.paths = {id(m): name for name, m in self.named}  # a shared module: its first name
        self.calls: dict[int, int] = {}
        self.modules = {id(m): m for m in model.modules()}
        self.rule_macs: dict[int, int] = {}
        self.aten_flops: dict[int, int] = {}
        self.had_child: dict[int, bool] = {}
        self.stack: list[_Call] = []
        self.ruled_depth = 0
        self.handles = []
        for module in self.modules.values():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave))

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _ruled(self, module: nn.Module) -> bool:
        return has_rule(module, self.rules)

    def _enter(self, module: nn.Module, args: Any) -> None:
        self.calls[id(module)] = self.calls.get(id(module), 0) + 1
        if self.stack:
            self.stack[-1].had_child = True
        if self._ruled(module):
            self.ruled_depth += 1
        self.stack.append(_Call(module, self.counter.get_total_flops()))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self.stack.pop()
        inclusive = self.counter.get_total_flops() - call.start
        key = id(module)
        if self._ruled(module):
            if self.ruled_depth == 1:  # the outermost ruled module: its rule counts the whole call
                target = _RuleTarget(module)
                self.rules[type(module)](target, args, output)
                self.rule_macs[key] = self.rule_macs.get(key, 0) + int(target.total_ops.item())
            self.ruled_depth -= 1
        elif self.ruled_depth == 0:
            self.aten_flops[key] = self.aten_flops.get(key, 0) + inclusive - call.children
            self.had_child[key] = self.had_child.get(key, False) or call.had_child
        if self.stack:
            self.stack[-1].children += inclusive

    def profile(self, probe: str) -> MacsProfile:
        per_module: dict[str, dict[str, Any]] = {}
        uncounted: dict[str, int] = {}
        module_macs = functional_macs = 0
        for key, module in self.modules.items():
            path = self.paths[key]
            if key in self.rule_macs:
                macs = self.rule_macs[key]
                module_macs += macs
                if macs:
                    by = "module rule" if type(module) in self.ruled_by_plugins else "thop"
                    per_module[path] = {"type": type(module).__name__, "macs": macs, "counted_by": by}
            elif key in self.aten_flops:
                macs = self.aten_flops[key] // 2  # the aten counter counts 2 FLOPs per multiply-accumulate
                functional_macs += macs
                if macs:
                    per_module[path] = {"type": type(module).__name__, "macs": macs, "counted_by": "aten"}
                elif not self.had_child[key]:  # it ran, did its work itself, and nothing counted it
                    uncounted[_qualname(module)] = uncounted.get(_qualname(module), 0) + 1
        return MacsProfile(
            macs=module_macs + functional_macs,
            module_macs=module_macs,
            functional_macs=functional_macs,
            per_module=per_module,
            layers=self.layers(per_module),
            uncounted=dict(sorted(uncounted.items())),
            probe=probe,
        )

    def layers(self, per_module: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every module's inclusive total, bottom-up over the module tree (see :attr:`MacsProfile.layers`)."""
        total = {name: per_module.get(name, {}).get("macs", 0) for name, _ in self.named}
        for name, _ in reversed(self.named):  # children come after their parent: add each to its parent
            if name:
                total[name.rpartition(".")[0]] += total[name]
        return [
            {
                "module": name or "(root)",
                "type": type(module).__name__,
                "depth": name.count(".") + 1 if name else 0,
                "macs": total[name],
                "self_macs": per_module.get(name, {}).get("macs", 0),
                "counted_by": per_module.get(name, {}).get("counted_by", "children"),
                "calls": self.calls.get(id(module), 0),
            }
            for name, module in self.named
            if total[name]
        ]


def _qualname(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"
