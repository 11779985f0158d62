"""quantize_onnx on detectors exported with their postprocess (torchvision's): the network in int8, the
postprocess in float, and a similarity gate that matches detections by IoU instead of by index."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
import yaml

from optkit import RunReport, run_pipeline
from optkit_plugins.quantize_onnx.detections import match_detections
from optkit_plugins.quantize_onnx.gate import detection_similarity
from optkit_plugins.quantize_onnx.graph import detection_postprocess


def detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


FLOAT = detections([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]], [0.55, 0.54, 0.53], [1, 1, 2])


def test_detections_in_another_order_with_moved_scores_are_the_same_objects():
    # int8 moves each score a little: the order changes, and index-by-index comparison pairs other boxes
    quantized = detections([[50, 0, 60, 31], [0, 0, 10, 10.5], [20, 21, 40, 40]], [0.56, 0.53, 0.52], [2, 1, 1])
    matched = match_detections([quantized], [FLOAT])
    assert matched["found"] == 3 and matched["extra"] == 0 and matched["agreement"] == 1.0
    assert matched["cosine"] > 0.999


def test_a_missing_detection_and_another_label_lower_the_agreement():
    quantized = detections([[0, 0, 10, 10], [20, 20, 40, 40]], [0.55, 0.54], [1, 2])  # the second with label 2: not a match
    matched = match_detections([quantized], [FLOAT])
    assert matched["found"] == 1 and matched["extra"] == 1 and matched["agreement"] == pytest.approx(1 / 3)


def test_a_float_model_that_detects_nothing_is_said_to_compare_nothing():
    empty = detections([], [], [])
    empty["boxes"] = empty["boxes"].reshape(0, 4)
    figures = detection_similarity([empty], [empty])
    assert figures["cosine"] == figures["top1"] == 1.0
    assert figures["warning"].startswith("the float model detected nothing on the gate's 1 samples, so no detection was compared")
    assert detection_similarity([FLOAT], [empty])["top1"] == 0.0  # the quantized model invents detections


def exported_toy() -> onnx.ModelProto:
    from detection_toys import conv_nms_detector

    buffer = io.BytesIO()
    torch.onnx.export(conv_nms_detector(), (torch.rand(1, 3, 16, 16),), buffer, dynamo=False, input_names=["input"])
    return onnx.load_from_string(buffer.getvalue())


def test_the_postprocess_of_a_graph_with_nms_is_what_the_convolutions_do_not_read():
    model = exported_toy()
    postprocess = set(detection_postprocess(model))
    kinds = {node.op_type for node in model.graph.node if node.name in postprocess}
    network = {node.op_type for node in model.graph.node if node.name not in postprocess}
    assert {"Conv", "Relu"} <= network and not kinds & {"Conv", "Relu"}
    assert {"NonMaxSuppression", "Sigmoid", "Add", "Concat"} <= kinds  # scores, box decoding, NMS
    without_nms = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    assert detection_postprocess(without_nms) == []


def quantize_toy_detector(tmp_path, quantize: dict) -> RunReport:
    """The toy NMS detector exported at batch 1 and quantized with ``quantize``'s options."""
    pipeline = {
        "model": {"source": "python:detection_toys:conv_nms_detector", "input_shape": [1, 3, 16, 16]},
        "measure": {"latency": False},
        "passes": [{"export_onnx": {"dynamic_batch": False}}, {"quantize_onnx": quantize}],
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    report, _ = run_pipeline(tmp_path / "p.yaml")
    return report


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_of_a_detector_keeps_its_postprocess_in_float_and_gates_on_matched_detections(tmp_path, mode):
    report = quantize_toy_detector(tmp_path, {"mode": mode, **({"calibration": {"random": True, "batches": 2}} if mode == "static" else {})})
    stage = report.stages[-1]
    assert report.status == "ok", stage.error
    assert stage.details["detection_postprocess"]["kept_in_float"] > 10
    ops = stage.details["graph"]["ops"]
    assert ops.get("QLinearConv" if mode == "static" else "ConvInteger") == 2
    assert not {"QLinearSigmoid", "QLinearAdd", "QLinearConcat", "QLinearMul"} & set(ops)  # the postprocess stayed float
    gate = stage.details["similarity_gate"]
    assert gate["samples"] == 32 and gate["detections"]["reference"] == 320  # 10 detections per image
    assert gate["top1"] >= 0.95 and gate["cosine"] >= 0.99, gate
    assert "top-1 agreement is the share of the float model's detections" in stage.details["tolerance"]


def test_a_detector_failing_the_gate_is_not_told_to_give_data_eval(tmp_path):
    # data.eval holds classifier labels: for detections the fix is the bound alone.
    report = quantize_toy_detector(tmp_path, {"mode": "static", "calibration": {"random": True, "batches": 2}, "min_cosine": 1.0})
    error = report.stages[-1].error or ""
    assert report.status != "ok" and "lower the tolerance options of quantize_onnx to accept it" in error, error
    assert "data.eval" not in error


def test_a_bias_shared_by_two_convolutions_is_quantized_at_each_ones_scale(tmp_path):
    """onnxruntime's static quantizer stores a bias at the scale of the first Conv that reads it and reuses
    it: the second level's bias came out 20x too large (its input range is 20x the first's)."""
    pipeline = {
        "model": {"source": "python:detection_toys:shared_head", "input_shape": [1, 3, 8, 8]},
        "measure": {"latency": False},
        "passes": [
            {"export_onnx": {"exporter": "torchscript"}},
            {"quantize_onnx": {"calibration": {"random": True, "batches": 2}, "min_top1_agreement": None}},
        ],
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    report, _ = run_pipeline(tmp_path / "p.yaml")
    stage = report.stages[-1]
    assert report.status == "ok", stage.error
    assert stage.details["biases_copied"] == 2 and stage.details["graph"]["ops"]["QLinearConv"] == 3
    assert stage.details["similarity_gate"]["cosine"] >= 0.99
