"""Ultralytics models through every pass, in the environment where Ultralytics is installed beside
optkit (`make test` creates .venv-ultralytics; elsewhere these tests are skipped, see conftest.py).

optkit itself never imports Ultralytics (AGPL): these tests do, to build models from the yaml files
Ultralytics ships (random weights, nothing downloaded) and to compare with its own code."""

from __future__ import annotations

import json
import textwrap

import onnx
import pytest
import torch

from optkit.config.pipeline import load_pipeline
from optkit.measure.thop_distribution import thop_owner
from optkit.run.runner import run_pipeline
from optkit_plugins.module_rules.yolo import deployment_view, recognise_yolo
from optkit_plugins.tta import TestTimeAugmentation

pytestmark = pytest.mark.ultralytics

#: Ultralytics' augment=True: these branches, padded with 0.447, de-scaled by 1/scale, tails clipped.
ULTRALYTICS_BRANCHES = [(1.0, None), (0.83, "horizontal"), (0.67, None)]


@pytest.fixture(scope="module")
def yolo11n():
    from yolo_factories import yolo

    torch.manual_seed(0)
    return yolo("yolo11n.yaml")


def test_models_are_recognised_by_class_path(yolo11n):
    info = recognise_yolo(yolo11n)
    assert (info.library, info.task, info.head_path) == ("ultralytics", "detect", "ultralytics.nn.modules.head.Detect")
    assert (info.nc, info.strides, info.channels, info.channels_dim) == (80, [8.0, 16.0, 32.0], 84, 1)
    from yolo_factories import yolo

    pose = recognise_yolo(yolo("yolo11n-pose.yaml"))
    assert (pose.task, pose.extra, pose.kpt_shape, pose.channels) == ("pose", "keypoints", (17, 3), 4 + pose.nc + 51)
    assert recognise_yolo(TestTimeAugmentation(yolo11n)).head is yolo11n.model[-1]  # through wrappers


def test_the_deployment_view_is_ultralytics_export_mode_and_leaves_the_model_alone(yolo11n):
    view, details = deployment_view(yolo11n)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        deployed, full = view(x), yolo11n(x)
    assert isinstance(deployed, torch.Tensor) and deployed.shape == (2, 84, 84)
    torch.testing.assert_close(deployed, full[0])
    assert details["head_set"] == {"export": True, "format": "onnx", "shape": None, "dynamic": False}
    assert yolo11n.model[-1].export is False


def test_tta_is_ultralytics_augment_when_configured_like_it(yolo11n):
    x = torch.rand(1, 3, 128, 128)
    tta = TestTimeAugmentation(yolo11n, branches=ULTRALYTICS_BRANCHES, pad_value=0.447, descale="nominal", clip_levels=3)
    with torch.inference_mode():
        ours = tta(x)
        theirs = yolo11n._predict_augment(x.clone())[0]
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


def test_segment_models_are_refused_and_pose_flips_need_flip_idx(tmp_path, host):
    from yolo_factories import yolo

    from optkit import PassContext
    from optkit.errors import StageError
    from optkit_plugins.tta import TTA

    x = torch.rand(1, 3, 64, 64)

    def apply(model, **options):
        ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=tmp_path, logger=__import__("logging").getLogger("t"))
        return TTA(TTA.Options(**options)).apply(model, ctx), ctx.details

    with pytest.raises(StageError, match="prototypes"):
        apply(yolo("yolo11n-seg.yaml"))
    pose = yolo("yolo11n-pose.yaml")
    with pytest.raises(StageError, match="flip_idx"):
        apply(pose, scales=[1.0], flips=["horizontal"])
    coco = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    wrapped, details = apply(pose, scales=[1.0, 0.5], flips=["horizontal"], flip_idx=coco)
    with torch.inference_mode():
        assert wrapped(x).shape == (1, 4 + 80 + 51, 2 * (84 + 21))


def _run(tmp_path, host, name: str, text: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text).format(out=tmp_path / name))
    report, run_dir = run_pipeline(load_pipeline(path, host.get_pass), host)
    stages = {s.name: s for s in report.stages}
    assert report.status == "ok", [(s.name, s.error) for s in report.stages]
    return stages, run_dir


