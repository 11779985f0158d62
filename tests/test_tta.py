"""The ``tta`` pass: exact identity case, scale/pad/flip handling, dense outputs, thop counts, ONNX export."""

from __future__ import annotations

import json
import logging

import onnxruntime
import pytest
import torch
import torch.fx
import torchvision
from torch import nn
from torch.nn import functional as F

from optkit import PassContext
from optkit.errors import StageError
from optkit.measure.flops import count_macs
from optkit_plugins.tta import TTA, TestTimeAugmentation

EXACT = {"rtol": 0.0, "atol": 0.0}
#: Reordered float sums (a mean over branches against the same sum written out).
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def toy_dense_net() -> nn.Module:
    """Two convolutions, not flip-invariant, output at half the input resolution (N×2×H/2×W/2)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, padding=1)).eval()


def toy_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    ).eval()


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def apply(model: nn.Module, x: torch.Tensor, tmp_path, **options) -> tuple[nn.Module, dict]:
    ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=tmp_path, logger=logging.getLogger("test"))
    return TTA(TTA.Options(**options)).apply(model, ctx), ctx.details


def scale_img(x: torch.Tensor, ratio: float, stride: int = 32, value: float = 0.0) -> torch.Tensor:
    """YOLOv5's ``scale_img`` written out, as the reference."""
    h, w = x.shape[-2:]
    size = (int(h * ratio), int(w * ratio))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    ph, pw = (-(-s // stride) * stride for s in size)
    return F.pad(x, [0, pw - size[1], 0, ph - size[0]], value=value)


@torch.inference_mode()
def test_identity_case_is_exact(tmp_path):
    x = images()
    classifier = torchvision.models.resnet18(num_classes=10).eval()
    segmenter = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    for model in (classifier, segmenter):
        wrapped, details = apply(model, x, tmp_path, scales=[1.0], flips=[])
        torch.testing.assert_close(wrapped(x), model(x), **EXACT)
        assert details["cost_multiplier"] == 1.0
        assert details["branches"] == [{"scale": 1.0, "flip": "none", "input_hw": [64, 64]}]


@torch.inference_mode()
def test_classifier_branches_are_scaled_padded_and_flipped_like_yolov5():
    model, x = toy_classifier(), images()
    wrapped = TestTimeAugmentation(model, scales=[1.0, 0.75], flips=["horizontal"], stride=32, pad_value=0.447)
    small = scale_img(x, 0.75, 32, 0.447)
    assert small.shape[-2:] == (64, 64)  # 48 padded up to a multiple of 32
    expected = (model(x) + model(x.flip(-1)) + model(small) + model(scale_img(x.flip(-1), 0.75, 32, 0.447))) / 4
    torch.testing.assert_close(wrapped(x), expected, **CLOSE)
    assert not torch.allclose(wrapped(x), model(x), atol=1e-3)  # the augmentation does change the output


@torch.inference_mode()
def test_softmax_merge_averages_probabilities():
    model, x = toy_classifier(), images()
    wrapped = TestTimeAugmentation(model, scales=[1.0], flips=["horizontal", "vertical"], merge="softmax")
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1) + model(x.flip(-2)).softmax(1)) / 3
    out = wrapped(x)
    torch.testing.assert_close(out, expected, **CLOSE)
    torch.testing.assert_close(out.sum(1), torch.ones(2), rtol=0, atol=1e-6)


@torch.inference_mode()
def test_flips_are_undone_on_dense_outputs():
    model, x = toy_dense_net(), images()
    # the model is not flip-invariant, so an undone flip is visible
    assert not torch.allclose(model(x), model(x.flip(-1)).flip(-1), atol=1e-3)
    wrapped = TestTimeAugmentation(model, scales=[1.0], flips=["horizontal", "vertical"])
    expected = (model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)) / 3
    torch.testing.assert_close(wrapped(x), expected, **CLOSE)
    # a per-pixel model commutes with flips: undoing them restores alignment exactly
    pointwise = nn.Conv2d(3, 2, 1).eval()
    torch.testing.assert_close(TestTimeAugmentation(pointwise, [1.0], ["horizontal", "vertical"])(x), pointwise(x), **CLOSE)


@torch.inference_mode()
def test_dense_outputs_are_cropped_and_resized_back():
    model, x = toy_dense_net(), images()
    wrapped = TestTimeAugmentation(model, scales=[1.0, 0.75], flips=["horizontal"])
    out = wrapped(x)
    assert out.shape == model(x).shape == (2, 2, 32, 32)

    def scaled_branch(inputs: torch.Tensor) -> torch.Tensor:
        y = model(scale_img(inputs, 0.75))  # 48 -> padded 64 -> output 32, of which 24 is image
        return F.interpolate(y[..., :24, :24], size=(32, 32), mode="bilinear", align_corners=False)

    expected = (model(x) + model(x.flip(-1)).flip(-1) + scaled_branch(x) + scaled_branch(x.flip(-1)).flip(-1)) / 4
    torch.testing.assert_close(out, expected, **CLOSE)


