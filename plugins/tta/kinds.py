"""What each output tensor of a model is, so that TTA merges it correctly or refuses it.

Kinds:

* ``classification``: ``[B, C]`` floating logits or probabilities: averaged (or softmax-averaged);
* ``dense``: ``[B, C, h, w]`` floating maps whose size is proportional to the input's
  (``h/H == w/W`` up to rounding: segmentation logits, depth, heatmaps): padding cropped,
  resized back, un-flipped, averaged;
* ``detection``: YOLO layout, ``[B, 4+nc(+extra), anchors]`` (Ultralytics, ``channels_dim=1``) or
  ``[B, anchors, 5+nc]`` (YOLOv5, ``channels_dim=2``), xywh boxes in input pixels: each branch
  de-scaled and un-flipped, the anchors of every branch concatenated (YOLOv5's ``_descale_pred``);
* ``flow``: a declared ``[B, 2, h, w]`` dense vector field (optical flow: ``u`` horizontal, ``v``
  vertical, in input pixels): restored like ``dense``, and the vectors too: ``u`` negated after a
  horizontal flip, ``v`` after a vertical one, each rescaled by the ratio of input sizes;
* ``passthrough``: tensors that are not floating point (indices, masks): the first branch's.

Anything else is refused with :class:`UnknownOutputError`, whose message says what to declare.
Recognised Ultralytics and YOLOv5 models (:func:`optkit_plugins.module_rules.yolo.recognise_yolo`) need no
declaration: their deployment output is a detection, and their raw training-style outputs
(``boxes``, ``scores``, ``feats``) are dropped, as Ultralytics' own ``augment=True`` drops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit_plugins.module_rules.yolo import YoloModel, recognise_yolo

__all__ = ["Kind", "DetectionLayout", "OutputPlan", "UnknownOutputError", "plan_outputs", "infer_kind", "DECLARABLE"]

KindName = Literal["classification", "dense", "flow", "detection", "passthrough"]
#: What ``tta: {output: ...}`` accepts.
DECLARABLE = ("classification", "dense", "flow", "detection")

WHAT_TO_DECLARE = (
    "Declare it: `tta: {output: detection}` for YOLO-layout detections ([B, 4+nc, anchors] with xywh boxes "
    "in input pixels; add output_index when the model returns several tensors), `output: classification` "
    "for [B, C] logits, `output: dense` for maps that follow the input's geometry, `output: flow` for [B, 2, h, w] "
    "vector fields (optical flow)"
)


class UnknownOutputError(ValueError):
    """An output TTA cannot merge safely, or a declaration that does not fit; the message says what to do."""


@dataclass(frozen=True)
class DetectionLayout:
    """Where things are in a YOLO-layout prediction tensor.

    Attributes:
        channels_dim: the dim holding ``[x, y, w, h, (obj,) classes..., extra...]`` (1 or 2); the
            other non-batch dim holds the anchors, along which branches are concatenated.
        class_offset: the first channel after the box (4; 5 for YOLOv5, objectness at 4).
        extra: geometric channels after the class scores that are transformed too: ``none``,
            ``keypoints`` (``K`` groups of x, y(, visibility) in input pixels) or ``angle`` (OBB,
            radians in [-pi/4, 3pi/4)).
        extra_start: the channel where ``extra`` starts.
        kpt_shape: ``(K, D)`` for keypoints.
        flip_idx: the keypoint permutation a horizontal flip needs (left and right swap).
    """

    channels_dim: int = 1
    class_offset: int = 4
    extra: str = "none"
    extra_start: int | None = None
    kpt_shape: tuple[int, int] | None = None
    flip_idx: tuple[int, ...] | None = None

    @property
    def anchor_dim(self) -> int:
        return 2 if self.channels_dim == 1 else 1


@dataclass(frozen=True)
class Kind:
    """The kind of one output tensor."""

    name: KindName
    detection: DetectionLayout | None = None

    def layout(self) -> DetectionLayout:
        """The detection layout of a ``detection`` output."""
        if self.detection is None:
            raise ValueError(f"a {self.name} output has no detection layout")
        return self.detection


@dataclass
class OutputPlan:
    """What the TTA wrapper does with each tensor of the model's output.

    Attributes:
        kinds: one per tensor in flattening order (``torch.utils._pytree``, the exporters' order);
            ``None`` for tensors the wrapper does not return.
        paths: the path of each tensor (``[0]``, ``['out']``), for messages and the report.
        keep_structure: return the model's own structure (every tensor kept) rather than the
            kept tensors alone (one tensor, or a tuple).
        source: ``inferred``, ``declared``, or ``recognised: <library> <task> model (<head>)``.
        notes: what a reader of the report should know (outputs dropped, ...).
        yolo: the recognised model, when there is one.
    """

    kinds: list[Kind | None]
    paths: list[str]
    keep_structure: bool = True
    source: str = "inferred"
    notes: list[str] = field(default_factory=list)
    yolo: YoloModel | None = None

    @property
    def kept(self) -> list[int]:
        return [i for i, kind in enumerate(self.kinds) if kind is not None]

    def kind_of(self, i: int) -> Kind:
        """The kind of output ``i``, one the wrapper keeps."""
        kind = self.kinds[i]
        if kind is None:
            raise ValueError(f"output {self.paths[i]} is not kept")
        return kind

    def describe(self) -> list[dict[str, Any]]:
        """One row per kept output, for the stage's details."""
        rows = []
        for i in self.kept:
            kind = self.kind_of(i)
            row: dict[str, Any] = {"output": self.paths[i], "kind": kind.name}
            if kind.detection is not None:
                layout = kind.detection
                row["layout"] = {"channels_dim": layout.channels_dim, "class_offset": layout.class_offset, "extra": layout.extra}
            rows.append(row)
        return rows


def _proportional(t: torch.Tensor, input_hw: tuple[int, int]) -> bool:
    """Whether a map's spatial size is the input's times one factor, up to a pixel of rounding."""
    h, w = int(t.shape[-2]), int(t.shape[-1])
    height, width = input_hw
    return h >= 1 and w >= 1 and abs(h * width - w * height) <= max(height, width)


def infer_kind(leaf: Any, input_hw: tuple[int, int], batch: int) -> Kind | str:
    """The kind of one output tensor from its type and shape, or why it cannot be told."""
    if not isinstance(leaf, torch.Tensor):
        return f"is a {type(leaf).__name__}, not a tensor"
    if not leaf.is_floating_point():
        return Kind("passthrough")
    if leaf.dim() == 0 or leaf.shape[0] != batch:
        return f"has shape {list(leaf.shape)}, whose first dimension is not the batch ({batch})"
    if leaf.dim() == 2:
        return Kind("classification")
    if leaf.dim() == 4 and _proportional(leaf, input_hw):
        return Kind("dense")
    return f"has shape {list(leaf.shape)}, which is neither [B, C] logits nor a [B, C, h, w] map proportional to the input {list(input_hw)}"


def _refusal(path: str, reason: str) -> UnknownOutputError:
    return UnknownOutputError(f"tta: output {path} {reason}, so it is not known how to undo the augmentation on it. {WHAT_TO_DECLARE}")


def _resolve_index(index: int | str | None, paths: list[str]) -> int:
    if index is None:
        if len(paths) != 1:
            raise UnknownOutputError(
                f"tta: the model returns {len(paths)} tensors ({', '.join(paths)}); say which one is declared with output_index"
            )
        return 0
    if isinstance(index, int):
        if not -len(paths) <= index < len(paths):
            raise UnknownOutputError(
                f"tta: output_index {index} is out of range: the model returns {len(paths)} tensors ({', '.join(paths)})"
            )
        return index % len(paths)
    if index in paths:
        return paths.index(index)
    raise UnknownOutputError(f"tta: output_index {index!r} names no output; the outputs are {', '.join(paths)}")


def _only(index: int, paths: list[str], kind: Kind, source: str, yolo: YoloModel | None = None) -> OutputPlan:
    """A plan that keeps one output and drops the others (noted)."""
    kinds: list[Kind | None] = [None] * len(paths)
    kinds[index] = kind
    plan = OutputPlan(kinds, paths, keep_structure=len(paths) == 1, source=source, yolo=yolo)
    dropped = [p for i, p in enumerate(paths) if i != index]
    if dropped:
        plan.notes.append(f"outputs {', '.join(dropped)} are not returned by the TTA wrapper")
    return plan


def _declared(
    declared: str, leaves: list[Any], paths: list[str], index: int, input_hw: tuple[int, int], batch: int, layout: DetectionLayout
) -> OutputPlan:
    if declared not in DECLARABLE:
        raise UnknownOutputError(f"tta: output: {declared!r} is not one of {', '.join(DECLARABLE)}")
    leaf, path = leaves[index], paths[index]
    if declared == "detection":
        if not (isinstance(leaf, torch.Tensor) and leaf.dim() == 3 and leaf.is_floating_point()):
            shape = list(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise UnknownOutputError(
                f"tta: output {path} was declared a detection but is {shape}, not a 3-D float tensor [B, 4+nc, anchors]"
            )
        if int(leaf.shape[layout.channels_dim]) < layout.class_offset:
            raise UnknownOutputError(
                f"tta: output {path} {list(leaf.shape)} has fewer than {layout.class_offset} channels on dim {layout.channels_dim}"
            )
        return _only(index, paths, Kind("detection", layout), "declared")
    inferred = infer_kind(leaf, input_hw, batch)
    if declared == "flow" and not isinstance(inferred, str) and inferred.name == "dense":
        if int(leaf.shape[1]) != 2:
            raise UnknownOutputError(f"tta: output {path} was declared flow but has {int(leaf.shape[1])} channels, not 2 (u, v)")
        return _only(index, paths, Kind("flow"), "declared")
    if isinstance(inferred, str) or inferred.name != declared:
        found = inferred if isinstance(inferred, str) else f"looks {inferred.name}"
        raise UnknownOutputError(f"tta: output {path} was declared {declared} but {found}")
    return _only(index, paths, inferred, "declared")


def _recognised(info: YoloModel, leaves: list[Any], paths: list[str], flip_idx: tuple[int, ...] | None) -> OutputPlan:
    source = f"recognised: {info.describe()}"
    if info.end2end:
        raise UnknownOutputError(
            f"tta: {source} returns end-to-end detections (post-NMS [B, max_det, 6] rows), which cannot be merged "
            "before NMS; use a model with a one-to-many head (end2end: false), or leave tta out"
        )
    if info.task == "segment":
        raise UnknownOutputError(
            f"tta: {source}: instance masks are made from per-branch prototypes, which cannot be merged "
            "(Ultralytics' own augment=True refuses segment models too)"
        )
    if info.task not in ("detect", "pose", "obb"):
        raise UnknownOutputError(f"tta: {source}: TTA supports Ultralytics/YOLOv5 detect, pose and obb heads. {WHAT_TO_DECLARE}")
    first = leaves[0]
    dims = [d for d in (1, 2) if isinstance(first, torch.Tensor) and first.dim() == 3 and int(first.shape[d]) == info.channels]
    if len(dims) != 1:
        shape = list(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise UnknownOutputError(f"tta: {source} returned {shape} first, not [B, {info.channels}, anchors]. {WHAT_TO_DECLARE}")
    layout = DetectionLayout(
        channels_dim=dims[0],
        class_offset=info.class_offset,
        extra=info.extra,
        extra_start=info.class_offset + info.nc,
        kpt_shape=info.kpt_shape,
        flip_idx=flip_idx,
    )
    return _only(0, paths, Kind("detection", layout), source, yolo=info)


def plan_outputs(
    model: nn.Module,
    output: Any,
    input_hw: tuple[int, int],
    batch: int,
    *,
    declared: str | None = None,
    output_index: int | str | None = None,
    layout: DetectionLayout | None = None,
    flip_idx: tuple[int, ...] | None = None,
) -> OutputPlan:
    """Decide how TTA treats each tensor of ``output`` (the model's output on an example batch).

    Args:
        model: the model (recognised by class path when it is Ultralytics or YOLOv5).
        output: what it returned.
        input_hw: the example's ``(H, W)``.
        batch: the example's batch size.
        declared: ``classification``, ``dense``, ``flow`` or ``detection`` (``tta: {output: ...}``).
        output_index: which tensor ``declared`` is about, by flattened index or path (``"[0]"``);
            needed when there are several. The other tensors are dropped (noted).
        layout: the layout of a declared detection (default: ``[B, 4+nc, anchors]``).
        flip_idx: the keypoint flip permutation (pose models under a horizontal flip).

    Raises:
        UnknownOutputError: a tensor whose kind cannot be told, a declaration that does not fit,
            or a recognised model TTA cannot merge (segment masks, end-to-end heads).
    """
    flat, _ = pytree.tree_flatten_with_path(output)
    leaves = [leaf for _, leaf in flat]
    # Paths only: reading every shape as an int would pin a symbolic batch while torch.export traces.
    paths = [pytree.keystr(path) or "output" for path, _ in flat]
    if declared is not None:
        index = _resolve_index(output_index, paths)
        return _declared(declared, leaves, paths, index, input_hw, batch, layout or DetectionLayout())
    info = recognise_yolo(model)
    if info is not None:
        return _recognised(info, leaves, paths, flip_idx)
    kinds: list[Kind | None] = []
    for leaf, path in zip(leaves, paths, strict=True):
        inferred = infer_kind(leaf, input_hw, batch)
        if isinstance(inferred, str):
            raise _refusal(path, inferred)
        kinds.append(inferred)
    return OutputPlan(kinds, paths)
