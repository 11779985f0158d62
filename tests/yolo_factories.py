"""``python:`` sources for the Ultralytics tests: YOLO models built from the yaml Ultralytics ships
(random weights; nothing is downloaded). Imported by pipelines only where Ultralytics is installed."""

from __future__ import annotations

from torch import nn


def yolo(cfg: str = "yolo11n.yaml") -> nn.Module:
    """An Ultralytics model built from one of its packaged yaml files (detect, seg, pose by name)."""
    from ultralytics.nn.tasks import DetectionModel, PoseModel, SegmentationModel, guess_model_task, yaml_model_load

    task = guess_model_task(yaml_model_load(cfg))
    cls = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel}[task]
    return cls(cfg, verbose=False).eval()