@torch.inference_mode()
def test_segmentation_model_dict_output(tmp_path):
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    x = images()
    wrapped, details = apply(model, x, tmp_path, scales=[1.0, 0.5], flips=["horizontal"])
    out, base = wrapped(x), model(x)
    assert out.keys() == base.keys() == {"out"}
    assert out["out"].shape == base["out"].shape == (2, 3, 64, 64)
    half = F.interpolate(model(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))["out"], size=(64, 64), mode="bilinear", align_corners=False)
    half_flipped = F.interpolate(
        model(F.interpolate(x.flip(-1), size=(32, 32), mode="bilinear", align_corners=False))["out"], size=(64, 64), mode="bilinear", align_corners=False
    ).flip(-1)
    expected = (base["out"] + model(x.flip(-1))["out"].flip(-1) + half + half_flipped) / 4
    torch.testing.assert_close(out["out"], expected, **CLOSE)
    assert [b["input_hw"] for b in details["branches"]] == [[64, 64], [64, 64], [32, 32], [32, 32]]


def test_thop_counts_every_branch(tmp_path):
    model, x = toy_dense_net(), images()
    base = count_macs(model, x)["macs"]
    _, details = apply(model, x, tmp_path, scales=[1.0], flips=["horizontal", "vertical"])
    assert details["cost_multiplier"] == 3.0 and details["tta_macs"] == 3 * base == 3 * details["base_macs"]
    # a half-size branch (32 is a multiple of the stride: no padding) costs a quarter
    _, details = apply(model, x, tmp_path, scales=[1.0, 0.5], flips=[])
    assert details["tta_macs"] == base + base // 4
    assert details["cost_multiplier"] == pytest.approx(1.25, rel=0, abs=1e-12)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=48, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10).eval()


@torch.inference_mode()
@pytest.mark.parametrize("same_shape", [True, None], ids=["set", "detected"])
def test_fixed_size_models_run_with_same_shape(tmp_path, same_shape):
    model, x = small_vit(), images(size=48)  # half size (24) pads to 32, which ViT refuses
    with pytest.raises(StageError, match="models with a fixed input size need same_shape: true"):
        apply(model, x, tmp_path, scales=[1.0, 0.5], flips=["horizontal"], same_shape=False)
    options = {"same_shape": same_shape} if same_shape is not None else {}
    wrapped, details = apply(model, x, tmp_path, scales=[1.0, 0.5], flips=["horizontal"], pad_value=0.5, **options)
    assert details["same_shape"] is True
    if same_shape is None:  # not set: the model's refusal of the scaled input is what decided it
        assert any("takes one input size only" in note for note in details["notes"])

    def shrunk(t: torch.Tensor) -> torch.Tensor:  # half size, padded back to 48x48
        return F.pad(F.interpolate(t, size=(24, 24), mode="bilinear", align_corners=False), [0, 24, 0, 24], value=0.5)

    expected = (model(x) + model(x.flip(-1)) + model(shrunk(x)) + model(shrunk(x.flip(-1)))) / 4
    torch.testing.assert_close(wrapped(x), expected, **CLOSE)
    assert all(b["input_hw"] == [48, 48] for b in details["branches"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scales": []}, "at least 1 item"),
        ({"scales": [1.0, 0.0]}, "greater than 0"),
        ({"scales": [1.0, 1.0]}, "lists a value twice"),
        ({"flips": ["diagonal"]}, "'horizontal' or 'vertical'"),
        ({"flips": ["horizontal", "horizontal"]}, "lists a value twice"),
        ({"merge": "max"}, "'mean' or 'softmax'"),
        ({"stride": 0}, "greater than 0"),
        ({"same_shape": True, "scales": [1.0, 1.2]}, "scales must be <= 1.0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TTA.Options(**options)


def test_wrapper_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown flip 'diagonal'; known: horizontal, vertical"):
        TestTimeAugmentation(nn.Identity(), flips=["diagonal"])
    with pytest.raises(ValueError, match="unknown merge 'max'; known: mean, softmax"):
        TestTimeAugmentation(nn.Identity(), merge="max")
    with pytest.raises(ValueError, match="scales must be <= 1.0"):
        TestTimeAugmentation(nn.Identity(), scales=[1.0, 1.5], same_shape=True)


def test_wrapper_saves_and_reloads(tmp_path):
    wrapped = TestTimeAugmentation(toy_classifier(), scales=[1.0, 0.5], flips=["vertical"], merge="softmax")
    path = tmp_path / "tta.pt"
    torch.save(wrapped, path)
    reloaded = torch.load(path, weights_only=False)  # our own file: the module class must be importable
    assert type(reloaded) is TestTimeAugmentation and reloaded.branches == wrapped.branches
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(images()), wrapped(images()), **EXACT)


def test_torch_export_captures_every_branch_and_symbolic_trace_is_refused():
    wrapped, x = TestTimeAugmentation(toy_dense_net(), scales=[1.0, 0.75], flips=["horizontal"]), images()
    program = torch.export.export(wrapped, (x,))
    convolutions = [n for n in program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convolutions) == 2 * 4  # two layers, four branches
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), wrapped(x), **CLOSE)
    with pytest.raises(torch.fx.proxy.TraceError, match="use torch.export.export"):
        torch.fx.symbolic_trace(wrapped)


