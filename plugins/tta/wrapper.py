"""Test-time augmentation as a module that traces and exports, merging each output by its kind.

YOLOv5's ``scale_img`` made a module: one forward runs the model on the input at several
``scales`` (bilinear resize, then padded on the right and bottom to a multiple of ``stride``, or
back to the input size with ``same_shape``) and ``flips``, and merges each output by its kind
(:mod:`optkit_plugins.tta.kinds`): classifier logits are averaged (``merge: mean``) or their
softmax probabilities are (``merge: softmax``); dense maps have the padding cropped off, are
resized back, un-flipped and averaged; YOLO-layout detections are de-scaled and un-flipped and the
anchors of all branches concatenated (:mod:`optkit_plugins.tta.detections`).

A model of several inputs is called with all of them (positionally and by keyword, as it was
called): every image input is flipped and scaled alike, the others (token ids, masks) pass through
(:mod:`optkit_plugins.tta.image_inputs`). Every branch calls the wrapped model, so MAC counts include each one. Python control flow depends
on shapes only, never on tensor values, so ``torch.export`` captures every branch and the wrapper
exports to ONNX; ``torch.fx.symbolic_trace``, which cannot see shapes, is refused with an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn
from torch.nn import functional as F

from optkit_plugins.tta.detections import merge_detections, restore_detections
from optkit_plugins.tta.image_inputs import DIFFERENT_SIZES, first_image, is_image, sizes_differ
from optkit_plugins.tta.kinds import Kind, OutputPlan, plan_outputs

__all__ = ["TestTimeAugmentation", "FLIP_DIMS", "MERGES", "padded_size"]

#: The tensor dimension each flip reverses (NCHW).
FLIP_DIMS = {"horizontal": -1, "vertical": -2}
MERGES = ("mean", "softmax")
DESCALES = ("exact", "nominal")
SAME_SHAPE_SCALES = "same_shape pads back to the input size, so scales must be <= 1.0"


def padded_size(size: Any, stride: int) -> Any:
    """``size`` rounded up to a multiple of ``stride``.

    Written with positive operands only: the TorchScript exporter records ``-(-h // s) * s`` as a
    truncating integer division (32 instead of 64 for h=48), which pads to less than the content
    and crops it: a valid ONNX file that computes something else.
    """
    return (size + stride - 1) // stride * stride


class TestTimeAugmentation(nn.Module):
    """Run ``model`` at several scales and flips and merge each output by its kind.

    Args:
        model: the model to wrap (called once per branch).
        scales: resize factors; ``1.0`` is the input as it is.
        flips: ``horizontal`` and/or ``vertical``; each scale runs unflipped and once per flip.
        merge: ``mean`` (average logits and maps) or ``softmax`` (average softmax probabilities
            over dim 1, so the result is probabilities).
        stride: scaled inputs are padded up to a multiple of this.
        pad_value: the value padding is filled with (0.0 is the mean of a normalised image;
            YOLOv5 pads [0, 1] images with 0.447).
        same_shape: pad (scales < 1) back to the input size instead, for models that take only
            one input size (ViT, MaxViT).
        plan: what each output is (:func:`~optkit_plugins.tta.kinds.plan_outputs`); by default
            it is worked out from the outputs on every call (and unknown layouts are refused).
        branches: explicit ``(scale, flip)`` pairs instead of every scale times every flip
            (Ultralytics' ``augment=True`` runs ``[(1.0, None), (0.83, "horizontal"), (0.67, None)]``).
        descale: detections are mapped back by the ``exact`` ratio of sizes, or by ``1/scale``
            (``nominal``, as YOLOv5 does).
        clip_levels: drop the large-object tail of the first branch and the small-object tail
            of the last, as Ultralytics' ``_clip_augmented`` (the number of detection levels).

    Example:
        >>> tta = TestTimeAugmentation(model, scales=[1.0, 0.83], flips=["horizontal"])
        >>> logits = tta(images)  # 4 branches
        >>> flow = TestTimeAugmentation(raft, flips=["horizontal"], plan=flow_plan)(frame1, frame2)  # both frames flipped
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
        *,
        plan: OutputPlan | None = None,
        branches: Sequence[tuple[float, str | None]] | None = None,
        descale: str = "exact",
        clip_levels: int | None = None,
    ):
        super().__init__()
        pairs = [(float(s), f) for s, f in branches] if branches is not None else [(float(s), f) for s in scales for f in (None, *flips)]
        unknown = [f for _, f in pairs if f is not None and f not in FLIP_DIMS]
        if unknown:
            raise ValueError(f"unknown flip {unknown[0]!r}; known: {', '.join(FLIP_DIMS)}")
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; known: {', '.join(MERGES)}")
        if descale not in DESCALES:
            raise ValueError(f"unknown descale {descale!r}; known: {', '.join(DESCALES)}")
        if same_shape and any(s > 1.0 for s, _ in pairs):
            raise ValueError(SAME_SHAPE_SCALES)
        self.model = model
        self.branch_list = pairs
        self.merge = merge
        self.stride = int(stride)
        self.pad_value = float(pad_value)
        self.same_shape = bool(same_shape)
        self.plan = plan
        self.descale = descale
        self.clip_levels = clip_levels

    @property
    def branches(self) -> list[tuple[float, str | None]]:
        """``(scale, flip)`` of every branch, in the order they run."""
        return list(self.branch_list)

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        # The model's inputs as it takes them. A first parameter of its own keeps a one-input model's
        # call model(x), whose export takes dynamic_shapes=({0: batch},) as the model's own would.
        packed: list[Any] = [x, args, kwargs]  # torch.fx.symbolic_trace hands *args and **kwargs over as proxies
        if any(isinstance(value, torch.fx.Proxy) for value in packed):
            # Outputs are restored by their shapes, which symbolic tracing cannot see: it would
            # silently keep one branch. torch.export (what the ONNX exporter uses) sees shapes.
            raise torch.fx.proxy.TraceError("TestTimeAugmentation cannot be traced with torch.fx.symbolic_trace; use torch.export.export")
        args = args if x is None else (x, *args)
        x = first_image(args, kwargs)
        image_hw = (x.shape[-2], x.shape[-1])
        plan, spec = self.plan, None
        restored: dict[int, list[torch.Tensor]] = {}
        targets: dict[int, tuple[Any, Any]] = {}
        for scale, flip in self.branch_list:
            branch_args, branch_kwargs, content, padded = self._augment(args, kwargs, scale, flip)
            output = self.model(*branch_args, **branch_kwargs)
            leaves, spec = pytree.tree_flatten(output)
            if plan is None:
                plan = plan_outputs(self.model, output, (int(padded[0]), int(padded[1])), x.shape[0])
            if len(leaves) != len(plan.kinds):
                raise RuntimeError(f"tta: the model returned {len(leaves)} outputs on a branch, {len(plan.kinds)} on the example")
            for i in plan.kept:
                kind = plan.kind_of(i)
                leaf = leaves[i]
                if kind.name == "detection":
                    nominal = scale if self.descale == "nominal" else None
                    leaf = restore_detections(leaf, kind.layout(), content, image_hw, flip, scale=nominal)
                elif kind.name in ("dense", "flow"):
                    if i not in targets:
                        targets[i] = _dense_target(leaf, padded, image_hw)
                    leaf = _restore_dense(leaf, flip, content, padded, targets[i])
                    if kind.name == "flow":
                        leaf = _restore_vectors(leaf, flip, content, image_hw)
                restored.setdefault(i, []).append(leaf)
        if plan is None or spec is None:
            raise RuntimeError("tta: no branch ran")
        merged = {i: self._merge(plan.kind_of(i), restored[i]) for i in plan.kept}
        if plan.keep_structure:
            return pytree.tree_unflatten([merged[i] for i in range(len(plan.kinds))], spec)
        kept = [merged[i] for i in plan.kept]
        return kept[0] if len(kept) == 1 else tuple(kept)

    def _augment(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], scale: float, flip: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, Any], tuple[Any, Any]]:
        """One branch's call: every image input flipped and rescaled alike, the other inputs as they are
        (the call has an image input: :func:`~optkit_plugins.tta.image_inputs.first_image` found it).

        Returns:
            The branch's positional and keyword arguments, and the first image input's content and
            padded sizes (see :meth:`_rescale`).

        Raises:
            ValueError: image inputs of different sizes at a scale other than 1.
        """
        images = [value for value in (*args, *kwargs.values()) if is_image(value)]
        if scale != 1.0 and sizes_differ(images):
            raise ValueError(DIFFERENT_SIZES)
        sizes: list[tuple[tuple[Any, Any], tuple[Any, Any]]] = []

        def one(value: Any) -> Any:
            if not is_image(value):
                return value
            value, content, padded = self._rescale(value if flip is None else value.flip(FLIP_DIMS[flip]), scale)
            sizes.append((content, padded))
            return value

        branch_args = tuple(one(value) for value in args)
        branch_kwargs = {name: one(value) for name, value in kwargs.items()}
        return branch_args, branch_kwargs, sizes[0][0], sizes[0][1]

    def _rescale(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, tuple[Any, Any], tuple[Any, Any]]:
        """Resize and pad ``x``; returns it, its content size and its padded size."""
        height, width = x.shape[-2], x.shape[-1]
        if scale == 1.0:
            return x, (height, width), (height, width)
        # A video [B, C, T, H, W] is resized in space only: its frames stay.
        factor, mode = ((1.0, scale, scale), "trilinear") if x.dim() == 5 else (scale, "bilinear")
        x = F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False, recompute_scale_factor=True)
        scaled_h, scaled_w = x.shape[-2], x.shape[-1]
        if self.same_shape:
            padded_h, padded_w = height, width
        else:
            padded_h, padded_w = padded_size(scaled_h, self.stride), padded_size(scaled_w, self.stride)
        x = F.pad(x, [0, padded_w - scaled_w, 0, padded_h - scaled_h], value=self.pad_value)
        return x, (scaled_h, scaled_w), (padded_h, padded_w)

    def _merge(self, kind: Kind, outputs: list[torch.Tensor]) -> torch.Tensor:
        if kind.name == "detection":
            return merge_detections(outputs, kind.layout(), self.clip_levels)
        if kind.name == "passthrough":
            return outputs[0]
        if self.merge == "softmax" and kind.name != "flow" and outputs[0].dim() >= 2:
            outputs = [o.softmax(dim=1) for o in outputs]
        elif len(outputs) == 1:
            return outputs[0]  # the identity case stays bit-exact
        return torch.stack(outputs).mean(dim=0)

    def extra_repr(self) -> str:
        kinds = self.plan.describe() if self.plan is not None else "inferred on each call"
        return (
            f"branches={self.branch_list}, merge={self.merge!r}, stride={self.stride}, pad_value={self.pad_value}, "
            f"same_shape={self.same_shape}, descale={self.descale!r}, outputs={kinds}"
        )


