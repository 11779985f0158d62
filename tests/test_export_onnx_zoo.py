"""fuse_bn then export_onnx over torchvision models, through the CLI: every file valid, symbolic
in batch, and onnxruntime matching PyTorch at batch sizes 1, 2 and 8."""

from __future__ import annotations

import json

import onnx
import pytest

# (source, builder kwargs as YAML, classifier?) — small inputs keep the loop within ~2 minutes.
ZOO = [
    ("torchvision:resnet18", "{}", True),
    ("torchvision:mobilenet_v3_small", "{}", True),
    ("torchvision:efficientnet_b0", "{}", True),
    ("torchvision:squeezenet1_1", "{}", True),
    ("torchvision:shufflenet_v2_x0_5", "{}", True),  # channel shuffle reshapes with the batch size
    ("torchvision:lraspp_mobilenet_v3_large", "{weights_backbone: null}", False),  # dict output
]


@pytest.mark.slow
def test_fuse_bn_then_export_onnx_over_the_zoo(write_pipeline, cli, tmp_path):
    problems = []
    for source, kwargs, classifier in ZOO:
        name = source.partition(":")[2]
        run_dir = tmp_path / name
        path = write_pipeline(
            f"""
            model:
              source: {source}
              weights: none
              kwargs: {kwargs}
              input_shape: [1, 3, 64, 64]
            device: cpu
            measure: {{warmup: 1, iters: 3}}
            save_model: false
            passes:
              - fuse_bn
              - export_onnx: {{dynamic_batch: true}}
            output: {run_dir}
            """,
            name=f"{name}.yaml",
        )
        result = cli("run", path)
        report = json.loads((run_dir / "report.json").read_text())
        if result.exit_code != 0:
            problems.append(f"{name}: exit {result.exit_code}: {report.get('error')}")
            continue
        fuse, export = report["stages"][1], report["stages"][2]
        details = export["details"]
        onnx_path = run_dir / export["artifacts"][0]
        onnx.checker.check_model(str(onnx_path), full_check=True)
        graph_input = onnx.load(str(onnx_path), load_external_data=False).graph.input[0]
        figures = details["parity"]["inputs"]
        checks = {
            # BatchNorm parameters vanish with every fused pair; SqueezeNet has no BatchNorm.
            "fused pairs": (fuse["metrics"]["params"] < report["stages"][0]["metrics"]["params"]) == (name != "squeezenet1_1"),
            "torch.export-based exporter": details["exporter"] == "dynamo",
            "symbolic batch": graph_input.type.tensor_type.shape.dim[0].dim_param == "batch",
            "batch sizes 1, 2, 8": sorted(f["batch"] for k, f in figures.items() if k != "example") == [1, 2, 8],
            "parity within 1e-5 + 1e-3 max|ref|": all(
                f["max_abs"] <= 1e-5 + 1e-3 * f["reference_max_abs"] for f in figures.values()
            ),
            "size is the file's": export["metrics"]["size_bytes"] == onnx_path.stat().st_size,
            "onnxruntime latency": export["metrics"]["latency_ms"]["runtime"] == "onnxruntime",
            "drift against baseline": export["metrics"]["drift"]["max_abs"] <= 1e-4 + 1e-4 * export["metrics"]["drift"]["reference_max_abs"],
        }
        if classifier:
            checks["top-1 agreement"] = export["metrics"]["drift"]["top1_agreement"] == 1.0
        problems += [f"{name}: {check}" for check, ok in checks.items() if not ok]
    assert not problems, "\n".join(problems)