def _onnx_parity(wrapped: nn.Module, x: torch.Tensor, path, batch_sizes=(2,)) -> None:
    """Export with the torch.export-based exporter (dynamic batch); onnxruntime must agree."""
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(wrapped, (x,), path, dynamo=True, dynamic_shapes=({0: batch},), input_names=["input"], verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in batch_sizes:
        inputs = images(batch=n, size=x.shape[-1])
        with torch.inference_mode():
            expected = wrapped(inputs)
        got = session.run(None, {"input": inputs.numpy()})
        expected = list(expected.values()) if isinstance(expected, dict) else [expected]
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-4, atol=1e-5)


def test_exports_to_onnx_with_onnxruntime_parity(tmp_path):
    wrapped = TestTimeAugmentation(toy_dense_net(), scales=[1.0, 0.75], flips=["horizontal", "vertical"]).eval()
    _onnx_parity(wrapped, images(), tmp_path / "dense.onnx", batch_sizes=(1, 3))


@pytest.mark.slow
def test_real_models_export_to_onnx_with_onnxruntime_parity(tmp_path):
    classifier = torchvision.models.resnet18(num_classes=10).eval()
    segmenter = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    for name, model in (("resnet18", classifier), ("lraspp", segmenter)):
        wrapped = TestTimeAugmentation(model, scales=[1.0, 0.75], flips=["horizontal"]).eval()
        _onnx_parity(wrapped, images(), tmp_path / f"{name}.onnx")


def test_pipeline_with_export(write_pipeline, cli, tmp_path):
    path = write_pipeline(
        f"""
        model:
          source: python:test_tta:toy_classifier
          input_shape: [2, 3, 64, 64]
        device: cpu
        measure: {{warmup: 1, iters: 3}}
        passes:
          - tta: {{scales: [1.0, 0.5], flips: [horizontal]}}
          - export_onnx: {{dynamic_batch: false}}
        output: {tmp_path / "run"}
        """
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    baseline, tta, export = report["stages"]
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "ok"]
    assert len(tta["details"]["branches"]) == 4
    assert tta["metrics"]["macs"] == tta["details"]["tta_macs"]
    assert tta["metrics"]["macs"] / baseline["metrics"]["macs"] == pytest.approx(tta["details"]["cost_multiplier"], rel=1e-9)
    assert tta["details"]["cost_multiplier"] > 2.0
    assert export["metrics"]["drift"]["previous"]["max_abs"] < 1e-4


def toy_video_classifier() -> nn.Module:
    """A 3-D convolution over [B, C, T, H, W] that checks it still gets 4 frames."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5))

    class FourFrames(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            assert x.shape[2] == 4, x.shape
            return self.body(x)

    return FourFrames().eval()


@torch.inference_mode()
def test_video_batches_are_resized_in_space_and_flipped(tmp_path):
    model = toy_video_classifier()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    wrapped, details = apply(model, x, tmp_path, scales=[1.0, 0.5], flips=["horizontal"], stride=16)

    def half(t: torch.Tensor) -> torch.Tensor:  # frames kept, 16x16 (a multiple of the stride: no padding)
        return F.interpolate(t, size=(4, 16, 16), mode="trilinear", align_corners=False)

    expected = (model(x) + model(x.flip(-1)) + model(half(x)) + model(half(x.flip(-1)))) / 4
    torch.testing.assert_close(wrapped(x), expected, **CLOSE)
    assert [b["input_hw"] for b in details["branches"]] == [[32, 32], [32, 32], [16, 16], [16, 16]]


@pytest.mark.parametrize("example", [torch.randint(0, 100, (1, 16)), torch.randn(1, 16)], ids=["token ids", "2-D float"])
def test_inputs_that_are_no_images_are_refused_before_any_work(tmp_path, example):
    class Spy(nn.Module):
        calls = 0

        def forward(self, x):
            Spy.calls += 1
            return x.float().sum(-1, keepdim=True)

    with pytest.raises(StageError, match=r"tta augments image batches .*the model's input is \[1, 16\]"):
        apply(Spy(), example, tmp_path)
    assert Spy.calls == 0
