"""Channel analysis on the graph the model actually executes.

The model runs once (eval; once more in train mode to reach train-only branches) under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`. Every aten operator it executes is seen
with its real tensor arguments, whatever Python produced it (``chunk`` + ``list`` in a C2f,
``F.batch_norm`` inside timm's BatchNormAct2d, ``permute`` + ``F.layer_norm`` in a ConvNeXt,
data-dependent control flow in a detection head): nothing has to trace with torch.fx.

Every dimension of every tensor carries either ``None`` (not followed: batch, spatial, anything
unknown) or one *atom* per position (see :mod:`optkit_plugins.prune_l1.atoms`). Parameters and buffers
get their atoms from their qualified names, so several traces (eval, train) and the surgery
agree on them. Each operator has a rule that relates the atoms of its inputs and outputs:

- pointwise operators (aten's ``pointwise`` tag and a few more) merge atoms position by position
  with broadcasting (residual adds, squeeze-excitation ``x * gate``, layer scales);
- convolution / mm / addmm / bmm / linear: the contracted dimensions are merged, the output
  channels are the weight's rows (*produced* atoms: these make pruning groups); a depthwise
  convolution passes channels through (whole groups are units), a grouped one couples the same
  position of every group (the group count stays);
- batch/layer/group norm: their parameters and running statistics follow the channels they
  normalize (any dim, so LayerNorm over channels after a permute is followed);
- view/reshape/flatten/permute/transpose/expand/squeeze/unsqueeze/cat/split/chunk/select/slice
  map atoms between dimensions; a reshape that splits channels across dimensions (attention heads)
  is followed only through a module rule (:class:`optkit.AttentionHeads`);
- pooling, interpolation, padding of spatial dims, dropout, softmax and reductions keep atoms;
- anything else *fixes* the atoms it consumes, with its name and module as the reason; so does
  reaching the model's output (output shapes never change) and meeting an untracked dimension.

The operator rules live in :mod:`optkit_plugins.prune_l1.op_rules` and read the operator's
arguments by schema name. The run itself is a :class:`~optkit_plugins.prune_l1.recorder.Recorder`,
the same one the replay uses: a module whose rule describes it as attention heads runs as one
opaque step, read by :func:`optkit_plugins.prune_l1.attention.attention_heads`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit import ModuleRule, find_rule
from optkit_plugins.prune_l1.atoms import Ann, UnionFind
from optkit_plugins.prune_l1.attention import attention_heads
from optkit_plugins.prune_l1.op_rules import arguments, rule_for
from optkit_plugins.prune_l1.recorder import Recorder, Step, op_name, tensors

__all__ = ["Ann", "Entry", "Analysis", "ModuleStep", "opaque_rule", "output_leaves", "trace_channels"]

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One executed step: an aten operator, or a module run as one step by its rule."""

    kind: str  # "op" | "module"
    target: str
    scope: str
    out_shapes: list[tuple[int, ...]]
    out_anns: list[Ann]
    in_anns: list[Ann]


@dataclass
class Analysis:
    """Everything the traces showed, shared by all traces of one model.

    Attributes:
        uf: the atoms.
        tensor_anns: parameter/buffer qualified name -> its annotation.
        kinds: parameter/buffer name -> ``"parameter"`` or ``"buffer"``.
        origin: atom -> (parameter/buffer name, dim, index) for atoms of parameters and buffers.
        produced: atoms that are output channels of a contraction with a parameter weight.
        conv_groups: conv weight name -> ``("unit", out_per_group)`` (depthwise: groups are
            removed) or ``("position", groups)`` (grouped: the group count stays).
        unsupported: ``"op in scope"`` -> how often it fixed channels.
        traces: mode -> the executed steps, in order.
        called: modules that ran in some trace.
        rules: module name -> the rule that made it one opaque step.
    """

    uf: UnionFind = field(default_factory=UnionFind)
    tensor_anns: dict[str, Ann] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    origin: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    produced: set[int] = field(default_factory=set)
    conv_groups: dict[str, tuple[str, int]] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    traces: dict[str, list[Entry]] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)
    rules: dict[str, ModuleRule] = field(default_factory=dict)

    def named_ann(self, name: str, shape: tuple[int, ...], conv_weight: bool) -> Ann:
        """The annotation of parameter/buffer ``name``, created on first use.

        Every dimension of size > 1 gets atoms, except the kernel dimensions of a convolution weight.
        """
        ann = self.tensor_anns.get(name)
        if ann is None:
            ann = []
            for dim, size in enumerate(shape):
                if size == 1 or (conv_weight and dim >= 2):
                    ann.append(None)
                    continue
                atoms = self.uf.new(size)
                for index, atom in enumerate(atoms):
                    self.origin[atom] = (name, dim, index)
                ann.append(atoms)
            self.tensor_anns[name] = ann
        return ann