def test_yolo11n_through_fuse_bn_tta_and_an_opset_17_export(tmp_path, host, yolo11n):
    stages, run_dir = _run(tmp_path, host, "yolo11n", """
        model: {{source: "python:yolo_factories:yolo", kwargs: {{cfg: yolo11n.yaml}}, input_shape: [1, 3, 128, 128]}}
        measure: {{warmup: 0, iters: 1}}
        passes:
          - fuse_bn
          - tta: {{scales: [1.0, 0.83, 0.67], flips: [horizontal], pad_value: 0.447}}
          - export_onnx: {{opset: 17, verify_batch_sizes: [1, 2]}}
        output: {out}
    """)
    tta = stages["tta"].details
    assert tta["outputs_from"] == "recognised: ultralytics detect model (ultralytics.nn.modules.head.Detect)"
    assert tta["outputs"][0]["kind"] == "detection" and tta["stride"] == 32
    # 128 px: 336 anchors; 0.83 -> 106 px padded to 128: 336; 0.67 -> 85 px padded to 96: 189.
    export = stages["export_onnx"].details
    assert export["opset"] == 17 and export["export_attempts"][-1]["ok"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(run_dir / stages["export_onnx"].artifacts[0]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: torch.rand(3, 3, 128, 128).numpy()})
    assert out.shape == (3, 84, 2 * (336 + 336 + 189))
    per_output = {row["output"]: row for row in export["parity"]["per_output"]}
    assert set(per_output) == {"output (boxes)", "output (scores)"}  # a tolerance per group
    assert all(row["excess"] <= 1 for row in per_output.values())
    assert per_output["output (scores)"]["allowed"] < 1e-3 < per_output["output (boxes)"]["allowed"]
    drift = stages["fuse_bn"].metrics.drift.previous
    assert [row.name for row in drift.outputs][:2] == ["output_0", "output_1.boxes"]
    assert [g.group for g in drift.outputs[0].groups] == ["boxes", "scores"]


def test_tta_boxes_on_a_yolo_are_the_plain_and_the_unflipped_predictions(yolo11n):
    """The known answer on a real detector: the scale-1 branches are the model's own predictions,
    the flipped one mirrored back (x -> W - x)."""
    x = torch.rand(1, 3, 128, 160)
    tta = TestTimeAugmentation(yolo11n, scales=[1.0], flips=["horizontal"], stride=32)
    with torch.inference_mode():
        out = tta(x)
        plain = yolo11n(x)[0]
        flipped = yolo11n(x.flip(-1))[0]
    anchors = plain.shape[2]
    torch.testing.assert_close(out[..., :anchors], plain)
    unflipped = flipped.clone()
    unflipped[:, 0] = 160 - flipped[:, 0]
    torch.testing.assert_close(out[..., anchors:], unflipped, atol=1e-4, rtol=1e-5)


def test_yolov8s_exports_its_deployment_output_by_default(tmp_path, host):
    stages, run_dir = _run(tmp_path, host, "yolov8s", """
        model: {{source: "python:yolo_factories:yolo", kwargs: {{cfg: yolov8s.yaml}}, input_shape: [1, 3, 128, 128]}}
        measure: {{warmup: 0, iters: 1}}
        passes:
          - fuse_bn
          - export_onnx: {{input_name: images, output_names: [output0], verify_batch_sizes: [1, 2]}}
        output: {out}
    """)
    export = stages["export_onnx"]
    assert export.details["deployment_output"]["head"] == "ultralytics.nn.modules.head.Detect"
    assert [o.name for o in onnx.load(str(run_dir / export.artifacts[0])).graph.output] == ["output0"]
    # The runner compares the file with the first output of the stages before (what it computes).
    assert export.metrics.drift.outputs[0].shape == [1, 84, 336]
    assert export.status == "ok"


def test_a_fused_yolo_still_predicts_through_ultralytics(tmp_path, host, yolo11n):
    import numpy as np
    from ultralytics import YOLO

    from optkit import PassContext
    from optkit_plugins.fuse_bn import FuseBatchNorm

    ctx = PassContext(device=torch.device("cpu"), example_input=torch.rand(1, 3, 64, 64), output_dir=tmp_path,
                      logger=__import__("logging").getLogger("t"), module_rules=host.rule_table())  # as a run passes them
    fused = FuseBatchNorm().apply(yolo11n, ctx)
    assert fused.is_fused()
    wrapper = YOLO("yolo11n.yaml", task="detect")
    wrapper.model = fused
    results = wrapper.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
    assert len(results) == 1


def test_ultralytics_thop_owns_the_folder_here_and_the_cli_says_so(cli):
    owner = thop_owner()
    assert owner.owner == "ultralytics-thop" and owner.license == "AGPL-3.0"
    result = cli("passes")
    assert result.exit_code == 0
    assert "warning: the installed thop" in result.output.replace("\n", " ") and "ultralytics-thop" in result.output
    info = json.loads(cli("info", "torchvision:resnet18", "-s", "1,3,32,32", "--no-latency", "--json").output)
    assert "ultralytics-thop 2.2.3 (AGPL-3.0)" in info["thop"]["warning"]
    assert info["macs"] == 37_523_456  # the same as with the Lyken17 thop (torchvision's convention)
