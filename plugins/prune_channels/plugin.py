"""The ``prune_channels`` pass: remove whole channels chosen by an importance criterion, per group
or over the whole model, by an amount or toward a target in MACs, parameters or latency.

The groups of coupled channels come from :mod:`optkit_plugins.prune_l1` (trace, plan, cut,
replay); here they are scored (:mod:`~optkit_plugins.prune_channels.criteria` or a plugin's
criterion through :class:`optkit.PruningGroup`), allocated and searched for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from optkit import Pass, PassContext, StageError, hookimpl
from optkit_plugins.detection_heads import torchvision_detector
from optkit_plugins.finetune.batchnorm import recalibrate_batchnorm
from optkit_plugins.prune_channels.criteria import BUILTIN, Importance, normalized
from optkit_plugins.prune_channels.groups import gradient_source, group_views
from optkit_plugins.prune_channels.latency import LatencyRatio
from optkit_plugins.prune_channels.search import Ratio, Search, counted_ratio, search_amount
from optkit_plugins.prune_channels.sensitivity import removal_costs
from optkit_plugins.prune_l1.channels import ChannelPlanner, ChannelPruning, Chooser, Cut
from optkit_plugins.prune_l1.detectors import backbone_to_prune
from optkit_plugins.prune_l1.plan import Group, choose_global, choose_uniform
from optkit_plugins.prune_l1.plugin import channel_limits, warn_if_nothing_removed
from optkit_plugins.prune_l1.trace import Analysis

__all__ = ["PruneChannels", "Target", "optkit_register_passes"]

#: The largest share of a group a search may remove (uniform allocation keeps at least one unit anyway).
MAX_AMOUNT = 0.99


class Target(BaseModel):
    """What the pruned model should cost, as a share of the model before: exactly one of ``macs``,
    ``params`` or ``latency``."""

    model_config = ConfigDict(extra="forbid")

    macs: float | None = Field(None, gt=0, lt=1, description="Share of the MACs kept (0.25: 4x fewer).")
    params: float | None = Field(None, gt=0, lt=1, description="Share of the parameters kept.")
    latency: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of the latency kept: the median of 30 per-round ratios, the pruned model timed side by side "
        "with the model before on the stage's device.",
    )
    runtime: Literal["torch", "onnxruntime"] | None = Field(
        None,
        description="latency only: where it is measured: torch (the modules; default) or onnxruntime (each candidate "
        "exported as export_onnx exports it, run as its artifact is).",
    )
    tolerance: float = Field(
        0.03,
        ge=0,
        lt=1,
        description="The stage fails when the reached share exceeds the goal by more than this (relative); for "
        "latency, only when its interval also lies above the goal.",
    )

    @model_validator(mode="after")
    def _one_goal(self) -> Target:
        given = [name for name in ("macs", "params", "latency") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of macs, params or latency (got {', '.join(given) or 'none'})")
        if self.runtime is not None and self.latency is None:
            raise ValueError(f"runtime applies to a latency target only (this target is {given[0]})")
        return self

    @property
    def metric(self) -> str:
        return next(name for name in ("macs", "params", "latency") if getattr(self, name) is not None)

    @property
    def goal(self) -> float:
        return float(getattr(self, self.metric))


class PruneChannels(Pass):
    """Whole-channel pruning with a choice of importance criterion, allocation and target."""

    name = "prune_channels"
    summary = "Remove whole channels by importance (l1, l2, bn_scale, taylor, plugins), per group or globally, to an amount or a MACs/params/latency target."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``prune_channels``."""

        importance: str = Field(
            "l1",
            description="Criterion: l1, l2, bn_scale (|γ| of the BatchNorm after the layer), taylor (|w·∂L/∂w|, needs "
            "data), random, or one a plugin registers (optkit_register_importances).",
        )
        reduction: Literal["sum", "mean", "max"] = Field("mean", description="How a group's tensors' scores are combined.")
        allocation: Literal["uniform", "global", "sensitivity"] = Field(
            "uniform",
            description="uniform: the same share of every group; global: one ranking of all channels over "
            "scores normalised per group (divided by the group's mean), each group keeping `floor` of its channels; "
            "sensitivity: one ranking by the measured output drift of removing 25/50/75% of each group alone (on the "
            "first batch of data.eval, else the example input), cheapest first, with the same floor.",
        )
        floor: float = Field(0.1, ge=0, lt=1, description="global: the share of each group's channels always kept (at least one).")
        amount: float | None = Field(
            None,
            ge=0.0,
            lt=1.0,
            description="Share of channels removed (of each group, or of all with global); default 0.3 without a target.",
        )
        target: Target | None = Field(None, description="{macs: f} | {params: f} | {latency: f}: the amount is searched for.")
        steps: PositiveInt = Field(
            1,
            description="Prune in this many steps toward the amount or target, rescoring (and "
            "recalibrating BatchNorm on data.train when given) in between.",
        )
        batches: PositiveInt = Field(8, description="Batches of data.calibration for taylor's gradients and BatchNorm recalibration.")
        seed: int = Field(0, description="Seed of the random criterion.")
        include: list[str] = Field(
            default_factory=lambda: ["*"], description="Glob patterns of layers whose output channels may be removed."
        )
        exclude: list[str] = Field(default_factory=list, description="Glob patterns of layers left alone entirely (inputs too).")
        prune_classifier: bool = Field(False, description="Also prune the final classifier (left alone by default).")
        round_to: PositiveInt = Field(1, description="Keep a multiple of this many channels per group (e.g. 8).")
        free_outputs: list[str] = Field(default_factory=list, description="Model outputs whose channel count may change (as prune_l1).")
        prune_heads: bool = Field(False, description="Layers inside detection/segmentation heads may lose output channels (as prune_l1).")

        @model_validator(mode="after")
        def _amount_or_target(self) -> PruneChannels.Options:
            if self.amount is not None and self.target is not None:
                raise ValueError("give amount or target, not both (with a target the amount is searched for)")
            return self

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Prune a copy of ``model`` in ``steps`` steps.

        Raises:
            StageError: an unknown criterion, a criterion that returns a wrong shape, or a target not reached.
        """
        options = self.options
        example = self._example(ctx)
        criterion = self._criterion(ctx)
        detector = torchvision_detector(model)
        if detector is not None:
            self._refuse_whole_model_options(f"torchvision's {detector} is pruned in its backbone alone, on its transformed example input")
        excluded, keep = channel_limits(model, options, ctx.details, self.name)
        whole = current = copy.deepcopy(model).eval()
        if detector is not None:  # the backbone alone: see optkit_plugins.prune_l1.detectors
            current, example = backbone_to_prune(whole, detector, ctx.require_single_input(self.name), ctx.details)
        target = options.target
        with self._cost(target, current, ctx) as ratio_of:
            pruned = self._prune(current, example, criterion, excluded, keep, target, ratio_of, ctx)
        if detector is not None:
            whole.backbone = pruned.backbone
            return whole
        return pruned

    def _prune(
        self,
        current: nn.Module,
        example: torch.Tensor | tuple[torch.Tensor, ...],
        criterion: Importance,
        excluded: list[str],
        keep: dict[str, str],
        target: Target | None,
        ratio_of: Callable[[nn.Module], Ratio] | None,
        ctx: PassContext,
    ) -> nn.Module:
        """The steps of :meth:`apply`, with the cost ``ratio_of`` a target is measured by."""
        options = self.options
        amount = 0.3 if options.amount is None else options.amount
        steps: list[dict[str, Any]] = []
        first: ChannelPruning | None = None
        result: ChannelPruning | None = None
        for step in range(1, options.steps + 1):
            planner = ChannelPlanner(
                current,
                example,
                rules=ctx.module_rules,
                exclude=excluded,
                keep_outputs=keep,
                free_outputs=options.free_outputs,
                prune_heads=options.prune_heads,
            )
            choose = self._chooser(planner, criterion, ctx)
            if target is None:
                step_amount = 1 - (1 - amount) ** (1 / options.steps)
                cut = planner.cut(choose(step_amount))
                row: dict[str, Any] = {"amount": round(step_amount, 6)}
            else:
                assert ratio_of is not None  # made when there is a target
                search, cut = self._search(planner, choose, target, target.goal ** (step / options.steps), ratio_of)
                step_amount = search.amount
                row = search.details()
            result = planner.result(cut, step_amount, options.round_to)
            first = first or result
            row["channels_removed"] = result.removed_channels()
            steps.append(row)
            current = result.model
            if step < options.steps:
                self._recalibrate(current, ctx, row)
        assert result is not None and first is not None  # steps >= 1
        ctx.details.update(result.details())
        ctx.details.update(
            {
                "importance": options.importance,
                "reduction": options.reduction,
                "allocation": options.allocation,
                "channels": {
                    name: [first.channels[name][0], widths[1]] for name, widths in result.channels.items() if name in first.channels
                },
                "steps": steps,
            }
        )
        if options.allocation != "uniform":
            ctx.details["floor"] = options.floor
            ctx.details["rounding"] = (
                "one ranking of all channels; each group keeps ceil(n * floor) channels (at least 1), rounded up to round_to"
            )
        if target is not None:
            assert ratio_of is not None  # made when there is a target
            self._check_target(target, ratio_of, current, ctx, steps)
        else:
            warn_if_nothing_removed(ctx, sum(row["channels_removed"] for row in steps), len(first.groups), amount, self.name)
        return current

    @staticmethod
    @contextmanager
    def _cost(target: Target | None, model: nn.Module, ctx: PassContext) -> Iterator[Callable[[nn.Module], Ratio] | None]:
        """How a candidate's cost ratio is measured: counted (MACs, parameters) or timed beside ``model`` (latency)."""
        if target is None:
            yield None
        elif target.metric != "latency":
            yield counted_ratio(target.metric, model, ctx.example_input, ctx.module_rules)
        else:  # the planner cuts copies: ``model`` stays the model before, timed as it is
            with LatencyRatio(model, ctx.example_input, ctx.device, target.runtime or "torch") as timed:
                yield timed

    def _example(self, ctx: PassContext) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What the channel trace runs the model on: the one input tensor, or the tuple of several
        positional inputs (a model of several is pruned by ``amount`` on its example inputs alone).

        Raises:
            StageError: the model takes inputs by keyword, or several inputs with an option that
                needs one (see :meth:`_refuse_whole_model_options`).
        """
        inputs = ctx.example_inputs
        if inputs.single:
            return ctx.example_input
        if inputs.kwargs:
            raise StageError(
                f"{self.name} traces models called with positional inputs, and this one takes {', '.join(inputs.kwargs)} "
                "by keyword; give model.inputs as a list"
            )
        self._refuse_whole_model_options(
            f"a model of {len(inputs.args)} inputs ({', '.join(inputs.names)}) is traced on its example inputs"
        )
        return tuple(inputs.args)

    def _refuse_whole_model_options(self, what: str) -> None:
        """The options that run the whole model on data or measure it refuse a model pruned on its
        example input alone (a torchvision detector's backbone, on the batch its transform makes of
        the example input; a model of several inputs).

        Args:
            what: the model and how it is pruned, the start of the message.

        Raises:
            StageError: ``target``, ``importance: taylor``, ``allocation: sensitivity`` or ``steps`` > 1.
        """
        options = self.options
        used = [
            option
            for option, given in (
                ("target", options.target is not None),
                ("importance: taylor", options.importance == "taylor"),
                ("allocation: sensitivity", options.allocation == "sensitivity"),
                ("steps > 1", options.steps > 1),
            )
            if given
        ]
        if used:
            raise StageError(
                f"{self.name}: {what}, which {', '.join(used)} cannot use (they measure or train the whole model on data); use amount with "
                "importance l1, l2, bn_scale or random and allocation uniform or global"
            )

    def _search(
        self,
        planner: ChannelPlanner,
        choose: Callable[[float], Chooser],
        target: Target,
        goal: float,
        ratio_of: Callable[[nn.Module], Ratio],
    ) -> tuple[Search, Cut]:
        """The smallest amount whose plan costs at most ``goal`` of ``original``, and its cut.

        The largest amount is cut and replayed first, so that the analysis learns every width the
        model hard-codes; the other candidates are drafts (cut, not replayed). Should the final cut
        back off further, the search runs again on what it learnt (at most three times).
        """

        def ratio_at(amount: float) -> Ratio:
            return ratio_of(planner.draft(choose(amount)).model)

        # A timed ratio is noisy to a few percent: halving the amount's interval 7 times (steps of
        # 0.008) is as fine as a timing can tell, and each candidate costs an export and 30 rounds.
        iterations = 7 if target.metric == "latency" else 10
        for _ in range(3):
            planner.cut(choose(MAX_AMOUNT))
            learnt = len(planner.backoffs)
            search = search_amount(ratio_at, goal, MAX_AMOUNT, iterations=iterations)
            cut = planner.cut(choose(search.amount))
            if len(planner.backoffs) == learnt:
                break
        return search, cut

    def _criterion(self, ctx: PassContext) -> Importance:
        name = self.options.importance
        if name in BUILTIN:
            return BUILTIN[name]
        if name in ctx.importances:
            return ctx.importances[name]
        known = ", ".join([*BUILTIN, *sorted(ctx.importances)])
        raise StageError(f"importance: unknown criterion {name!r}; known: {known} (plugins add more with optkit_register_importances)")

    def _chooser(self, planner: ChannelPlanner, criterion: Importance, ctx: PassContext) -> Callable[[float], Chooser]:
        """``choose(amount)``: the plan maker for one amount, over scores computed once for this planner."""
        options = self.options
        scores: dict[int, float] = {}

        costs: dict[int, float] = {}

        def scored(base: nn.Module, an: Analysis, groups: list[Group]) -> dict[int, float]:
            missing = [g for g in groups if any(u not in scores for u in g.units)]
            if missing:
                scores.update(self._score(base, an, missing, criterion, ctx))
            if options.allocation == "uniform":
                return scores
            if options.allocation == "sensitivity":
                unmeasured = [g for g in groups if any(u not in costs for u in g.units)]
                if unmeasured:
                    costs.update(removal_costs(planner, unmeasured, scores, self._probe(ctx)))
                return costs
            normal: dict[int, float] = {}
            for group in groups:
                values = normalized(torch.tensor([scores[u] for u in group.units]))
                normal.update(zip(group.units, values.tolist(), strict=False))
            return normal

        def choose(amount: float) -> Chooser:
            def chooser(base: nn.Module, an: Analysis, groups: list[Group]) -> set[int]:
                values = scored(base, an, groups)
                if options.allocation != "uniform":
                    return choose_global(groups, values, amount, options.floor, options.round_to)
                return choose_uniform(groups, values, amount, options.round_to)

            return chooser

        return choose

    @staticmethod
    def _probe(ctx: PassContext) -> torch.Tensor:
        """The batch sensitivity is measured on: the first of ``data.eval``, else the example input."""
        loader = None if ctx.data is None else ctx.data.eval
        for inputs, _ in loader or ():
            return inputs
        return ctx.example_input

    def _score(self, base: nn.Module, an: Analysis, groups: list[Group], criterion: Importance, ctx: PassContext) -> dict[int, float]:
        options = self.options
        loader = ctx.data.calibration if ctx.data is not None else None
        gradients = gradient_source(base, loader, options.batches) if loader is not None else None
        views = group_views(base, an, groups, data=ctx.data, reduction=options.reduction, gradients=gradients)
        scores: dict[int, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            for view, units in zip(views.views, views.units, strict=False):
                values = criterion(view)
                if not isinstance(values, torch.Tensor) or values.shape != (view.channels,):
                    shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
                    raise StageError(
                        f"importance {options.importance!r} returned {shape} for group {view.name!r}; "
                        f"expected one score per channel, shape ({view.channels},)"
                    )
                values = values.detach().float().cpu()
                if not torch.isfinite(values).all():
                    raise StageError(f"importance {options.importance!r} returned a non-finite score for group {view.name!r}")
                scores.update(zip(units, values.tolist(), strict=False))
        return scores

    def _recalibrate(self, model: nn.Module, ctx: PassContext, row: dict[str, Any]) -> None:
        """Re-estimate BatchNorm statistics between steps on ``data.train`` (or calibration), when given."""
        loader = None if ctx.data is None else (ctx.data.train or ctx.data.calibration)
        if loader is not None:
            row["bn_recalibrated"] = recalibrate_batchnorm(model, loader, self.options.batches)

    def _check_target(
        self, target: Target, ratio_of: Callable[[nn.Module], Ratio], model: nn.Module, ctx: PassContext, steps: list[dict[str, Any]]
    ) -> None:
        """Measure the pruned model once more; fail the stage when it misses the goal by more than the tolerance.

        A timed ratio (latency) misses only when its interval lies above the goal too: a median
        within the timing's noise of the goal has reached it as far as a timing can tell.
        """
        reached = ratio_of(model)
        figures: dict[str, Any] = {"metric": target.metric, "goal": target.goal, "reached": round(reached.value, 6)}
        if isinstance(ratio_of, LatencyRatio):
            figures.update(runtime=ratio_of.runtime, interval=ratio_of.last["interval"], timing=ratio_of.last)
            if ratio_of.exports:
                figures["exports"] = {"count": len(ratio_of.exports), "seconds": round(sum(ratio_of.exports), 1)}
        figures.update(tolerance=target.tolerance, found_by=steps[-1]["found_by"], trail=[row["tried"] for row in steps])
        ctx.details["target"] = figures
        missed = reached.value > target.goal * (1 + target.tolerance)
        if missed and (reached.low is None or reached.low > target.goal):
            interval = "" if reached.low is None else f" [{reached.low:.3g}-{reached.high:.3g}]"
            message = (
                f"target {target.metric}: {target.goal:g} not reached: the most this pruning can remove keeps "
                f"{reached.value:.3g}{interval} of the {target.metric} (channels left alone and why: details.left_alone)"
            )
            ctx.details.setdefault("warnings", []).append(message)
            ctx.logger.warning("%s: %s", self.name, message)
            raise StageError(message)


@hookimpl
def optkit_register_passes(register):
    register(PruneChannels)
