"""The ``prune_l1`` pass: L1-magnitude pruning, unstructured (zeros, :mod:`~optkit_plugins.prune_l1.unstructured`)
or structured (whole channels, :mod:`~optkit_plugins.prune_l1.channels`)."""

from __future__ import annotations

import fnmatch
import logging
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator
from torch import nn

from optkit import ClassifierNotFoundError, Pass, PassContext, StageError, find_classifier, hookimpl
from optkit_plugins.detection_heads import torchvision_detector
from optkit_plugins.prune_l1.channels import PRUNABLE, prune_channels
from optkit_plugins.prune_l1.detectors import backbone_to_prune
from optkit_plugins.prune_l1.unstructured import prune_unstructured

__all__ = ["PruneL1", "channel_limits", "optkit_register_passes", "warn_if_nothing_removed"]

log = logging.getLogger(__name__)


class PruneL1(Pass):
    """L1-magnitude pruning of convolution and Linear layers (weights or whole channels)."""

    name = "prune_l1"
    summary = "L1-magnitude pruning: unstructured zeros, or whole channels for a smaller, faster model."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``prune_l1``."""

        mode: Literal["unstructured", "channels"] = Field(
            "unstructured", description="unstructured: zero single weights; channels: remove whole output channels."
        )
        amount: float = Field(
            0.3,
            ge=0.0,
            lt=1.0,
            description="Share to remove: of the selected weights (unstructured), or of each group's channels (channels).",
        )
        scope: Literal["global", "layer"] | None = Field(
            None,
            description="unstructured only: global (one threshold over all selected layers, the default) or layer "
            "(the same share in each). Channels are always removed per group (layer).",
        )
        include: list[str] = Field(
            default_factory=lambda: ["*"],
            description="Glob patterns of layer names to prune (channels: layers not included keep their output widths).",
        )
        exclude: list[str] = Field(
            default_factory=list,
            description="Glob patterns of layer names to leave alone entirely (channels: their inputs too).",
        )
        prune_classifier: bool = Field(False, description="Also prune the final classifier (left alone by default).")
        round_to: PositiveInt = Field(1, description="channels only: keep a multiple of this many channels per group (e.g. 8).")
        free_outputs: list[str] = Field(
            default_factory=list,
            description="channels only: model outputs whose channel count may change: an output whose pytree path "
            "(\"[1]['feats'][0]\" in eval mode, \"['feats'][0]\" in train mode) contains one of these, e.g. \"['feats']\". "
            "By default every output keeps its shape.",
        )
        prune_heads: bool = Field(
            False,
            description="channels only: layers inside detection/segmentation heads (module rules) may lose output "
            "channels too; by default they keep them (their outputs are decoded by position).",
        )

        @model_validator(mode="after")
        def _mode_options(self) -> PruneL1.Options:
            if self.mode == "channels" and self.scope == "global":
                raise ValueError(
                    "scope: global is for mode: unstructured; mode: channels removes `amount` of every channel group (scope: layer)"
                )
            if self.mode == "unstructured" and self.round_to != 1:
                raise ValueError("round_to is for mode: channels; unstructured pruning removes single weights")
            if self.mode == "unstructured" and (self.free_outputs or self.prune_heads):
                raise ValueError("free_outputs and prune_heads are for mode: channels; unstructured pruning keeps every shape")
            return self

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Prune ``model``; see the module docstring for the two modes.

        Args:
            model: the model, this stage's to change: unstructured pruning zeroes its weights in
                place; channel pruning returns a slimmer model built from it.
            ctx: the stage context; ``details`` receives sparsity or channels per layer.

        Returns:
            The pruned model.
        """
        options = self.options
        if options.mode == "channels":
            return self._prune_channels(model, ctx)
        selected = _select_layers(model, options, ctx.details)
        prune_unstructured(selected, options.amount, options.scope or "global", ctx.details)
        return model

    def _prune_channels(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Whole channels on the executed graph (:func:`~optkit_plugins.prune_l1.channels.prune_channels`)."""
        options = self.options
        if ctx.example_inputs.kwargs:
            raise StageError(
                f"prune_l1: mode channels traces models called with positional inputs, and this one takes "
                f"{', '.join(ctx.example_inputs.kwargs)} by keyword; use mode: unstructured, or give model.inputs as a list"
            )
        excluded, keep = channel_limits(model, options, ctx.details)
        detector = torchvision_detector(model)
        traced, inputs = model, _positional_inputs(ctx)
        if detector is not None:  # the backbone alone: see optkit_plugins.prune_l1.detectors
            traced, inputs = backbone_to_prune(model, detector, ctx.require_single_input(self.name), ctx.details)
        result = prune_channels(
            traced,
            inputs,
            options.amount,
            rules=ctx.module_rules,
            round_to=options.round_to,
            exclude=excluded,
            keep_outputs=keep,
            free_outputs=options.free_outputs,
            prune_heads=options.prune_heads,
        )
        ctx.details.update(result.details())
        warn_if_nothing_removed(ctx, result.removed_channels(), len(result.groups), options.amount, self.name)
        if result.not_traced:
            ctx.logger.warning(
                "prune_l1: %d module(s) with weights ran in neither eval nor train mode on the example input, so what "
                "feeds them is not proven: %s",
                len(result.not_traced),
                ", ".join(result.not_traced[:5]),
            )
        if detector is not None:
            model.backbone = result.model.backbone
            return model
        return result.model


def warn_if_nothing_removed(ctx: PassContext, removed: int, groups: int, amount: float, stage: str) -> None:
    """A stage asked to remove channels that removed none says so: in the console and in ``details.warnings``.

    Args:
        ctx: the stage context.
        removed: output channels removed.
        groups: prunable groups found.
        amount: the share asked for.
        stage: the pass name.
    """
    if amount <= 0 or removed:
        return
    if not groups:
        message = "no channel group can be pruned; the model is unchanged (see details.left_alone)"
    else:
        message = f"amount {amount:g} removes no channel: every group is too small to lose one (see details.groups)"
    ctx.details.setdefault("warnings", []).append(message)
    ctx.logger.warning("%s: %s", stage, message)


def channel_limits(model: nn.Module, options: Any, details: dict[str, Any], stage: str = "prune_l1") -> tuple[list[str], dict[str, str]]:
    """What channel pruning must leave alone: the layers ``exclude`` names (inputs and outputs), and
    the output widths of the layers ``include`` and ``prune_classifier`` leave out (with why).

    Args:
        model: the model.
        options: the pass's options (``include``, ``exclude``, ``prune_classifier``).
        details: the stage's details (``classifier_left_alone`` is added).
        stage: the pass name, for messages.

    Raises:
        StageError: a pattern matches no layer, or nothing is left to prune.
    """
    selected = _select_layers(model, options, details, stage)
    layers = _layers(model)
    excluded = [name for name in layers if _matches_any(name, options.exclude)]
    classifier = details.get("classifier_left_alone")
    keep = {
        name: "are the classifier's (prune_classifier: false)" if name == classifier else "are not selected (include)"
        for name in layers
        if name not in selected and name not in excluded
    }
    return excluded, keep


def _select_layers(model: nn.Module, options: Any, details: dict[str, Any], stage: str = "prune_l1") -> dict[str, nn.Module]:
    """The convolution and Linear layers that ``include``/``exclude`` and the classifier rule allow.

    Raises:
        StageError: a pattern matches no such layer, or nothing is left to prune.
    """
    layers = _layers(model)
    for option in ("include", "exclude"):
        for pattern in getattr(options, option):
            if pattern != "*" and not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
                examples = ", ".join(list(layers)[:4])
                raise StageError(
                    f"{stage}: {option} pattern {pattern!r} matches no convolution or Linear layer (they are named like {examples})"
                )
    selected = {name: m for name, m in layers.items() if _matches_any(name, options.include) and not _matches_any(name, options.exclude)}
    if not options.prune_classifier:
        try:
            head, _ = find_classifier(model)
        except ClassifierNotFoundError as exc:
            log.info("%s: no classifier found, none excluded (%s)", stage, exc)
            head = None
        details["classifier_left_alone"] = head
        if head is not None:
            selected.pop(head, None)
    if not selected:
        raise StageError(f"{stage}: no convolution or Linear layer is left to prune; check include, exclude and prune_classifier")
    return selected


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The convolution and Linear layers of ``model``, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def _matches_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@hookimpl
def optkit_register_passes(register):
    register(PruneL1)


def _positional_inputs(ctx: PassContext) -> Any:
    """What the channel trace runs the model on: the one input tensor, or the tuple of several."""
    return ctx.example_input if ctx.example_inputs.single else ctx.example_inputs.args
