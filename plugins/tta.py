"""The ``tta`` pass: test-time augmentation as a module that traces and exports.

YOLOv5's ``scale_img`` made a pass: one forward runs the model on the input at several
``scales`` (bilinear resize, then padded on the right and bottom to a multiple of ``stride``, or
back to the input size with ``same_shape``) and ``flips``, and merges the results. Classifier
logits are averaged (``merge: mean``) or their softmax probabilities are (``merge: softmax``);
dense outputs (``N×C×H×W``, also inside dicts such as torchvision segmentation's
``{'out', 'aux'}``) have the padding cropped off, are resized back to a common size, have their
flip undone, and are then averaged.

Every branch calls the wrapped model, so thop counts each one. There is no Python control flow on
tensor values (only on shapes), so ``torch.export`` captures every branch and the wrapper exports
to ONNX; ``torch.fx.symbolic_trace``, which cannot see shapes, is refused with an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.fx
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from optkit import Pass, PassContext, hookimpl
from optkit.errors import StageError
from optkit.measure import count_macs

__all__ = ["TestTimeAugmentation", "TTA"]

log = logging.getLogger(__name__)

#: The tensor dimension each flip reverses (NCHW).
FLIP_DIMS = {"horizontal": -1, "vertical": -2}
MERGES = ("mean", "softmax")
SAME_SHAPE_SCALES = "same_shape pads back to the input size, so scales must be <= 1.0"


class TestTimeAugmentation(nn.Module):
    """Run ``model`` at several scales and flips and merge the outputs.

    Args:
        model: the model to wrap (called once per branch).
        scales: resize factors; ``1.0`` is the input as it is.
        flips: ``horizontal`` and/or ``vertical``; each scale runs unflipped and once per flip.
        merge: ``mean`` (average the outputs) or ``softmax`` (average softmax probabilities over
            dim 1, so the result is probabilities).
        stride: scaled inputs are padded up to a multiple of this.
        pad_value: the value padding is filled with (0.0 is the mean of a normalised image;
            YOLOv5 pads [0, 1] images with 0.447).
        same_shape: pad (scales < 1) back to the input size instead, for models that take only
            one input size (ViT, MaxViT).

    Example:
        >>> tta = TestTimeAugmentation(model, scales=[1.0, 0.83], flips=["horizontal"])
        >>> logits = tta(images)  # 4 branches
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        model: nn.Module,
        scales: Sequence[float] = (1.0,),
        flips: Sequence[str] = (),
        merge: str = "mean",
        stride: int = 32,
        pad_value: float = 0.0,
        same_shape: bool = False,
    ):
        super().__init__()
        unknown = [f for f in flips if f not in FLIP_DIMS]
        if unknown:
            raise ValueError(f"unknown flip {unknown[0]!r}; known: {', '.join(FLIP_DIMS)}")
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; known: {', '.join(MERGES)}")
        if same_shape and any(s > 1.0 for s in scales):
            raise ValueError(SAME_SHAPE_SCALES)
        self.model = model
        self.scales = [float(s) for s in scales]
        self.flips = list(flips)
        self.merge = merge
        self.stride = int(stride)
        self.pad_value = float(pad_value)
        self.same_shape = bool(same_shape)

    @property
    def branches(self) -> list[tuple[float, str | None]]:
        """``(scale, flip)`` of every branch, in the order they run."""
        return [(scale, flip) for scale in self.scales for flip in (None, *self.flips)]

    def forward(self, x: torch.Tensor) -> Any:
        if isinstance(x, torch.fx.Proxy):
            # Outputs are restored by their rank, which symbolic tracing cannot see: it would
            # silently keep one branch. torch.export (what the ONNX exporter uses) sees shapes.
            raise torch.fx.proxy.TraceError(
                "TestTimeAugmentation cannot be traced with torch.fx.symbolic_trace; use torch.export.export"
            )
        height, width = x.shape[-2], x.shape[-1]
        outputs = []
        target = None
        for scale, flip in self.branches:
            branch = x if flip is None else x.flip(FLIP_DIMS[flip])
            branch, valid = self._rescale(branch, scale, height, width)
            output = self.model(branch)
            if target is None:
                target = _output_size(output, valid, (height, width))
            outputs.append(_restore(output, flip, valid, target))
        return _merge(outputs, self.merge)

    def _rescale(self, x: torch.Tensor, scale: float, height: Any, width: Any) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """Resize and pad ``x``; returns it and ``(content h, content w, padded h, padded w)``."""
        if scale == 1.0:
            return x, (height, width, height, width)
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True)
        scaled_h, scaled_w = x.shape[-2], x.shape[-1]
        if self.same_shape:
            padded_h, padded_w = height, width
        else:
            padded_h = -(-scaled_h // self.stride) * self.stride
            padded_w = -(-scaled_w // self.stride) * self.stride
        x = F.pad(x, [0, padded_w - scaled_w, 0, padded_h - scaled_h], value=self.pad_value)
        return x, (scaled_h, scaled_w, padded_h, padded_w)

    def extra_repr(self) -> str:
        return (
            f"scales={self.scales}, flips={self.flips}, merge={self.merge!r}, stride={self.stride}, "
            f"pad_value={self.pad_value}, same_shape={self.same_shape}"
        )


def _is_dense(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point()


def _output_size(output: Any, valid: tuple[Any, ...], size: tuple[Any, Any]) -> Any:
    """The spatial size of each dense output of the unscaled input, from one branch's output."""
    if _is_dense(output):
        _, _, padded_h, padded_w = valid
        out_h, out_w = output.shape[-2], output.shape[-1]
        # The output's size relative to its input, applied to the original input (rounded).
        return ((size[0] * out_h + padded_h // 2) // padded_h, (size[1] * out_w + padded_w // 2) // padded_w)
    if isinstance(output, dict):
        return {k: _output_size(v, valid, size) for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return [_output_size(v, valid, size) for v in output]
    return None


def _restore(output: Any, flip: str | None, valid: tuple[Any, ...], target: Any) -> Any:
    """Undo a branch's augmentation on dense outputs: crop the padding, resize to ``target``, unflip."""
    if _is_dense(output):
        scaled_h, scaled_w, padded_h, padded_w = valid
        out_h, out_w = output.shape[-2], output.shape[-1]
        if (scaled_h, scaled_w) != (padded_h, padded_w):
            keep_h = (out_h * scaled_h + padded_h // 2) // padded_h
            keep_w = (out_w * scaled_w + padded_w // 2) // padded_w
            output = output[..., :keep_h, :keep_w]
        if tuple(output.shape[-2:]) != tuple(target):
            output = F.interpolate(output, size=tuple(target), mode="bilinear", align_corners=False)
        return output if flip is None else output.flip(FLIP_DIMS[flip])
    if isinstance(output, dict):
        return type(output)((k, _restore(v, flip, valid, target[k])) for k, v in output.items())
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(_restore(v, flip, valid, t) for v, t in zip(output, target)))
    if isinstance(output, (tuple, list)):
        return type(output)(_restore(v, flip, valid, t) for v, t in zip(output, target))
    return output


def _merge(outputs: list[Any], merge: str) -> Any:
    """Average the branches' outputs, structure by structure."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        if not first.is_floating_point():
            return first
        if merge == "softmax" and first.dim() >= 2:
            outputs = [o.softmax(dim=1) for o in outputs]
        elif len(outputs) == 1:
            return first  # the identity case stays bit-exact
        return torch.stack(outputs).mean(dim=0)
    if isinstance(first, dict):
        return type(first)((k, _merge([o[k] for o in outputs], merge)) for k in first)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_merge(list(items), merge) for items in zip(*outputs)))
    if isinstance(first, (tuple, list)):
        return type(first)(_merge(list(items), merge) for items in zip(*outputs))
    return first


class TTA(Pass):
    """Wrap the model in :class:`TestTimeAugmentation`."""

    name = "tta"
    summary = "Test-time augmentation: run the model at several scales and flips in one forward and merge the outputs."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``tta``."""

        scales: list[PositiveFloat] = Field([1.0, 0.83, 0.67], min_length=1, description="Resize factors (1.0: as is).")
        flips: list[Literal["horizontal", "vertical"]] = Field(
            ["horizontal"], description="Flipped branches added at every scale (the unflipped one always runs)."
        )
        merge: Literal["mean", "softmax"] = Field(
            "mean", description="mean: average outputs (logits); softmax: average probabilities over dim 1."
        )
        stride: PositiveInt = Field(32, description="Scaled inputs are padded to a multiple of this.")
        pad_value: float = Field(0.0, description="Padding fill (0.0 = mean of a normalised image; YOLOv5: 0.447).")
        same_shape: bool = Field(False, description="Pad back to the input size (models with a fixed input size).")

        @field_validator("scales", "flips")
        @classmethod
        def _no_repeats(cls, value: list[Any]) -> list[Any]:
            if len(set(value)) != len(value):
                raise ValueError(f"lists a value twice: {value}")
            return value

        @model_validator(mode="after")
        def _same_shape_shrinks(self) -> TTA.Options:
            if self.same_shape and any(s > 1.0 for s in self.scales):
                raise ValueError(SAME_SHAPE_SCALES)
            return self

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        opts = self.options
        wrapped = TestTimeAugmentation(model, opts.scales, opts.flips, opts.merge, opts.stride, opts.pad_value, opts.same_shape)
        height, width = ctx.example_input.shape[-2:]
        try:
            with torch.inference_mode():
                wrapped(ctx.example_input)
        # A model with a fixed input size rejects the scaled inputs (ViT asserts, others raise
        # RuntimeError on a shape mismatch): say which option fixes it.
        except (RuntimeError, AssertionError) as exc:
            hint = "" if opts.same_shape else "; models with a fixed input size need same_shape: true"
            raise StageError(f"the model fails on the augmented inputs ({type(exc).__name__}: {exc}){hint}") from exc
        base_macs = count_macs(model, ctx.example_input)["macs"]
        tta_macs = count_macs(wrapped, ctx.example_input)["macs"]
        ctx.details.update(
            branches=[
                {"scale": scale, "flip": flip or "none", "input_hw": list(_branch_size(scale, height, width, opts))}
                for scale, flip in wrapped.branches
            ],
            merge=opts.merge,
            base_macs=base_macs,
            tta_macs=tta_macs,
            cost_multiplier=tta_macs / base_macs if base_macs else None,
        )
        ctx.logger.info("tta: %d branches, %.2fx the MACs", len(wrapped.branches), ctx.details["cost_multiplier"] or 0)
        return wrapped


def _branch_size(scale: float, height: int, width: int, opts: TTA.Options) -> tuple[int, int]:
    """The input size a branch runs at (as :meth:`TestTimeAugmentation._rescale` makes it)."""
    if scale == 1.0:
        return int(height), int(width)
    if opts.same_shape:
        return int(height), int(width)
    return tuple(-(-int(d * scale) // opts.stride) * opts.stride for d in (height, width))


@hookimpl
def optkit_register_passes(register):
    """Register :class:`TTA`."""
    register(TTA)
