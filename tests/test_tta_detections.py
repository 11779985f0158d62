"""tta knows what it merges: detections de-scaled, un-flipped and concatenated (known answers),
unknown layouts refused with what to declare, the wrapper exported to ONNX at opsets 17 and 18."""

from __future__ import annotations

import logging
import math

import onnx
import onnxruntime as ort
import pytest
import torch
from detection_toys import ToyDetector, bright_block_image
from torch import nn
from torch.nn import functional as F

from optkit import PassContext
from optkit.errors import StageError
from optkit_plugins.tta import TTA, TestTimeAugmentation
from optkit_plugins.tta.detections import restore_detections
from optkit_plugins.tta.kinds import DetectionLayout, Kind, OutputPlan
from optkit_plugins.tta.wrapper import padded_size

SCALES = [1.0, 0.83, 0.67]


def apply(model: nn.Module, x: torch.Tensor, tmp_path, **options) -> tuple[TestTimeAugmentation, dict]:
    ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=tmp_path, logger=logging.getLogger("test"))
    return TTA(TTA.Options(**options)).apply(model.eval(), ctx), ctx.details


def test_the_bright_pixel_comes_back_where_it_is_not_at_the_image_centre(tmp_path):
    x = bright_block_image()  # H=128, W=160, block centred at (50, 100)
    model = ToyDetector().eval()
    # What tta did before: the flipped branch's raw boxes averaged element-wise with the plain one's.
    assert float(((model(x) + model(x.flip(-1))) / 2)[0, 0, 0]) == pytest.approx(80.0)  # W/2, not 50
    tta, details = apply(model, x, tmp_path, output="detection", scales=[1.0], flips=["horizontal"])
    out = tta(x)
    assert out.shape == (1, 6, 2)  # the anchors of both branches, concatenated
    torch.testing.assert_close(out[0, :2], torch.tensor([[50.0, 50.0], [100.0, 100.0]]), rtol=0, atol=1e-4)
    assert details["outputs"] == [{"output": "output", "kind": "detection", "layout": {"channels_dim": 1, "class_offset": 4, "extra": "none"}}]
    assert details["outputs_from"] == "declared"


@pytest.mark.parametrize("flips", [[], ["horizontal"], ["vertical"], ["horizontal", "vertical"]])
def test_every_branch_finds_the_block(tmp_path, flips):
    x = bright_block_image()
    tta, _ = apply(ToyDetector(), x, tmp_path, output="detection", scales=SCALES, flips=flips)
    out = tta(x)
    assert out.shape == (1, 6, len(SCALES) * (1 + len(flips)))
    exact = [i for i, (s, _) in enumerate(tta.branches) if s == 1.0]
    # Exact at scale 1.0 (boxes and sizes); bilinear sampling of a 2-pixel block limits the
    # downscaled branches to well under a pixel.
    torch.testing.assert_close(out[0, :2, exact], torch.tensor([[50.0], [100.0]]).expand(2, len(exact)), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[0, 2:4, exact], torch.full((2, len(exact)), 2.0), rtol=0, atol=1e-4)
    assert float((out[0, 0] - 50).abs().max()) < 0.5 and float((out[0, 1] - 100).abs().max()) < 0.5
    assert float((out[0, 2:4] - 2).abs().max()) < 0.5


def test_exact_descale_beats_yolov5s_nominal_one(tmp_path):
    x = bright_block_image()
    exact, _ = apply(ToyDetector(), x, tmp_path, output="detection", scales=[0.83], flips=[])
    nominal, _ = apply(ToyDetector(), x, tmp_path, output="detection", scales=[0.83], flips=[], descale="nominal")
    assert abs(float(exact(x)[0, 0, 0]) - 50) < abs(float(nominal(x)[0, 0, 0]) - 50)


def test_branches_are_concatenated_in_order(tmp_path):
    x = bright_block_image()
    tta, _ = apply(ToyDetector(anchors=2), x, tmp_path, output="detection", scales=[1.0, 0.5], flips=["horizontal"])
    out = tta(x)
    assert out.shape == (1, 6, 8)  # 4 branches x 2 anchors, branch by branch
    torch.testing.assert_close(out[0, :2, 1], torch.tensor([40.0, 32.0]))  # anchor 1 at (W/4, H/4)
    torch.testing.assert_close(out[0, :2, 3], torch.tensor([120.0, 32.0]))  # flipped branch: W - W/4


def test_yolov5_layout_channels_last():
    x = bright_block_image()
    model = ToyDetector(layout="yolov5").eval()
    plan = OutputPlan([Kind("detection", DetectionLayout(channels_dim=2, class_offset=5))], ["output"])
    out = TestTimeAugmentation(model, SCALES, ["horizontal"], plan=plan)(x)
    assert out.shape == (1, 6, 7)
    assert float((out[0, :, 0] - 50).abs().max()) < 0.5 and float((out[0, :, 1] - 100).abs().max()) < 0.5
    torch.testing.assert_close(out[0, :, 4], out[0, :, 5])  # objectness untouched


