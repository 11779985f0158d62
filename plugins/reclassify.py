"""The ``reclassify`` pass: give any classifier a new head with ``num_classes`` outputs.

YOLOv5's ``load_classifier``, made general: the head is found structurally
(:func:`optkit.find_classifier`), heads averaged into the logits (LeViT's and DeiT's
``head_dist``) and auxiliary heads (GoogLeNet, Inception v3) are replaced too, and ``keep`` builds the new head from rows of the old one, so the kept classes give
the old logits with no training (the same weights; a narrower GEMM may round in another order).
A torchvision two-stage detector gets its scores and box deltas (and mask logits) replaced together
(:mod:`optkit_plugins.detection_heads`); its ``num_classes`` counts the background class 0.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from optkit import (
    ClassifierNotFoundError,
    Pass,
    PassContext,
    StageError,
    auxiliary_classifiers,
    find_classifier,
    hookimpl,
    in_width,
    out_width,
    replace_module,
)
from optkit_plugins.detection_heads import ClassHead, DetectorHeadsRefused, detector_class_heads

__all__ = ["Reclassify", "new_head"]

log = logging.getLogger(__name__)


def new_head(old: nn.Module, num_classes: int, keep: list[int] | None = None, init: str = "default") -> nn.Module:
    """A head like ``old`` (same type, in-features, bias, device, dtype) with ``num_classes`` outputs.

    Args:
        old: an ``nn.Linear`` or a convolution (``groups=1``).
        num_classes: outputs of the new head.
        keep: old output rows to copy, in order: output ``i`` of the new head is output
            ``keep[i]`` of the old one. Rows past ``len(keep)`` are initialised per ``init``.
        init: ``default`` (PyTorch's own initialisation, from the CPU random generator, so that
            a seed gives the same head on every device) or ``zeros``.

    Returns:
        The new layer, on ``old``'s device.
    """
    factory = {"device": "cpu", "dtype": old.weight.dtype}
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        head: nn.Module = nn.Linear(old.in_features, num_classes, bias=bias, **factory)
    else:
        head = type(old)(
            old.in_channels,
            num_classes,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            groups=1,
            bias=bias,
            padding_mode=old.padding_mode,
            **factory,
        )
    old_weight, old_bias = old.get_parameter("weight"), old.bias
    head = head.to(old_weight.device)
    weight, new_bias = head.get_parameter("weight"), head.get_parameter("bias") if bias else None
    with torch.no_grad():
        if init == "zeros":
            weight.zero_()
            if new_bias is not None:
                new_bias.zero_()
        if keep:
            rows = torch.tensor(keep, device=old_weight.device)
            weight[: len(keep)] = old_weight.index_select(0, rows)
            if new_bias is not None and isinstance(old_bias, torch.Tensor):
                new_bias[: len(keep)] = old_bias.index_select(0, rows)
    return head


class Reclassify(Pass):
    """Replace the classifier head (and auxiliary heads) with one of ``num_classes`` outputs."""

    name = "reclassify"
    summary = "Give a classifier a new head with num_classes outputs (optionally keeping old classes, freezing the backbone)."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``reclassify``."""

        num_classes: PositiveInt | None = Field(None, description="Outputs of the new head; default: len(keep).")
        layer: str | None = Field(None, description="Dotted name of the head; default: found from the model's graph.")
        init: Literal["default", "zeros"] = Field("default", description="How new rows are initialised.")
        keep: list[NonNegativeInt] | None = Field(
            None,
            description="Old class indices whose rows start the new head: new logit i == old logit keep[i]; "
            "rows past len(keep) are initialised per init.",
        )
        freeze: Literal["none", "backbone"] = Field("none", description="backbone: only the head(s) stay trainable.")
        aux: bool = Field(True, description="Also replace auxiliary heads (GoogLeNet, Inception v3).")
        seed: int = Field(0, description="Seed of the default initialisation (the global RNG is left as it was).")

        @model_validator(mode="after")
        def _sizes_agree(self) -> Reclassify.Options:
            if self.num_classes is None and not self.keep:
                raise ValueError("give num_classes, or keep (num_classes then defaults to len(keep))")
            if self.keep is not None:
                if len(set(self.keep)) != len(self.keep):
                    raise ValueError(f"keep lists a class twice: {self.keep}")
                if self.num_classes is not None and len(self.keep) > self.num_classes:
                    raise ValueError(f"keep has {len(self.keep)} classes, more than num_classes={self.num_classes}")
            return self

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        opts = self.options
        if opts.num_classes is not None:
            num_classes = opts.num_classes
        else:
            assert opts.keep is not None  # the options' validator requires num_classes or keep
            num_classes = len(opts.keep)
        heads = self._heads(model)
        replaced: list[dict[str, Any]] = []
        # The CPU generator only, saved and restored: torch.manual_seed would reseed every CUDA
        # generator too, and fork_rng(devices=[]) would not restore them.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(opts.seed)
            for head in heads:
                self._check(head)
                keep = [k * head.rows_per_class + r for k in opts.keep for r in range(head.rows_per_class)] if opts.keep else None
                replace_module(model, head.name, new_head(head.module, num_classes * head.rows_per_class, keep, opts.init))
                replaced.append(
                    {
                        "layer": head.name,
                        "type": type(head.module).__name__,
                        "in_features": in_width(head.module),
                        "old_classes": out_width(head.module) // head.rows_per_class,
                        "new_classes": num_classes,
                    }
                )
                if head.rows_per_class != 1:
                    replaced[-1]["outputs_per_class"] = head.rows_per_class
        if opts.freeze == "backbone":
            new_heads = {id(model.get_submodule(h["layer"])) for h in replaced}
            for module in model.modules():
                trainable = id(module) in new_heads
                for p in module.parameters(recurse=False):
                    p.requires_grad_(trainable)
        ctx.details.update(
            heads=replaced,
            num_classes=num_classes,
            init=opts.init,
            freeze=opts.freeze,
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
        if opts.keep:
            ctx.details["keep"] = list(opts.keep)
            ctx.details["note"] = (
                f"outputs 0..{len(opts.keep) - 1} are copies of old classes {opts.keep}: logits[:, i] equals the old "
                f"logits[:, keep[i]] (the same rows of weights, up to float rounding), with no training"
                + (f"; outputs {len(opts.keep)}..{num_classes - 1} are new ({opts.init} init)" if num_classes > len(opts.keep) else "")
            )
        ctx.logger.info("reclassify: %s -> %d classes", ", ".join(h["layer"] for h in replaced), num_classes)
        return model

    def _heads(self, model: nn.Module) -> list[ClassHead]:
        """The layers to replace: a detector's class heads together, else the classifier and its auxiliary heads."""
        opts = self.options
        try:
            detector_heads = detector_class_heads(model)
        except DetectorHeadsRefused as exc:
            raise StageError(str(exc)) from None
        if detector_heads is not None:
            names = [h.name for h in detector_heads]
            if opts.layer is not None and opts.layer not in names:
                raise StageError(f"option layer: {opts.layer!r} is not a class head of {type(model).__name__}; its class heads are {names}")
            return detector_heads
        try:
            name, old = find_classifier(model, opts.layer)
        except ClassifierNotFoundError as exc:  # a stage failure: the model was loaded and measured
            raise StageError(exc.message) from None
        heads = [(name, old), *_averaged_with(model, name)]
        if opts.aux and opts.layer is None:
            heads += [(n, m) for n, m in auxiliary_classifiers(model) if n not in dict(heads)]
        return [ClassHead(n, m, 1) for n, m in heads]

    def _check(self, head: ClassHead) -> None:
        name, keep = head.name, self.options.keep or []
        classes = out_width(head.module) // head.rows_per_class
        out_of_range = [k for k in keep if k >= classes]
        if out_of_range:
            raise StageError(f"option keep: class index {out_of_range[0]} is out of range for head {name!r}, which has {classes} classes")
        if not isinstance(head.module, nn.Linear) and head.module.groups != 1:
            raise StageError(f"head {name!r} is a grouped convolution (groups={head.module.groups}); name another with option layer")


def _averaged_with(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The heads averaged with head ``name`` into the logits (LeViT's ``head_dist``), without it: a class is a row of each."""
    try:
        averaged = [find_classifier(model)[0], *(n for n, _ in auxiliary_classifiers(model, training_outputs=False))]
    except ClassifierNotFoundError:  # ``layer`` named a head of a model whose output shows none
        return []
    return [(n, model.get_submodule(n)) for n in averaged if n != name] if name in averaged else []


@hookimpl
def optkit_register_passes(register):
    """Register :class:`Reclassify`."""
    register(Reclassify)
