"""The recording protocol shared by the channel trace and its replay: one run of a model, as steps.

A step is an aten operator executed outside an opaque module, or an opaque module (one a module
rule reads as a whole, such as attention heads) run as one step. Metadata queries
(:data:`METADATA`) are no steps, and :data:`UNRECORDED` operators run but are no steps either,
because torch emits them or not depending on how a module is called. The trace
(:mod:`~optkit_plugins.prune_l1.trace`) annotates every step; the replay
(:mod:`~optkit_plugins.prune_l1.replay`) checks the pruned model takes the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from optkit import ModuleRule

__all__ = ["METADATA", "UNRECORDED", "OpaqueRule", "Recorder", "Step", "op_name", "tensors"]

#: Queries of a tensor's metadata: no steps, whatever the model does with their answers.
METADATA = {
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "_assert_async",
    "_assert_tensor_metadata",
    "_has_compatible_shallow_copy_type",
    "record_stream",
    "_assert_scalar",
    "is_same_size",
}
#: Operators run (and annotated) but not recorded: whether torch emits them depends on how the module is called.
UNRECORDED = {"detach", "alias", "lift_fresh"}

#: ``opaque(name, module) -> rule``: the rule that makes a module one step, or ``None``.
OpaqueRule = Callable[[str, nn.Module], "ModuleRule | None"]


def op_name(func: Any) -> str:
    """The operator's name without overload (``aten.add.Tensor`` -> ``add``)."""
    return func.overloadpacket.__name__


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) value, in order."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class Step:
    """One recorded step.

    Attributes:
        kind: ``"op"`` or ``"module"``.
        target: ``"aten.<name>"`` for an operator, the module's name for a module.
        scope: the innermost module running it (a module step's own name).
        inputs: the tensors it was given.
        outputs: the tensors it returned.
    """

    kind: str
    target: str
    scope: str
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class Recorder(TorchDispatchMode):
    """Runs a model once and hands every step to :meth:`step`, in order.

    Subclasses override :meth:`op` (run an operator: annotate it), :meth:`module` (read an opaque
    module's rule) and :meth:`step` (what to do with a step).

    Args:
        opaque: the rule that makes a module one opaque step, or ``None``; the operators it runs
            are not steps.
    """

    def __init__(self, opaque: OpaqueRule) -> None:
        super().__init__()
        self.opaque_rule = opaque
        self.scope: list[str] = []
        self.called: set[str] = set()
        self.depth = 0  # > 0 inside an opaque module

    @property
    def current_scope(self) -> str:
        return self.scope[-1] if self.scope else ""

    # -- what subclasses do with the run --------------------------------------------------------
    def op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one operator outside opaque modules (recorded or not) and return its output."""
        return func(*args, **kwargs)

    def module(self, name: str, module: nn.Module, rule: ModuleRule, args: tuple[Any, ...], output: Any) -> None:
        """An opaque module returned (before its step is recorded)."""

    def step(self, step: Step) -> None:
        """One recorded step."""

    # -- the protocol ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if self.depth or name in METADATA:
            return func(*args, **kwargs)
        out = self.op(func, args, kwargs)
        if name not in UNRECORDED:
            self.step(Step("op", f"aten.{name}", self.current_scope, tensors((args, kwargs)), tensors(out)))
        return out

    def run(self, model: nn.Module, inputs: tuple[Any, ...]) -> Any:
        """``model(*inputs)`` without gradients, recorded; returns the model's output."""
        handles = []
        for name, module in model.named_modules():
            rule = self.opaque_rule(name, module)
            handles.append(module.register_forward_pre_hook(self._enter(name, rule)))
            # The step is recorded only when the module returns; the scope is unwound whatever happens.
            handles.append(module.register_forward_hook(self._returned(name, rule)))
            handles.append(module.register_forward_hook(self._exit(), always_call=True))
        try:
            with torch.no_grad(), self:
                return model(*inputs)
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str, rule: ModuleRule | None) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.scope.append(name)
            self.called.add(name)
            if self.depth or rule is not None:
                self.depth += 1

        return pre

    def _returned(self, name: str, rule: ModuleRule | None) -> Callable[..., None]:
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if rule is not None and self.depth == 1:
                self.module(name, module, rule, args, output)
                self.step(Step("module", name, name, tensors(args), tensors(output)))

        return post

    def _exit(self) -> Callable[..., None]:
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.scope.pop()
            if self.depth:
                self.depth -= 1

        return post