def test_keypoints_and_angles_are_mirrored():
    # One anchor, 2 classes, 2 keypoints (x, y, v); a horizontal flip swaps keypoints 0 and 1.
    layout = DetectionLayout(extra="keypoints", extra_start=6, kpt_shape=(2, 3), flip_idx=(1, 0))
    pred = torch.tensor([[10.0, 20, 4, 6, 0.9, 0.1, 30, 40, 0.7, 50, 60, 0.2]]).T[None]  # [1, 12, 1]
    back = restore_detections(pred, layout, content_hw=(64, 80), img_hw=(128, 160), flip="horizontal")
    expected = [160 - 20, 40, 8, 12, 0.9, 0.1, 160 - 100, 120, 0.2, 160 - 60, 80, 0.7]
    torch.testing.assert_close(back[0, :, 0], torch.tensor(expected))
    obb = DetectionLayout(extra="angle", extra_start=6)
    pred = torch.tensor([[10.0, 20, 4, 6, 0.9, 0.1, 0.3], [10.0, 20, 4, 6, 0.9, 0.1, 1.0]]).T[None]
    back = restore_detections(pred, obb, content_hw=(128, 160), img_hw=(128, 160), flip="horizontal")
    assert float(back[0, 6, 0]) == pytest.approx(-0.3)
    assert float(back[0, 6, 1]) == pytest.approx(math.pi - 1.0)  # -1.0 wrapped into [-pi/4, 3pi/4)
    with pytest.raises(ValueError, match="flip_idx"):
        restore_detections(torch.zeros(1, 12, 1), DetectionLayout(extra="keypoints", extra_start=6, kpt_shape=(2, 3)), (64, 64), (64, 64), "horizontal")


def test_identity_is_bit_exact(tmp_path):
    x = bright_block_image()
    model = ToyDetector().eval()
    tta, _ = apply(model, x, tmp_path, output="detection", scales=[1.0], flips=[])
    assert torch.equal(tta(x), model(x))


def test_an_unknown_layout_is_refused_with_what_to_declare(tmp_path):
    x = bright_block_image()
    with pytest.raises(StageError, match=r"output output has shape \[1, 6, 1\], which is neither .* Declare it: `tta: \{output: detection\}`"):
        apply(ToyDetector(), x, tmp_path, scales=SCALES)
    # Without a plan the wrapper refuses too, rather than averaging the anchors.
    with pytest.raises(ValueError, match="not known how to undo the augmentation"):
        TestTimeAugmentation(ToyDetector(), [1.0], ["horizontal"])(x)


def test_declared_output_of_several_needs_its_index(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.det = ToyDetector()

        def forward(self, x):
            y = self.det(x)
            return y, y[:, :4]

    x = bright_block_image()
    with pytest.raises(StageError, match="returns 2 tensors .*output_index"):
        apply(Two(), x, tmp_path, output="detection")
    tta, details = apply(Two(), x, tmp_path, output="detection", output_index="[0]", scales=[1.0], flips=["horizontal"])
    assert tta(x).shape == (1, 6, 2)
    assert details["notes"] == ["outputs [1] are not returned by the TTA wrapper"]
    with pytest.raises(ValueError, match="set output too"):
        TTA.Options(output_index=0)


def _onnx_outputs(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_the_detection_wrapper_exports_to_onnx(tmp_path):
    x = bright_block_image()
    tta, _ = apply(ToyDetector(), x, tmp_path, output="detection", scales=SCALES, flips=["horizontal"])
    program = torch.onnx.export(tta, (x.repeat(2, 1, 1, 1),), dynamo=True, dynamic_shapes=({0: "batch"},))
    path = tmp_path / "tta.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    for batch in (1, 3):
        xb = bright_block_image(batch=batch) + 0.01 * torch.rand(batch, 3, 128, 160)
        torch.testing.assert_close(_onnx_outputs(path, xb), tta(xb), atol=1e-4, rtol=1e-4)


class TwoResolutions(nn.Module):
    """An HRNet-like dense model: a full- and a half-resolution branch, heatmaps at 1/4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.low = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        high = self.stem(x)
        low = F.interpolate(self.low(high), size=high.shape[-2:], mode="nearest")
        return self.head(torch.cat([high, low], 1))


def test_padding_to_the_stride_survives_the_torchscript_exporter(tmp_path):
    """The TorchScript exporter wrote the old ceil -(-h // s) * s as a truncating division: the
    scaled branch was padded to 32 instead of 64, its content cropped, and the file, valid, was
    off by ~100x the tolerance."""
    assert padded_size(48, 32) == 64 and padded_size(64, 32) == 64 and padded_size(1, 32) == 32
    model = TwoResolutions().eval()
    tta = TestTimeAugmentation(model, scales=[1.0, 0.75], flips=["horizontal"]).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "tta17.onnx"
    with torch.no_grad():
        torch.onnx.export(tta, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    for batch in (1, 2):
        xb = x[:batch]
        with torch.inference_mode():
            torch.testing.assert_close(_onnx_outputs(path, xb), tta(xb), atol=1e-5, rtol=1e-4)
