"""A comparison over empty or input-independent outputs says so (report and console), instead of a
silent "cosine 1.0, max_abs 0.0"."""

from __future__ import annotations

import json
import textwrap

import torch
from torch import nn

from optkit.measure.uninformative import second_input, uninformative_outputs


class DetectorLike(nn.Module):
    """Scores that depend on the image, anchors that do not, and no boxes (a random detector's answer)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("anchors", torch.arange(8.0).view(2, 4))

    def forward(self, x):
        scores = self.conv(x).mean((2, 3))
        return {"scores": scores, "anchors": self.anchors * 1.0, "boxes": scores.new_zeros(0, 4)}


def detector_like() -> nn.Module:
    return DetectorLike()


def test_empty_and_input_independent_outputs_are_named():
    model = DetectorLike().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        found = uninformative_outputs(model(x), model(second_input(x, 1)))
    assert found == {"anchors": "is the same for two different inputs", "boxes": "has no elements (shape [0, 4])"}


def test_second_input_differs_and_keeps_integer_values():
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    x = torch.randn(2, 3)
    other_x, other_ids = second_input((x, ids), 1)
    assert not torch.equal(other_x, x) and other_x.shape == x.shape
    assert sorted(other_ids.flatten().tolist()) == sorted(ids.flatten().tolist()) and not torch.equal(other_ids, ids)


def test_run_reports_and_prints_that_drift_compared_nothing_there(cli, tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        model:
          source: python:test_uninformative_drift:detector_like
          input_shape: [1, 3, 16, 16]
        device: cpu
        measure: {{warmup: 0, iters: 1}}
        passes:
          - fuse_bn
        output: {tmp_path / "run"}
    """))
    result = cli("run", pipeline)
    assert result.exit_code == 0, result.output
    console = " ".join(result.output.split())
    said = "Warning: drift figures of 2 of 3 outputs say nothing: anchors is the same for two different inputs; boxes has no elements"
    assert said in console
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    drift = report["stages"][1]["metrics"]["drift"]
    assert drift["uninformative"] == {"anchors": "is the same for two different inputs", "boxes": "has no elements (shape [0, 4])"}
    assert "say nothing" in drift["warning"]
    assert "say nothing" in (tmp_path / "run" / "report.md").read_text()
