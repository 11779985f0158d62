"""Ultralytics and YOLOv5 models, recognised by class path strings: their heads, the channel groups
of their predictions and their deployment view. The root-model rules of
:mod:`~optkit_plugins.module_rules.ultralytics_rules` hand the last two to optkit's drift check and
export (``ModuleRule.output_groups``, ``ModuleRule.deployment``); the TTA pass reads the heads.

Ultralytics is AGPL-3.0: optkit never imports it. Its classes are recognised by the dotted path of
a class anywhere in a module's MRO (so user subclasses of ``Detect`` are recognised too), and their
attributes are read duck-typed. What optkit relies on (Ultralytics 8.x; YOLOv5 v7):

* the root model (``ultralytics.nn.tasks.BaseModel``; YOLOv5 ``models.yolo.DetectionModel``) keeps
  its layers in ``.model``, an ``nn.Sequential`` it *iterates*; ``model[-1]`` is the head;
* in eval mode a ``Detect`` head returns ``(y, raw)``, ``y`` being ``[B, 4+nc, anchors]`` with xywh
  boxes in input pixels and sigmoid class scores (``Pose`` adds keypoints, ``OBB`` an angle,
  ``Segment`` mask coefficients and a prototype map); with ``head.export = True`` it returns ``y``
  alone: the deployment output, what ``model.export(format="onnx")`` writes. YOLOv5 puts the
  channels last (``[B, anchors, 5+nc]``, objectness at channel 4);
* ``head.shape`` keys the cached anchors: reset to ``None`` before tracing, as Ultralytics'
  exporter does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from optkit import ChannelGroup, class_path, output_leaves

__all__ = [
    "YoloModel",
    "is_instance_of",
    "recognise_yolo",
    "deployment_view",
    "detection_channel_groups",
    "detection_output_groups",
    "ULTRALYTICS",
    "YOLOV5",
    "ULTRALYTICS_ROOTS",
    "YOLOV5_ROOTS",
]

ULTRALYTICS = "ultralytics"
YOLOV5 = "yolov5"

#: Ultralytics head class paths -> task, most derived first (the first match in the MRO wins).
ULTRALYTICS_HEADS: dict[str, str] = {
    "ultralytics.nn.modules.head.v10Detect": "detect",
    "ultralytics.nn.modules.head.YOLOESegment26": "segment",
    "ultralytics.nn.modules.head.YOLOESegment": "segment",
    "ultralytics.nn.modules.head.YOLOEDetect": "detect",
    "ultralytics.nn.modules.head.WorldDetect": "detect",
    "ultralytics.nn.modules.head.Segment26": "segment",
    "ultralytics.nn.modules.head.Segment": "segment",
    "ultralytics.nn.modules.head.Pose26": "pose",
    "ultralytics.nn.modules.head.Pose": "pose",
    "ultralytics.nn.modules.head.OBB26": "obb",
    "ultralytics.nn.modules.head.OBB": "obb",
    "ultralytics.nn.modules.head.Detect": "detect",
    "ultralytics.nn.modules.head.Classify": "classify",
    "ultralytics.nn.modules.head.SemanticSegment": "semantic",
    "ultralytics.nn.modules.head.Depth": "depth",
    "ultralytics.nn.modules.head.RTDETRDecoder": "rtdetr",
}

#: YOLOv5 (github.com/ultralytics/yolov5, from its repository or torch.hub) head class paths.
YOLOV5_HEADS: dict[str, str] = {"models.yolo.Segment": "segment", "models.yolo.Detect": "detect"}

#: Root model classes of each library.
ULTRALYTICS_ROOTS = ("ultralytics.nn.tasks.BaseModel",)
YOLOV5_ROOTS = ("models.yolo.BaseModel", "models.yolo.DetectionModel", "models.yolo.Model")

#: Head attributes set on the deployment copy, as Ultralytics' ONNX exporter sets them.
DEPLOYMENT_SETTINGS = {"export": True, "format": "onnx", "shape": None, "dynamic": False}

#: How many wrappers (optkit's TTA, YOLOv5's AutoShape, ...) exposing ``.model`` are looked through.
_MAX_WRAPPERS = 4


def _mro_paths(obj: Any) -> list[str]:
    kind = obj if isinstance(obj, type) else type(obj)
    return [class_path(k) for k in kind.__mro__]


def is_instance_of(obj: Any, *paths: str) -> bool:
    """``isinstance`` by class path strings: whether a class in ``obj``'s MRO has one of ``paths``.

    Example:
        >>> is_instance_of(head, "ultralytics.nn.modules.head.Detect")
    """
    wanted = set(paths)
    return any(p in wanted for p in _mro_paths(obj))


@dataclass
class YoloModel:
    """What optkit knows about a recognised YOLO model.

    Attributes:
        library: ``ultralytics`` or ``yolov5``.
        task: ``detect``, ``segment``, ``pose``, ``obb``, ``classify``, ``semantic``, ``depth``, ``rtdetr``.
        root: the library's root model (inside any wrappers).
        head: the head module (``root.model[-1]``).
        head_path: the recognised head class path.
        nc: number of classes.
        strides: detection strides (``[8, 16, 32]``).
        channels_dim: the dim of the prediction tensor holding ``4 + nc + extra`` channels: 1 for
            Ultralytics (``[B, C, anchors]``), 2 for YOLOv5 (``[B, anchors, C]``).
        class_offset: the first class-score channel (4; 5 for YOLOv5, objectness at 4).
        extra: what follows the class scores: ``none``, ``mask_coefficients``, ``keypoints``, ``angle``.
        extra_size: how many channels that is.
        kpt_shape: ``(K, D)`` for pose.
        end2end: inference returns post-NMS ``[B, max_det, 6]`` rows instead of anchors.
    """

    library: str
    task: str
    root: nn.Module
    head: nn.Module
    head_path: str
    nc: int = 0
    strides: list[float] = field(default_factory=list)
    channels_dim: int = 1
    class_offset: int = 4
    extra: str = "none"
    extra_size: int = 0
    kpt_shape: tuple[int, int] | None = None
    end2end: bool = False

    @property
    def channels(self) -> int:
        """Channels of one prediction row: box, (objectness,) classes and extra."""
        return self.class_offset + self.nc + self.extra_size

    def describe(self) -> str:
        return f"{self.library} {self.task} model ({self.head_path})"


def _root_of(model: nn.Module) -> nn.Module | None:
    for _ in range(_MAX_WRAPPERS + 1):
        paths = _mro_paths(model)
        if any(p in ULTRALYTICS_ROOTS or p in YOLOV5_ROOTS for p in paths):
            return model
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return None


def _first_match(obj: Any, table: dict[str, str]) -> tuple[str, str] | None:
    return next(((path, table[path]) for path in _mro_paths(obj) if path in table), None)


def recognise_yolo(model: nn.Module) -> YoloModel | None:
    """Recognise an Ultralytics (8.x) or YOLOv5 model by class paths, looking through wrappers
    that keep the wrapped model in ``.model`` (optkit's TTA, YOLOv5's ``AutoShape``).

    Returns:
        What optkit needs to know about it, or ``None`` for any other model.
    """
    root = _root_of(model)
    if root is None:
        return None
    inner = getattr(root, "model", None)
    if not isinstance(inner, (nn.Sequential, nn.ModuleList)) or not len(inner):
        return None
    head = inner[-1]
    library = ULTRALYTICS if is_instance_of(root, *ULTRALYTICS_ROOTS) else YOLOV5
    match = _first_match(head, ULTRALYTICS_HEADS if library == ULTRALYTICS else YOLOV5_HEADS)
    if match is None:
        return None
    head_path, task = match
    info = YoloModel(library, task, root, head, head_path, nc=int(getattr(head, "nc", 0) or 0))
    stride = getattr(head, "stride", None)
    if stride is not None and hasattr(stride, "tolist"):
        info.strides = [float(s) for s in stride.tolist()]
    if library == YOLOV5:
        info.channels_dim, info.class_offset = 2, 5
    else:
        info.end2end = bool(getattr(head, "end2end", False)) or head_path.endswith(".v10Detect")
    if task == "segment":
        info.extra, info.extra_size = "mask_coefficients", int(getattr(head, "nm", 32))
    elif task == "pose":
        kpt = tuple(getattr(head, "kpt_shape", (17, 3)))
        info.kpt_shape = (int(kpt[0]), int(kpt[1]))
        info.extra, info.extra_size = "keypoints", info.kpt_shape[0] * info.kpt_shape[1]
    elif task == "obb":
        info.extra, info.extra_size = "angle", int(getattr(head, "ne", 1))
    return info


def deployment_view(model: nn.Module) -> tuple[nn.Module, dict[str, Any]] | None:
    """An eval copy of a recognised YOLO model that returns its deployment output, or ``None``
    (also for a wrapper around one).

    The copy's head is put in export mode as Ultralytics' ONNX exporter does
    (:data:`DEPLOYMENT_SETTINGS`: ``export``, ``format``, ``shape`` reset so the anchors are
    recomputed for any batch, ``dynamic`` off because only the batch is symbolic). ``Detect``,
    ``Pose`` and ``OBB`` then return ``[B, 4+nc(+extra), anchors]`` alone, ``Segment`` returns
    ``(pred, proto)``, ``Classify`` softmax probabilities. ``model`` is not changed.

    Returns:
        ``(copy, details)``: details name the library, task, head and the attributes set.
    """
    info = recognise_yolo(model)
    if info is None or info.root is not model:
        return None  # a wrapper (optkit's TTA, ...) returns what it returns: its own output is exported
    view = copy.deepcopy(model).eval()
    info = recognise_yolo(view)
    if info is None:  # a deep copy has the same classes; only a broken __deepcopy__ gets here
        return None
    changed = {}
    for name, value in DEPLOYMENT_SETTINGS.items():
        if hasattr(info.head, name):
            setattr(info.head, name, value)
            changed[name] = value
    return view, {"library": info.library, "task": info.task, "head": info.head_path, "head_set": changed}


def detection_channel_groups(info: YoloModel) -> list[tuple[str, int, int, int]]:
    """``(name, dim, start, stop)`` of the channel groups of a prediction tensor that deserve a
    tolerance of their own: ``boxes`` (pixels, up to the input size), ``scores`` (objectness and
    class probabilities in [0, 1]) and ``extra`` (keypoints, angle, mask coefficients)."""
    dim = info.channels_dim
    groups = [("boxes", dim, 0, 4), ("scores", dim, 4, info.class_offset + info.nc)]
    if info.extra_size:
        groups.append(("extra", dim, info.class_offset + info.nc, info.channels))
    return groups


def detection_output_groups(model: nn.Module, outputs: Any) -> dict[str, list[ChannelGroup]]:
    """Channel groups of a recognised YOLO model's outputs (``ModuleRule.output_groups``): each
    prediction tensor (3-D, ``4 + nc (+ extra)`` channels on the library's channel dim) is split
    into ``boxes``, ``scores`` and ``extra`` (:func:`detection_channel_groups`); heads without such
    predictions (classify, semantic, depth, RT-DETR, end-to-end) get none.
    """
    info = recognise_yolo(model)
    if info is None or info.task in ("classify", "semantic", "depth", "rtdetr") or info.end2end:
        return {}
    groups = [ChannelGroup(*g) for g in detection_channel_groups(info)]
    return {leaf.name: groups for leaf in output_leaves(outputs) if len(leaf.shape) == 3 and leaf.shape[info.channels_dim] == info.channels}
