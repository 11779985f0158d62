"""A segmentation model through baseline, fuse_bn, tta and export_onnx (the other half of issue
#18's "done when"; YOLO models are in test_ultralytics.py)."""

from __future__ import annotations

import textwrap

import pytest

from optkit.config.pipeline import load_pipeline
from optkit.run.runner import run_pipeline


@pytest.mark.slow
def test_deeplab_through_every_pass_with_parity_per_output(tmp_path, host):
    path = tmp_path / "deeplab.yaml"
    path.write_text(textwrap.dedent(f"""
        model:
          source: torchvision:deeplabv3_mobilenet_v3_large
          weights: none
          kwargs: {{weights_backbone: null, num_classes: 4, aux_loss: true}}
          input_shape: [1, 3, 64, 64]
        measure: {{warmup: 0, iters: 1}}
        passes:
          - fuse_bn
          - tta: {{scales: [1.0, 0.5], flips: [horizontal]}}
          - export_onnx: {{opset: 17, verify_batch_sizes: [2]}}
        output: {tmp_path / "run"}
    """))
    report, _ = run_pipeline(load_pipeline(path, host.get_pass), host)
    stages = {s.name: s for s in report.stages}
    assert report.status == "ok", [(s.name, s.error) for s in report.stages]
    assert report.pipeline.seed == 0
    assert [row["kind"] for row in stages["tta"].details["outputs"]] == ["dense", "dense"]
    export = stages["export_onnx"].details
    assert export["opset"] == 17 and export["output_names"] == ["out", "aux"]
    per_output = {row["output"]: row for row in export["parity"]["per_output"]}
    assert set(per_output) == {"out", "aux"} and all(row["excess"] <= 1 for row in per_output.values())
    drift = stages["fuse_bn"].metrics.drift.previous
    assert [row.name for row in drift.outputs] == ["out", "aux"]
    assert all(row.max_abs <= 1e-4 + 1e-4 * row.reference_max_abs for row in drift.outputs)
