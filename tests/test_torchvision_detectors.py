"""torchvision detectors (random weights): each pass that cannot work on them refuses with its
reason before any work, instead of crashing (prune's train-mode trace, export's dynamic batch)."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from optkit import PassContext
from optkit.errors import StageError
from optkit_plugins.export_onnx import ExportOnnx
from optkit_plugins.finetune.plugin import FineTune
from optkit_plugins.prune_l1.plugin import PruneL1
from optkit_plugins.tta import TTA


@pytest.fixture(scope="module")
def faster_rcnn():
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128
    ).eval()


def context(tmp_path) -> PassContext:
    example = torch.rand(1, 3, 128, 128)
    return PassContext(device=torch.device("cpu"), example_input=example, output_dir=tmp_path, logger=logging.getLogger("t"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TTA(TTA.Options()), r"^tta: torchvision's FasterRCNN returns detections after NMS .*cannot be merged across branches"),
        (lambda: FineTune(FineTune.Options()), r"^finetune trains classifiers .* torchvision's FasterRCNN trains on box targets"),
        (lambda: PruneL1(PruneL1.Options(mode="channels")), r"^prune_l1 mode channels: torchvision's FasterRCNN needs targets"),
        (lambda: ExportOnnx(ExportOnnx.Options()), r"^export_onnx: torchvision's FasterRCNN .*set dynamic_batch: false"),
    ],
)
def test_a_pass_that_cannot_work_refuses_before_any_work(faster_rcnn, tmp_path, make, message):
    before = {k: v.clone() for k, v in faster_rcnn.state_dict().items()}
    ctx = context(tmp_path)
    with pytest.raises(StageError, match=message) as refused:
        make().apply(faster_rcnn, ctx)
    assert "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())  # nothing written
    assert all(torch.equal(v, before[k]) for k, v in faster_rcnn.state_dict().items())
