"""The drift check knows the model's own sensitivity: an exact transform of a model that amplifies
rounding is not failed for drift the model shows under a 1e-7 change of its input."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from optkit import ExampleInputs
from optkit.measure.sensitivity import output_sensitivity, within_sensitivity
from optkit.results import DriftComparison, OutputDrift


class Sine(nn.Module):
    """``sin(frequency × x)``: a steep function, which turns float32 rounding of x into visible output changes."""

    def __init__(self, frequency: float):
        super().__init__()
        self.frequency = frequency

    def forward(self, x):
        return torch.sin(self.frequency * x)


def amplifier() -> nn.Module:
    """Conv + BatchNorm (folded exactly by fuse_bn, rounded differently) + a steep sine: rounding-level noise in, ~1e-2 out."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.1, 2.0)
        bn.weight.uniform_(0.5, 2.0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn, Sine(3e4), nn.Flatten()).eval()


def pipeline(tmp_path, source: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        model:
          source: {source}
          input_shape: [1, 3, 8, 8]
        device: cpu
        measure: {{warmup: 0, iters: 1, latency: false}}
        passes:
          - fuse_bn
        output: {tmp_path / "run"}
    """))
    return path


def test_fuse_bn_on_a_model_that_amplifies_rounding_is_not_failed_and_the_report_gives_both_figures(cli, tmp_path, caplog):
    result = cli("run", pipeline(tmp_path, "python:test_drift_sensitivity:amplifier"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run/report.json").read_text())
    baseline, fused = (stage["metrics"]["drift"] for stage in report["stages"])
    sensitivity = baseline["sensitivity"]["max_abs"]["output"]
    assert baseline["sensitivity"]["input_step"] == 1e-7
    drift = fused["previous"]["max_abs"]
    allowed = 1e-4 + 1e-4 * fused["previous"]["reference_max_abs"]
    assert drift > allowed  # over the ordinary tolerance: without the sensitivity, the stage would fail
    within = fused["tolerance"]["within_model_sensitivity"]
    assert within == {"output": "output", "drift_max_abs": drift, "sensitivity_max_abs": sensitivity, "factor": 4.0}
    assert drift <= 4.0 * sensitivity
    assert "within 4× what a 1e-07 change of the input causes" in caplog.text


def test_an_ordinary_model_keeps_the_tolerance():
    """A well-conditioned model barely moves under the perturbation: a real error is not hidden."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        outputs = model(x)
        sensitivity = output_sensitivity(model, ExampleInputs.of(x), outputs, seed=1)
    assert 0 < sensitivity["output"] < 1e-5
    broken = DriftComparison(outputs=[OutputDrift(name="output", shape=[1, 4], max_abs=1e-3)])
    assert within_sensitivity(broken, sensitivity) is None
    rounding = DriftComparison(outputs=[OutputDrift(name="output", shape=[1, 4], max_abs=sensitivity["output"])])
    assert within_sensitivity(rounding, sensitivity)["drift_max_abs"] == pytest.approx(sensitivity["output"])


def random_efficientnetv2_rw_t() -> nn.Module:
    """timm's efficientnetv2_rw_t with random weights: its logits move by ~1e3 under a 1e-7 change of a 224x224 input."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("efficientnetv2_rw_t", num_classes=10).eval()


@pytest.mark.slow  # a minute on two busy cores: the model at its size
def test_fuse_bn_on_a_random_efficientnetv2_is_not_failed_for_the_drift_the_model_itself_shows(cli, tmp_path):
    path = tmp_path / "p.yaml"
    text = pipeline(tmp_path, "python:test_drift_sensitivity:random_efficientnetv2_rw_t").read_text()
    path.write_text(text.replace("[1, 3, 8, 8]", "[1, 3, 224, 224]"))
    result = cli("run", str(path))

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run/report.json").read_text())
    baseline, fused = (stage["metrics"]["drift"] for stage in report["stages"])
    sensitivity = baseline["sensitivity"]["max_abs"]["output"]
    drift = fused["previous"]["max_abs"]
    assert drift > 1e-4 + 1e-4 * fused["previous"]["reference_max_abs"]  # the ordinary tolerance alone would fail it
    within = fused["tolerance"]["within_model_sensitivity"]  # the report gives both figures
    assert (within["drift_max_abs"], within["sensitivity_max_abs"]) == (drift, sensitivity)
    assert drift <= within["factor"] * sensitivity