# -- the tracer ---------------------------------------------------------------------------------
class _Tracer(Recorder):
    """Annotates every tensor the model computes; see the module docstring."""

    def __init__(self, analysis: Analysis, model: nn.Module, rules: Mapping[str, ModuleRule]) -> None:
        super().__init__(lambda name, module: opaque_rule(module, rules))
        self.an = analysis
        self.uf = analysis.uf
        self.anns: dict[int, Ann] = {}
        self.keep: list[Any] = []  # keeps traced tensors alive, so ids are never reused
        self.entries: list[Entry] = []
        self.strides_before: tuple[int, ...] | None = None
        self.names: dict[int, str] = {}
        self.conv_weights: set[str] = set()
        for name, t in model.named_parameters():
            self.names[id(t)] = name
            analysis.kinds[name] = "parameter"
        for name, buffer in model.named_buffers():
            self.names[id(buffer)] = name
            analysis.kinds[name] = "buffer"
        self.shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                self.conv_weights.add(f"{name}.weight" if name else "weight")

    # -- annotations ------------------------------------------------------------------------
    def where(self, func: Any) -> str:
        return f"aten.{op_name(func)} in `{self.current_scope or '<model>'}`"

    def ann(self, t: torch.Tensor) -> Ann:
        a = self.anns.get(id(t))
        if a is not None:
            return a
        name = self.names.get(id(t))
        if name is not None:
            return self.an.named_ann(name, tuple(t.shape), name in self.conv_weights)
        a = [None] * t.dim()
        self.anns[id(t)] = a
        self.keep.append(t)
        return a

    def set(self, t: torch.Tensor, ann: Ann) -> None:
        """Annotate ``t``; a size-1 dimension is never followed (it broadcasts)."""
        if id(t) in self.names:
            return  # parameters keep their own atoms (an in-place update of a buffer changes nothing)
        nd = t.dim()
        ann = (list(ann) + [None] * nd)[:nd]
        for d, atoms in enumerate(ann):
            if atoms is None:
                continue
            if len(atoms) != t.shape[d]:
                self.uf.fix(atoms, "an internal shape check of the analysis failed")
                ann[d] = None
            elif t.shape[d] == 1:
                ann[d] = None
        self.anns[id(t)] = ann
        self.keep.append(t)

    def tie(self, a: list[int] | None, b: list[int] | None, reason: str) -> None:
        if a is None and b is None:
            return
        if a is None or b is None or len(a) != len(b):
            for atoms in (a, b):
                if atoms is not None:
                    self.uf.fix(atoms, reason)
            return
        self.uf.union_lists(a, b)

    def fix(self, atoms: list[int] | None, reason: str) -> None:
        if atoms is not None:
            self.uf.fix(atoms, reason)

    def fix_all(self, tensors: Iterable[torch.Tensor], reason: str) -> None:
        for t in tensors:
            for atoms in self.ann(t):
                self.fix(atoms, reason)

    def produce(self, atoms: list[int] | None) -> None:
        if atoms is not None:
            self.an.produced.update(a for a in atoms if a in self.an.origin)

    def group_policy(self, weight_name: str, policy: tuple[str, int]) -> None:
        self.an.conv_groups[weight_name] = policy

    # -- the recording ----------------------------------------------------------------------
    def op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        rule = rule_for(func)
        a = arguments(func, args, kwargs)
        if op_name(func) in ("as_strided", "as_strided_"):
            self.strides_before = tuple(a["self"].stride())  # as_strided_ restrides in place
        out = func(*args, **kwargs)
        try:
            if rule is not None:
                rule(self, func, a, out)
            else:
                self.unknown(func, tensors(a), tensors(out), "which channel pruning does not know")
        # An operator rule that fails on arguments it did not foresee must not break the model's
        # forward: the operator's channels are left alone, with the failure as the reason.
        except Exception as exc:
            log.debug("analysis of %s failed: %s", op_name(func), exc, exc_info=True)
            self.unknown(func, tensors(a), tensors(out), f"whose analysis failed ({type(exc).__name__}: {exc})")
        return out

    def step(self, step: Step) -> None:
        self.entries.append(
            Entry(
                step.kind,
                step.target,
                step.scope,
                [tuple(t.shape) for t in step.outputs],
                [self.ann(t) for t in step.outputs],
                [self.ann(t) for t in step.inputs],
            )
        )

    def unknown(self, func: Any, inputs: list[torch.Tensor], outputs: list[torch.Tensor], why: str) -> None:
        where = self.where(func)
        tracked = [a for t in inputs for a in self.ann(t) if a is not None]
        if tracked:
            key = f"{where}, {why}"
            self.an.unsupported[key] = self.an.unsupported.get(key, 0) + 1
            for atoms in tracked:
                self.uf.fix(atoms, f"are consumed by {where}, {why}")
        for t in outputs:
            if not any(t is i for i in inputs):
                self.set(t, [None] * t.dim())

    def module(self, name: str, module: nn.Module, rule: ModuleRule, args: tuple[Any, ...], output: Any) -> None:
        """Read an opaque module through its rule (attention heads)."""
        if rule.attention is None:  # opaque_rule() gives only rules with attention
            return
        self.an.rules[name] = rule
        inputs, outputs = tensors(args), tensors(output)
        step = ModuleStep(self, name)
        try:
            attention_heads(step, module, args, output, rule.attention)
        # A rule describes third-party code; whatever its reading of this module raises, the
        # module's channels are left alone and the error is the reason.
        except Exception as exc:
            log.debug("module rule of %s failed: %s", name, exc, exc_info=True)
            step.opaque_unknown(inputs, outputs, f"whose module rule {rule.class_path} failed ({type(exc).__name__}: {exc})")
        for t in outputs:
            if id(t) not in self.anns:
                self.set(t, [None] * t.dim())


