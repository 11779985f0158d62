"""Channel pruning on the graph the model executes: trace, plan, cut, replay, back off.

1. The model (a copy) runs once in eval mode: a warm-up that fills caches keyed by the input
   (a detection head's anchors) and gives the reference output shapes. It then runs once under
   the tracer (:mod:`~optkit_plugins.prune_l1.trace`) in eval mode and once, on another copy and
   a batch of at least two, in train mode: branches that run only in training (auxiliary heads,
   dropout paths) add their constraints to the same analysis.
2. The model's outputs keep their shapes (their channels are fixed, unless ``free_outputs``
   frees them), layers inside a detection or segmentation head (module rules with ``head``) keep
   their output widths, ``keep_outputs`` keep theirs, and ``exclude``d layers keep everything.
   Of every other group of coupled channels, ``floor(n * (1 - amount))`` units are kept
   (Torch-Pruning's rounding: 64 channels at 0.3 keep 44), the lowest L1 norm removed first.
3. A copy is cut (:mod:`~optkit_plugins.prune_l1.surgery`) and replayed in eval and train mode
   (:mod:`~optkit_plugins.prune_l1.replay`). At the first step that differs from the prediction
   (a width hard-coded in a ``view``, or read from a shape as a Python int), that step's channels
   are left alone, with the step as the reason, and the plan is made again.

Guarantees: the model given is not changed; nothing the traces cannot prove is cut; every
channel left alone has a reason; the pruned model executed the predicted graph in eval and train
mode, so no layer's inputs and outputs disagree in either, and its outputs have their shapes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit import ModuleRule, StageError, find_rule, out_width
from optkit_plugins.prune_l1 import plan as planning
from optkit_plugins.prune_l1.replay import Diverged, replay
from optkit_plugins.prune_l1.surgery import apply_plan
from optkit_plugins.prune_l1.trace import Analysis, Entry, output_leaves, trace_channels

__all__ = ["PRUNABLE", "ChannelPlanner", "ChannelPruning", "Chooser", "Cut", "PruningRefused", "prune_channels"]

log = logging.getLogger(__name__)

#: Layers whose weights channel and unstructured pruning remove.
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)

#: ``choose(model, analysis, groups) -> units to remove``: what a caller decides instead of ``amount`` by L1.
Chooser = Callable[[nn.Module, Analysis, "list[planning.Group]"], set[int]]

#: How many replay divergences may shrink the plan before the pass gives up.
MAX_BACKOFFS = 12


class PruningRefused(StageError):
    """Nothing could be pruned safely; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"prune_l1 mode: channels: {reason}")