def _dense_target(output: torch.Tensor, padded_hw: tuple[Any, Any], image_hw: tuple[Any, Any]) -> tuple[Any, Any]:
    """The size of a dense output for the unscaled input, from one branch's output (rounded)."""
    out_h, out_w = output.shape[-2], output.shape[-1]
    padded_h, padded_w = padded_hw
    return ((image_hw[0] * out_h + padded_h // 2) // padded_h, (image_hw[1] * out_w + padded_w // 2) // padded_w)


def _restore_vectors(flow: torch.Tensor, flip: str | None, content_hw: tuple[Any, Any], image_hw: tuple[Any, Any]) -> torch.Tensor:
    """A restored ``[B, 2, h, w]`` field's vectors in the input's pixels and orientation: ``(u, v)``
    scaled by the input's size over the branch content's, the flipped component negated."""
    sign_u = -1.0 if flip == "horizontal" else 1.0
    sign_v = -1.0 if flip == "vertical" else 1.0
    u = flow[:, 0:1] * (sign_u * image_hw[1] / content_hw[1])
    v = flow[:, 1:2] * (sign_v * image_hw[0] / content_hw[0])
    return torch.cat([u, v], dim=1)


def _restore_dense(
    output: torch.Tensor, flip: str | None, content_hw: tuple[Any, Any], padded_hw: tuple[Any, Any], target: tuple[Any, Any]
) -> torch.Tensor:
    """Crop a dense map's padding, resize it to ``target`` and undo the flip."""
    out_h, out_w = output.shape[-2], output.shape[-1]
    if tuple(content_hw) != tuple(padded_hw):
        keep_h = (out_h * content_hw[0] + padded_hw[0] // 2) // padded_hw[0]
        keep_w = (out_w * content_hw[1] + padded_hw[1] // 2) // padded_hw[1]
        output = output[..., :keep_h, :keep_w]
    if tuple(output.shape[-2:]) != tuple(target):
        output = F.interpolate(output, size=tuple(target), mode="bilinear", align_corners=False)
    return output if flip is None else output.flip(FLIP_DIMS[flip])