class ModuleStep:
    """A module run as one opaque step: what reading its rule may do to the atoms."""

    def __init__(self, tracer: _Tracer, name: str) -> None:
        self._t = tracer
        self.name = name
        self.uf = tracer.uf

    def ann(self, t: torch.Tensor) -> Ann:
        return self._t.ann(t)

    def set_ann(self, t: torch.Tensor, ann: Ann) -> None:
        self._t.set(t, ann)

    def param(self, qualified: str) -> Ann | None:
        """The annotation of a parameter/buffer by qualified name (``None`` if it does not exist)."""
        shape = self._t.shapes.get(qualified)
        if shape is None:
            return None
        return self._t.an.named_ann(qualified, shape, qualified in self._t.conv_weights)

    def tie(self, a: list[int] | None, b: list[int] | None, reason: str) -> None:
        self._t.tie(a, b, reason)

    def fix(self, atoms: list[int] | None, reason: str) -> None:
        self._t.fix(atoms, reason)

    def produce(self, atoms: list[int] | None) -> None:
        self._t.produce(atoms)

    def opaque_unknown(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], why: str) -> None:
        where = f"module `{self.name}`"
        for t in inputs:
            for atoms in self.ann(t):
                if atoms is not None:
                    self.uf.fix(atoms, f"are consumed by {where}, {why}")
        for t in outputs:
            self.set_ann(t, [None] * t.dim())


# -- running a trace ----------------------------------------------------------------------------
def output_leaves(output: Any, free_outputs: Callable[[str], bool] | None = None) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a (nested) model output with their pytree paths (``"[1]['feats'][0]"``),
    less those ``free_outputs`` lets change shape."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(output)
    return [
        (keystr(path), t)
        for path, t in leaves
        if isinstance(t, torch.Tensor) and not (free_outputs is not None and free_outputs(keystr(path)))
    ]


def _model_outputs_fixed(tr: _Tracer, output: Any, free_outputs: Callable[[str], bool] | None) -> None:
    for path, t in output_leaves(output, free_outputs):
        for atoms in tr.ann(t):
            tr.fix(atoms, f"reach the model's output {path}".rstrip())


def opaque_rule(module: nn.Module, rules: Mapping[str, ModuleRule]) -> ModuleRule | None:
    """The rule that makes ``module`` one opaque step (attention heads), when it holds for it."""
    rule = find_rule(module, rules)
    if rule is None or rule.attention is None or rule.problem(module) is not None:
        return None
    return rule


def trace_channels(
    model: nn.Module,
    inputs: tuple[Any, ...],
    analysis: Analysis,
    mode: str,
    rules: Mapping[str, ModuleRule],
    free_outputs: Callable[[str], bool] | None = None,
) -> Any:
    """Run ``model(*inputs)`` once under the tracer and add what it shows to ``analysis``.

    Args:
        model: the model, already in the mode to trace (it is run, not changed; run a copy for
            train mode, where BatchNorm statistics move).
        inputs: positional arguments.
        analysis: collects atoms, rules and the executed steps (``analysis.traces[mode]``).
        mode: a label (``"eval"``/``"train"``).
        rules: module rules by class path.
        free_outputs: ``f(path) -> bool`` for output tensors whose shape may change (by default
            every output keeps its shape: its channels are fixed).

    Returns:
        The model's output.
    """
    tracer = _Tracer(analysis, model, rules)
    for t in tensors(inputs):
        tracer.set(t, [None] * t.dim())
    output = tracer.run(model, inputs)
    _model_outputs_fixed(tracer, output, free_outputs)
    analysis.called |= tracer.called
    analysis.traces[mode] = tracer.entries
    return output