@dataclass
class ChannelPruning:
    """The pruned copy and what was done.

    Attributes:
        model: the pruned model (eval mode).
        amount: the share of every group's channels removed.
        channels: every convolution and Linear layer that ran: ``[out before, out after]``.
        groups: one entry per group of coupled channels: layers, channels before and after.
        left_alone: output channels not pruned: layers, channels, reason.
        unsupported: operators that fixed the channels they consumed, with counts.
        backoffs: replay divergences that made the plan smaller, in order.
        not_traced: modules with weights that ran in neither trace (their inputs are not proven).
        rules_used: module -> class path of the module rule it was read through.
    """

    model: nn.Module
    amount: float
    round_to: int
    channels: dict[str, list[int]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    left_alone: list[dict[str, Any]] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    backoffs: list[str] = field(default_factory=list)
    not_traced: list[str] = field(default_factory=list)
    rules_used: dict[str, str] = field(default_factory=dict)

    def removed_channels(self) -> int:
        """Output channels removed over all groups."""
        return sum(row["channels"][0] - row["channels"][1] for row in self.groups)

    def details(self) -> dict[str, Any]:
        """A JSON-serializable summary for the run report."""
        return {
            "mode": "channels",
            "amount": self.amount,
            "round_to": self.round_to,
            "rounding": "each group keeps floor(n * (1 - amount)) channels (at least 1), rounded up to round_to",
            "channels": self.channels,
            "groups": self.groups,
            "left_alone": self.left_alone,
            "unsupported_ops": self.unsupported,
            "backoffs": self.backoffs,
            "not_traced": self.not_traced,
            "rules_used": self.rules_used,
        }


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _batch_of_two(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Train-mode BatchNorm needs more than one value per channel: a batch of one is repeated."""
    return tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)


def _shapes(output: Any, free_outputs: Callable[[str], bool] | None) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for _, t in output_leaves(output, free_outputs)]


def _layer_widths(model: nn.Module, an: Analysis) -> dict[str, int]:
    """Output width of every convolution and Linear layer the traces saw."""
    traced = {name.rpartition(".")[0] for name in an.tensor_anns}
    return {name: out_width(m) for name, m in model.named_modules() if isinstance(m, PRUNABLE) and name in traced}


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    amount: float,
    *,
    rules: Mapping[str, ModuleRule],
    round_to: int = 1,
    exclude: Sequence[str] = (),
    keep_outputs: Mapping[str, str] | None = None,
    free_outputs: Sequence[str] = (),
    prune_heads: bool = False,
    choose: Chooser | None = None,
) -> ChannelPruning:
    """Remove ``amount`` of the channels of every prunable group of ``model``, in a pruned copy
    (each try at a plan starts from the unpruned model, so the model is kept until one holds).

    Args:
        model: the model: put in eval mode and traced, otherwise not changed.
        example_inputs: a tensor or a tuple of positional arguments (small: 64x64 is plenty).
        amount: share of each group's units removed (``floor(n * (1 - amount))`` are kept).
        rules: module rules by class path (``ctx.module_rules``).
        round_to: keep a multiple of this many channels per group (e.g. 8), rounding up.
        exclude: module names (or globs) left exactly as they are: inputs and outputs.
        keep_outputs: module names (or globs) whose layers keep their output widths -> why.
        free_outputs: parts of output paths whose channel counts may change: an output whose
            pytree path (``[1]['feats'][0]`` in eval mode, ``['feats'][0]`` in train mode, where
            a model returns another structure) contains one is free. By default none is.
        prune_heads: layers inside detection/segmentation heads may lose output channels too
            (the head's own outputs still keep theirs).
        choose: ``choose(model, analysis, groups) -> units to remove``, instead of ``amount`` of
            every group by L1 (:func:`~optkit_plugins.prune_l1.plan.choose_removed`); called
            again after every replay divergence, on the analysis with more channels left alone.

    Returns:
        A :class:`ChannelPruning`.

    Raises:
        PruningRefused: the model does not run on the example input, does not execute the same
            graph twice, or no safe plan was found within :data:`MAX_BACKOFFS` divergences.
    """
    planner = ChannelPlanner(
        model,
        example_inputs,
        rules=rules,
        exclude=exclude,
        keep_outputs=keep_outputs,
        free_outputs=free_outputs,
        prune_heads=prune_heads,
    )

    def by_l1(base: nn.Module, an: Analysis, groups: list[planning.Group]) -> set[int]:
        return planning.choose_removed(base, an, groups, amount, round_to)

    return planner.result(planner.cut(choose or by_l1), amount, round_to)


@dataclass
class Cut:
    """One plan carried out: the pruned copy (replayed), the groups planned and the units removed."""

    model: nn.Module
    groups: list[planning.Group]
    removed: set[int]


class ChannelPlanner:
    """A traced copy of a model, ready to be cut by any number of plans (steps 1 and 3 of the module docstring).

    :meth:`cut` carries out one plan and backs off on replay divergences; the analysis keeps what
    every back-off left alone, so a search over plans (a target in MACs) converges on safe ones.

    Args: as :func:`prune_channels`.

    Raises:
        PruningRefused: the model does not run on the example input or does not execute the same graph twice.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        rules: Mapping[str, ModuleRule],
        exclude: Sequence[str] = (),
        keep_outputs: Mapping[str, str] | None = None,
        free_outputs: Sequence[str] = (),
        prune_heads: bool = False,
    ) -> None:
        inputs = _as_tuple(example_inputs)
        self.rules = rules = rules or {}
        self.free = free = (lambda path: any(part in path for part in free_outputs)) if free_outputs else None
        self.base = base = model.eval()  # no defensive copy: every plan cuts a copy of it
        try:
            with torch.no_grad():
                self.reference = _shapes(base(*inputs), free)  # also the warm-up: caches filled before the trace
        # The model's own code on the example input: whatever it raises, channel pruning cannot proceed.
        except Exception as exc:
            raise PruningRefused(f"the model does not run on the example input: {type(exc).__name__}: {exc}") from exc
        self.an = an = Analysis()
        trace_channels(base, inputs, an, "eval", rules, free)
        train_inputs = _batch_of_two(inputs)
        trace_channels(copy.deepcopy(base).train(), train_inputs, an, "train", rules, free)
        self.modes = {"eval": inputs, "train": train_inputs}

        if not prune_heads:
            heads = [name for name, m in base.named_modules() if (rule := find_rule(m, rules)) is not None and rule.head]
            heads = [h for h in heads if not any(h.startswith(o + ".") for o in heads if o != h)]
            for head in heads:
                planning.keep_outputs(an, [head], f"are in the head `{head}` ({type(base.get_submodule(head)).__name__}, module rule)")
        for name, reason in (keep_outputs or {}).items():
            planning.keep_outputs(an, [name], reason)
        planning.exclude(an, exclude, "are excluded (exclude)")
        _replay_all(base, self.modes, an, set(), rules, unpruned=True)
        self.before = _layer_widths(base, an)
        self.backoffs: list[str] = []

    def draft(self, choose: Chooser) -> Cut:
        """Plan with ``choose`` and cut a copy, without the replay: cheap, for costing candidate plans.

        The plan is safe only where the analysis already knows every width the model hard-codes
        (after a :meth:`cut` at a larger amount, say); :meth:`cut` the chosen plan before using it.
        """
        groups = planning.groups_of(self.an)
        removed = choose(self.base, self.an, groups)
        pruned = copy.deepcopy(self.base)
        apply_plan(pruned, self.an, removed, self.rules)
        return Cut(pruned.eval(), groups, removed)

    def cut(self, choose: Chooser) -> Cut:
        """Plan with ``choose``, cut a copy and replay it; on a divergence, leave that step's channels
        alone and plan again.

        Raises:
            PruningRefused: no safe plan within :data:`MAX_BACKOFFS` divergences (over all cuts), or
                the pruned model changed its output shapes.
        """
        an, base = self.an, self.base
        while True:
            groups = planning.groups_of(an)
            removed = choose(base, an, groups)
            pruned = copy.deepcopy(base)
            apply_plan(pruned, an, removed, self.rules)
            try:
                _replay_all(pruned, self.modes, an, removed, self.rules)
                break
            except Diverged as exc:
                if len(self.backoffs) >= MAX_BACKOFFS:
                    raise PruningRefused(f"no safe plan after {MAX_BACKOFFS} replay divergences; the last: {exc}") from exc
                where = _back_off(an, exc, removed)
                if where is None:
                    raise PruningRefused(f"the pruned model diverged and no pruned channel explains it: {exc}") from exc
                self.backoffs.append(f"{exc} -> channels of {where} left alone")
                log.info("replay diverged (%s); channels of %s left alone", exc, where)
        pruned.eval()
        with torch.no_grad():
            after = _shapes(pruned(*self.modes["eval"]), self.free)
        if after != self.reference:  # the replay predicts this; a model that changes its outputs is refused all the same
            raise PruningRefused(f"the output shapes changed from {self.reference} to {after}")
        return Cut(pruned, groups, removed)

    def result(self, cut: Cut, amount: float, round_to: int) -> ChannelPruning:
        """What :func:`prune_channels` returns for ``cut``."""
        return _result(cut.model, self.base, self.an, cut.groups, cut.removed, list(self.backoffs), self.before, amount, round_to)


def _fix_entries(an: Analysis, entries: list[Entry], removed: set[int], reason: str) -> bool:
    """Fix every atom the entries touch; whether a unit that was removed got fixed."""
    hit = False
    for entry in entries:
        for ann in entry.in_anns + entry.out_anns:
            for atoms in ann:
                if atoms is None:
                    continue
                for atom in atoms:
                    root = an.uf.find(atom)
                    if root in an.uf.reason:
                        continue
                    hit = hit or root in removed
                    an.uf.reason[root] = reason
    return hit


def _back_off(an: Analysis, exc: Diverged, removed: set[int]) -> str | None:
    """Leave alone the channels of the step that diverged; if none of them was pruned (a width
    read as a Python int, e.g. ``B, C, H, W = x.shape`` then ``view(B, C, H, W)``), those used
    inside its module, then inside the enclosing modules. Returns what was left alone, or ``None``."""
    entries = an.traces[exc.mode]
    entry = entries[exc.index] if exc.index < len(entries) else None
    reason = f"are left alone after replay: {exc.message}"
    if entry is not None and _fix_entries(an, [entry], removed, reason):
        return f"step {entry.target} in `{entry.scope}`"
    scope = entry.scope if entry is not None else ""
    while True:
        inside = [e for steps in an.traces.values() for e in steps if not scope or e.scope == scope or e.scope.startswith(scope + ".")]
        if _fix_entries(an, inside, removed, f"{reason} (channels used inside `{scope or '<model>'}`)"):
            return f"module `{scope or '<model>'}`"
        if not scope:
            return None
        scope = scope.rpartition(".")[0]


def _replay_all(
    model: nn.Module,
    modes: dict[str, tuple[Any, ...]],
    an: Analysis,
    removed: set[int],
    rules: Mapping[str, ModuleRule],
    unpruned: bool = False,
) -> None:
    """Replay every traced mode. A model whose first call differs (a cache keyed by the input,
    such as a detection head's anchors) gets one warm-up call, as the traced model had."""
    for mode, mode_inputs in modes.items():
        target = model.eval() if mode == "eval" else copy.deepcopy(model).train()
        try:
            try:
                replay(target, mode_inputs, an, mode, removed, rules)
            except Diverged:
                with torch.no_grad():
                    try:
                        target(*mode_inputs)
                    # The warm-up may fail exactly where the replay did; the second replay names it.
                    except Exception:
                        log.debug("warm-up call before the second replay failed", exc_info=True)
                replay(target, mode_inputs, an, mode, removed, rules)
        except Diverged as exc:
            if unpruned:
                raise PruningRefused(
                    f"the model does not execute the same graph twice ({exc}); channel pruning needs a repeatable forward"
                ) from exc
            raise


def _result(
    pruned: nn.Module,
    base: nn.Module,
    an: Analysis,
    groups: list[planning.Group],
    removed: set[int],
    backoffs: list[str],
    before: dict[str, int],
    amount: float,
    round_to: int,
) -> ChannelPruning:
    group_rows = []
    for g in groups:
        kept = sum(1 for u in g.units if u not in removed)
        width = g.channels // max(len(g.units), 1)
        group_rows.append({"layers": g.producers, "channels": [g.channels, kept * width]})
    left = [{"layers": f.producers, "channels": f.channels, "reason": f.reason} for f in planning.fixed_of(an)]
    traced = {name.rpartition(".")[0] for name in an.tensor_anns} | set(an.called)
    not_traced = sorted(
        name for name, m in base.named_modules() if next(m.parameters(recurse=False), None) is not None and name not in traced
    )
    after = _layer_widths(pruned, an)
    return ChannelPruning(
        model=pruned,
        amount=amount,
        round_to=round_to,
        channels={name: [width, after[name]] for name, width in before.items()},
        groups=group_rows,
        left_alone=left,
        unsupported=dict(an.unsupported),
        backoffs=backoffs,
        not_traced=not_traced,
        rules_used={name: rule.class_path for name, rule in an.rules.items()},
    )
