"""quantize_onnx: int8 (static in both formats, dynamic) and fp16 of the exported model, on the
trained digits model and real data; exclusions, calibration sources, the similarity tolerance,
the accuracy budget, and the artifact flow the pass API declares."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import plugins_for_tests
import pytest
import torch
from PIL import Image

from optkit.config.pipeline import parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.passes import PassContext
from optkit.measure.cpu import CpuInfo, cpu_info, parse_cpuinfo
from optkit.testing import DIGITS_MODEL, digits_cnn, run_pass
from optkit_plugins.export_onnx import ExportOnnx
from optkit_plugins.quantize_onnx.calibration import CalibrationFeed, fit_batch
from optkit_plugins.quantize_onnx.graph import GraphInput
from optkit_plugins.quantize_onnx.graph import Exclusion, op_census
from optkit_plugins.quantize_onnx import QuantizeOnnx
from optkit_plugins.quantize_onnx.quantizers import convert_fp16
from optkit_plugins.quantize_onnx.scheme import choose_reduce_range

DIGITS = {"source": DIGITS_MODEL, "model_kwargs": {"pretrained": True}, "input_shape": (1, 3, 32, 32)}
#: Quick measurement: quantization figures, not latency, are under test.
QUICK = {"warmup": 0, "iters": 1, "flops": False}


def quantize(tmp_path, digits, options=None, *, data_section=None, measure=None, export=None, expect_status="ok", **kwargs):
    """export_onnx then quantize_onnx on the trained digits model; by default evaluated on the val
    split and calibrated on the train split."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    default = {"eval": f"imagefolder:{digits.val}", "train": {"source": f"imagefolder:{digits.train}", "shuffle": True}}
    return run_pass(
        "quantize_onnx",
        options,
        tmp_path=tmp_path,
        before=[{"export_onnx": export or {}}],
        data=data_section or default,
        measure=measure or QUICK,
        expect_status=expect_status,
        **{**DIGITS, **kwargs},
    )


def val_accuracy(onnx_file, digits) -> float:
    """Top-1 of an ONNX file on the val split, read straight from the PNGs (nothing of optkit's)."""
    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in digits.val.iterdir() if p.is_dir())):
        for png in sorted(folder.glob("*.png")):
            images.append(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.stack(images)})[0]
    return float((logits.argmax(1) == np.array(labels)).mean())


@pytest.fixture(scope="module")
def static_run(digits, tmp_path_factory):
    """The default: static int8, QOperator, per-channel, min-max calibration on 16 train batches."""
    return quantize(tmp_path_factory.mktemp("static"), digits, measure={"warmup": 0, "iters": 1})


def test_static_int8_keeps_digits_accuracy_in_a_quarter_of_the_size(static_run, digits):
    run = static_run
    exported, quantized = run.report["stages"][1], run.stage

    # Within 0.3 points of the float model on the 360 val samples (one sample is 0.28 points), on
    # every CPU: reduce_range: auto picks 7-bit weights where 8-bit ones saturate (x86 without VNNI).
    float_top1, int8_top1 = exported["metrics"]["accuracy"]["top1"], quantized["metrics"]["accuracy"]["top1"]
    assert float_top1 >= 0.97 and int8_top1 >= float_top1 - 0.003
    assert quantized["metrics"]["accuracy"]["n"] == 360
    assert int8_top1 == pytest.approx(val_accuracy(run.artifact("model_int8.onnx"), digits), abs=1e-12)
    # At least 3.5x smaller than the float ONNX file (int8 weights, per-channel scales).
    assert exported["metrics"]["size_bytes"] / quantized["metrics"]["size_bytes"] >= 3.5
    assert quantized["details"]["size"]["ratio"] >= 3.5
    # QOperator: every convolution and the classifier run as int8 operators.
    graph = quantized["details"]["graph"]
    assert graph["ops"]["QLinearConv"] == 9 and graph["ops"]["QGemm"] == 1 and graph["float_compute"] == []
    # MACs are the float model's: the count is of the arithmetic, not its precision.
    assert quantized["metrics"]["macs"] == exported["metrics"]["macs"] > 0
    assert "not of its precision" in quantized["details"]["macs"]
    assert quantized["metrics"]["runtime"] == "onnxruntime"
    assert quantized["details"]["calibration"] == {"method": "minmax", "source": "data.calibration", "batches": 16, "samples": 1024}
    # Held to a similarity against the float ONNX model, on data.eval (not on the seeded random batch).
    tolerance = quantized["metrics"]["drift"]["tolerance"]
    assert tolerance == {"cosine": 0.99, "top1_agreement": 0.95, "set_by": "the tolerance options of quantize_onnx", "similarity_on": "data.eval"}
    previous = quantized["metrics"]["agreement"]["previous"]
    assert previous["cosine"] >= 0.99 and previous["top1"] >= 0.99 and previous["n"] == 360
    assert "cosine >= 0.99, top-1 agreement >= 0.95" in quantized["details"]["tolerance"]
    # The scheme was chosen for this machine's CPU, and the report says which CPU and why.
    scheme = quantized["details"]["int8_scheme"]
    assert scheme["option"] == "auto" and scheme["cpu"] == cpu_info().as_dict()
    assert scheme["reduce_range"] is quantized["details"]["reduce_range"] is cpu_info().int8_saturates
    assert cpu_info().name in scheme["reason"]


EPYC = CpuInfo("AMD EPYC", "x86_64", ("avx", "avx2", "fma"))
XEON = CpuInfo("Intel(R) Xeon(R) Platinum 8480+", "x86_64", ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"))
GRAVITON = CpuInfo("Neoverse-V1", "aarch64", ("asimd", "asimddp", "sve", "i8mm"))


@pytest.mark.parametrize(
    ("cpu", "uint8_activations", "expected", "why"),
    [
        (EPYC, True, True, "AMD EPYC has no VNNI"),
        (EPYC, False, False, "int8 activations"),
        (XEON, True, False, "has VNNI"),
        (GRAVITON, True, False, "is aarch64, not x86"),
        (CpuInfo("Intel(R) Xeon(R) Gold 6148", "x86_64", ("avx2", "avx512f", "avx512bw")), True, True, "has no VNNI"),
    ],
)
def test_reduce_range_auto_follows_the_cpu(cpu, uint8_activations, expected, why):
    choice = choose_reduce_range("auto", cpu, uint8_activations=uint8_activations)
    assert choice.reduce_range is expected and why in choice.reason


@pytest.mark.parametrize("pinned", [True, False])
def test_a_pinned_reduce_range_wins_on_any_cpu(pinned):
    for cpu in (EPYC, XEON):
        choice = choose_reduce_range(pinned, cpu, uint8_activations=True)
        assert choice.reduce_range is pinned and "pinned" in choice.reason


def test_cpuinfo_flags_are_read_from_x86_and_arm_texts():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n"
    assert parse_cpuinfo(x86) == ("AMD EPYC", {"fpu", "sse4_2", "avx", "avx2", "fma"})
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp sve\n"
    assert parse_cpuinfo(arm) == (None, {"fp", "asimd", "asimddp", "sve"})


def test_the_reduce_range_option_takes_auto_or_a_boolean(tmp_path, digits):
    assert QuantizeOnnx.Options().reduce_range == "auto"
    assert QuantizeOnnx.Options(reduce_range=True).reduce_range is True
    with pytest.raises(ValueError, match="reduce_range"):
        QuantizeOnnx.Options(reduce_range="sometimes")


def test_qdq_format_dequantizes_int8_weights_into_float_operators(tmp_path, digits):
    run = quantize(tmp_path, digits, {"format": "qdq", "per_channel": False, "calibration": {"batches": 2}})
    ops = run.stage["details"]["graph"]["ops"]
    assert "QLinearConv" not in ops and ops["Conv"] == 9 and ops["DequantizeLinear"] >= 10 and ops["QuantizeLinear"] >= 1
    assert run.stage["details"]["graph"]["float_compute"] == []  # every Conv/Gemm weight comes out of DequantizeLinear
    assert run.metrics["accuracy"]["top1"] >= run.baseline["metrics"]["accuracy"]["top1"] - 0.01
    weights = [i for i in onnx.load(str(run.artifact("model_int8.onnx"))).graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) == 10  # nine convolutions and the classifier


def test_dynamic_int8_needs_no_calibration(tmp_path, digits):
    run = quantize(tmp_path, digits, {"mode": "dynamic"})
    details = run.stage["details"]
    assert "calibration" not in details and "activation_type" not in details
    assert details["graph"]["ops"]["ConvInteger"] == 9 and details["graph"]["ops"]["DynamicQuantizeLinear"] >= 1
    assert run.metrics["accuracy"]["top1"] >= run.baseline["metrics"]["accuracy"]["top1"] - 0.01


def test_exclude_by_op_type_and_by_node_name(tmp_path, digits, static_run):
    run = quantize(tmp_path / "by-type", digits, {"exclude": ["Gemm"], "calibration": {"batches": 2}})
    graph = run.stage["details"]["graph"]
    assert "QGemm" not in graph["ops"] and graph["ops"]["Gemm"] == 1 and graph["ops"]["QLinearConv"] == 9
    assert len(graph["float_compute"]) == 1 and run.stage["details"]["exclude"] == {"Gemm": graph["float_compute"]}

    # A node of the graph as exported (pre-processing off, so that names stay as export_onnx wrote them).
    exported = onnx.load(str(static_run.run_dir / "stages/01-export_onnx/model.onnx"))
    first_conv = next(node.name for node in exported.graph.node if node.op_type == "Conv")
    run = quantize(tmp_path / "by-name", digits, {"exclude": [first_conv], "preprocess": False, "calibration": {"batches": 2}})
    graph = run.stage["details"]["graph"]
    assert graph["float_compute"] == [first_conv] and graph["ops"]["QLinearConv"] == 8
    assert run.stage["details"]["preprocess"] == "off"


def test_an_exclude_entry_the_graph_lacks_fails_naming_its_op_types(tmp_path, digits):
    run = quantize(tmp_path, digits, {"exclude": ["Conv2d"]}, expect_status="failed")
    assert "exclude: 'Conv2d' is neither a node name nor an op type of the graph (op types: " in run.stage["error"]
    assert "Conv, " in run.stage["error"]
    assert run.report["stages"][1]["status"] == "ok" and (run.run_dir / run.report["stages"][1]["artifacts"][0]).is_file()


def test_static_without_data_fails_saying_what_to_add(tmp_path):
    run = run_pass("quantize_onnx", tmp_path=tmp_path, before=["export_onnx"], measure=QUICK, expect_status="failed")
    assert run.stage["error"] == (
        "stage 2 (quantize_onnx) failed: this pass needs calibration data, and the pipeline has no data: section; "
        "add one, e.g. data: {calibration: {source: imagefolder:PATH}}; or, for a latency study only, calibration: {random: true}"
    )
    assert run.report["stages"][1]["status"] == "ok"  # the export before it is kept, file and all
    assert (run.run_dir / "stages/01-export_onnx/model.onnx").is_file()


def test_random_calibration_only_when_asked_and_the_report_says_so(tmp_path):
    run = run_pass(
        "quantize_onnx", {"calibration": {"random": True, "batches": 3}}, tmp_path=tmp_path, before=["export_onnx"], measure=QUICK
    )
    calibration = run.stage["details"]["calibration"]
    assert calibration["source"] == "random" and calibration["batches"] == 3 and calibration["samples"] == 6  # input batch 2
    assert calibration["warning"].startswith(
        "calibrated on random inputs (calibration: {random: true}; standard-normal floats, integers in their range), not on data"
    )
    assert "calibrated on random inputs" in (run.run_dir / "report.md").read_text()
    # Without data.eval the similarity is held on 32 seeded samples, which random calibration covers.
    assert run.drift["tolerance"]["similarity_on"] == "a seeded batch of 32 random samples"
    assert run.stage["details"]["similarity_gate"]["cosine"] >= 0.99


def test_fp16_is_refused_on_the_cpu(tmp_path, digits):
    run = quantize(tmp_path, digits, {"mode": "fp16"}, expect_status="failed")
    assert run.stage["error"].startswith("stage 2 (quantize_onnx) failed: quantize_onnx: mode fp16 is for CUDA, and this run is on cpu")
    assert run.stage["error"].endswith("set device: cuda, or use mode: static or dynamic for int8 on the CPU")


def test_fp16_conversion_halves_the_weights_and_keeps_float32_at_the_edges(tmp_path):
    ctx = PassContext(torch.device("cpu"), torch.rand(2, 3, 32, 32), tmp_path, logging.getLogger("test"))
    exported = onnx.load(str(ExportOnnx().apply(digits_cnn(pretrained=True).eval(), ctx).path))
    half = convert_fp16(exported, Exclusion())
    float_weights = {i.name: i for i in exported.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    half_weights = {i.name: i for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert set(float_weights) == set(half_weights)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [onnx.TensorProto.FLOAT]
    weight_bytes = {name: len(init.raw_data) for name, init in float_weights.items()}
    assert {name: 2 * len(init.raw_data) for name, init in half_weights.items()} == weight_bytes


@pytest.mark.cuda
def test_fp16_on_cuda_keeps_digits_accuracy(tmp_path, digits):
    text = plugins_for_tests.DIGITS_PIPELINE.format(
        batch=1, measure="", data=f"  eval: imagefolder:{digits.val}", passes="  - export_onnx\n  - quantize_onnx: {mode: fp16}"
    ).replace("device: cpu", "device: cuda")
    host = Host()
    from optkit.run.runner import run_pipeline

    report, run_dir = run_pipeline(parse_pipeline(text, host.get_pass, tmp_path / "p.yaml"), host, output=tmp_path / "run")
    assert report.status == "ok", report.error
    exported, half = report.stages[1].metrics, report.stages[2].metrics
    assert half["accuracy"]["top1"] >= exported["accuracy"]["top1"] - 0.01
    assert half["agreement"]["previous"]["cosine"] >= 0.999
    assert half["size_bytes"] < 0.55 * exported["size_bytes"]


def test_the_accuracy_budget_applies(tmp_path, digits):
    # Clipping every activation at its median (percentile 50) wrecks the model: the budget catches it.
    run = quantize(
        tmp_path, digits, {"calibration": {"method": "percentile", "percentile": 50.0, "batches": 2}},
        measure={**QUICK, "max_accuracy_drop": 0.01}, expect_status="failed",
    )
    assert "top-1 accuracy on data.eval fell from 99.44% (baseline) to" in run.stage["error"]
    assert run.stage["error"].endswith("over measure.max_accuracy_drop 0.01 (1.00 points); raise it to accept the stage")
    assert run.report["stages"][1]["status"] == "ok"


def test_the_similarity_tolerance_fails_a_stage_that_drifts_on_data(tmp_path, digits):
    run = quantize(tmp_path, digits, {"min_cosine": 0.99999999, "min_top1_agreement": None, "calibration": {"batches": 2}},
                   expect_status="failed")
    assert "quantize_onnx must preserve outputs, but on data.eval, the outputs' cosine similarity to the stage before is 0.99" in run.stage["error"]
    assert run.stage["error"].endswith("under the minimum 0.99999999; lower the tolerance options of quantize_onnx to accept it")


def test_without_data_eval_similarity_is_held_on_32_seeded_samples_and_the_message_says_how_to_do_better(tmp_path, digits):
    # Calibrated on images in [0, 1], the model clips standard-normal values. The graph has a fixed
    # batch of 1: the 32 samples take 32 calls.
    run = quantize(tmp_path, digits, {"calibration": {"batches": 1}}, expect_status="failed",
                   data_section={"calibration": f"imagefolder:{digits.train}"}, export={"dynamic_batch": False})
    gate = run.stage["details"]["similarity_gate"]
    assert (gate["samples"], gate["calls"]) == (32, 32)
    assert "but on a seeded batch of 32 random samples, the outputs' cosine similarity to the stage before is 0." in run.stage["error"]
    assert run.stage["error"].endswith(
        "lower the tolerance options of quantize_onnx to accept it, or give data.eval: similarity is then held on real "
        "samples, not on random values"
    )
    # The figures are those of the 32 samples, recomputed here with onnxruntime alone.
    batch = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()

    def logits(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: batch[i : i + 1]})[0] for i in range(32)])

    reference = logits(run.run_dir / "stages/01-export_onnx/model.onnx")
    quantized = logits(run.run_dir / "stages/02-quantize_onnx/model_int8.onnx")
    assert gate["top1"] == pytest.approx(float((reference.argmax(1) == quantized.argmax(1)).mean()))
    ours, theirs = torch.from_numpy(quantized).double().flatten(), torch.from_numpy(reference).double().flatten()
    cosine = float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0))
    assert gate["cosine"] == pytest.approx(cosine, abs=1e-6)


def test_entropy_calibration_of_a_fixed_batch_export(tmp_path, digits):
    # A graph exported for batch 1 is calibrated in slices of one: 2 loader batches of 64 samples.
    run = quantize(tmp_path, digits, {"calibration": {"method": "entropy", "batches": 2}}, export={"dynamic_batch": False})
    assert run.stage["details"]["calibration"] == {"method": "entropy", "source": "data.calibration", "batches": 128, "samples": 128}
    assert run.metrics["accuracy"]["top1"] >= run.baseline["metrics"]["accuracy"]["top1"] - 0.01


def test_a_quantized_model_is_not_quantized_twice(tmp_path, digits):
    text = plugins_for_tests.DIGITS_PIPELINE.format(
        batch=1, measure="", data=f"  train: imagefolder:{digits.train}\n  eval: imagefolder:{digits.val}",
        passes="  - export_onnx\n  - quantize_onnx: {calibration: {batches: 1}}\n  - quantize_onnx: {mode: dynamic}",
    )
    host = Host()
    from optkit.run.runner import run_pipeline

    report, _ = run_pipeline(parse_pipeline(text, host.get_pass, tmp_path / "p.yaml"), host, output=tmp_path / "run")
    assert [s.status for s in report.stages] == ["ok", "ok", "ok", "failed"], report.error
    assert "the ONNX model is quantized already (DequantizeLinear, QGemm, QLinearAdd, QLinearConv, QuantizeLinear)" in report.error


def test_calibration_batches_fit_a_fixed_batch_graph():
    batch = torch.arange(5.0).reshape(5, 1)
    # the short last slice is left out
    assert [p["input"].tolist() for p in fit_batch({"input": batch}, 2)] == [[[0.0], [1.0]], [[2.0], [3.0]]]
    assert fit_batch({"input": batch}, None)[0]["input"] is batch
    feed = CalibrationFeed([batch, batch], [GraphInput("input", 2, np.float32)], fixed_batch=2)
    assert len(feed) == 4 and feed.samples == 8
    feed.set_range(1, 3)
    assert [feed.get_next()["input"].tolist() for _ in range(2)] == [[[2.0], [3.0]], [[0.0], [1.0]]]
    assert feed.get_next() is None


def test_op_census_tells_quantized_from_float_compute():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="int8_conv"),
        helper.make_node("Conv", ["y", "wf"], ["z"], name="float_conv"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    assert op_census(helper.make_model(graph)) == {"ops": {"Conv": 2, "DequantizeLinear": 1}, "float_compute": ["float_conv"]}


# --- the artifact flow: consumes, produces, ctx.artifact, stale artifacts -------------------------


def pipeline_text(passes: str) -> str:
    return plugins_for_tests.TINY_PIPELINE.format(passes=passes)


@pytest.fixture
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests)


def test_validate_refuses_a_consumer_before_any_producer(test_host, tmp_path):
    with pytest.raises(PipelineError) as error:
        host = Host()  # the installed passes: export_onnx is the one that makes an ONNX model from a module
        parse_pipeline(pipeline_text("  - fuse_bn\n  - quantize_onnx\n  - export_onnx"), host.get_pass, tmp_path / "p.yaml",
                       producers=host.passes_producing)
    assert str(error.value) == (
        f"{tmp_path / 'p.yaml'}:8: stage 2 (quantize_onnx) needs an ONNX model (OnnxArtifact) from an earlier stage, "
        "and none produces one: add export_onnx before it"
    )


def test_validate_refuses_a_stale_artifact_naming_the_move(test_host, tmp_path):
    for passes in ("  - export_onnx\n  - fuse_bn\n  - quantize_onnx", "  - export_onnx\n  - reads_onnx\n  - reads_onnx"):
        with pytest.raises(PipelineError) as error:
            parse_pipeline(pipeline_text(passes), test_host.get_pass, tmp_path / "p.yaml", producers=test_host.passes_producing)
        middle = passes.split("- ")[2].strip()
        assert str(error.value) == (
            f"{tmp_path / 'p.yaml'}:9: stage 3 ({passes.split('- ')[3].strip()}) needs an ONNX model (OnnxArtifact) from stage 1 "
            f"(export_onnx), but stage 2 ({middle}) changes the model after it, so that OnnxArtifact is stale; "
            f"move export_onnx after {middle}"
        )
    # An artifact after an artifact is fresh: quantize_onnx reads export_onnx's, a consumer reads quantize_onnx's.
    ok = parse_pipeline(pipeline_text("  - fuse_bn\n  - export_onnx\n  - quantize_onnx\n  - reads_onnx"), test_host.get_pass)
    assert [s.pass_name for s in ok.stages] == ["fuse_bn", "export_onnx", "quantize_onnx", "reads_onnx"]


def test_optkit_validate_names_the_line_and_exits_2(cli, write_pipeline):
    path = write_pipeline(pipeline_text("  - quantize_onnx"))
    result = cli("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:7: stage 1 (quantize_onnx) needs an ONNX model (OnnxArtifact) from an earlier stage" in result.output
    assert "add export_onnx before it" in result.output


@pytest.mark.parametrize(
    ("passes", "stage", "message"),
    [
        ("  - export_onnx\n  - quantize_onnx: {mode: fp16}", "stage 2 (quantize_onnx)", "mode fp16 is for CUDA, and the pipeline's device is cpu"),
        ("  - export_onnx: {fp16: true}", "stage 1 (export_onnx)", "fp16 needs a CUDA device, and the pipeline's device is cpu"),
    ],
)
def test_optkit_validate_refuses_fp16_on_a_cpu_pipeline_at_its_line(cli, write_pipeline, passes, stage, message):
    path = write_pipeline(pipeline_text(passes))  # device: cpu
    result = cli("validate", str(path))
    assert result.exit_code == 2
    line = len(pipeline_text(passes).splitlines())  # the last stage is the one at fault
    assert f"{path}:{line}: {stage}: " in result.output and message in result.output


def test_optkit_validate_leaves_fp16_to_a_cuda_pipeline(cli, write_pipeline):
    path = write_pipeline(pipeline_text("  - export_onnx\n  - quantize_onnx: {mode: fp16}").replace("device: cpu", "device: cuda"))
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.output


def test_the_runner_carries_the_latest_artifact_until_a_module_makes_it_stale(test_host, tmp_path):
    from optkit.run.runner import run_pipeline

    passes = ["sees_artifact", "export_onnx", "sees_artifact", "sees_artifact", "export_onnx", "reads_onnx", "sees_artifact"]
    text = pipeline_text("\n".join(f"  - {name}" for name in passes))
    report, _ = run_pipeline(parse_pipeline(text, test_host.get_pass), test_host, output=tmp_path / "run")
    assert report.status == "ok", report.error
    seen = [s.details["artifact"] for s in report.stages[1:] if s.name != "export_onnx"]
    # The module a stage returns makes the file before it stale: the stage after it sees none.
    assert seen == [None, "model.onnx", None, "model.onnx", None]


def test_a_pass_that_breaks_its_declarations_fails_its_stage(test_host, tmp_path):
    from optkit.run.runner import run_pipeline

    report, _ = run_pipeline(parse_pipeline(pipeline_text("  - mislabels_onnx"), test_host.get_pass), test_host, output=tmp_path / "a")
    assert report.stages[1].error == "stage 1 (mislabels_onnx) failed: pass 'mislabels_onnx' declares that it produces OnnxArtifact, but returned Sequential"
    # A consumer whose input is missing at run time (a pipeline built without validation) fails, saying what to add.
    pipeline = parse_pipeline(pipeline_text("  - identity"), test_host.get_pass)
    stage = dataclasses_replace_pass(pipeline.stages[0], plugins_for_tests.ReadsOnnx)
    report, _ = run_pipeline(type(pipeline)(pipeline.spec, (stage,), pipeline.path), test_host, output=tmp_path / "b")
    assert report.stages[1].error == (
        "stage 1 (reads_onnx) failed: this pass needs an ONNX model (OnnxArtifact) from an earlier stage, and there is none: "
        "add a stage that produces one before it, after any stage that changes the model (optkit validate names one)"
    )


def test_require_artifact_names_the_kind_it_needs(tmp_path):
    from optkit import Artifact, OnnxArtifact
    from optkit.errors import StageError

    class Engine(Artifact):
        description = "a TensorRT engine"

        def load(self, device):
            raise NotImplementedError

    ctx = PassContext(torch.device("cpu"), torch.zeros(1), tmp_path, logging.getLogger("test"), artifact=OnnxArtifact(tmp_path / "m.onnx"))
    assert ctx.require_artifact(OnnxArtifact) is ctx.artifact
    assert ctx.require_artifact(Artifact) is ctx.artifact  # any artifact will do
    with pytest.raises(StageError, match=r"^this pass needs a TensorRT engine \(Engine\), but the stage before it produced OnnxArtifact$"):
        ctx.require_artifact(Engine)


def dataclasses_replace_pass(stage, pass_cls):
    import dataclasses

    return dataclasses.replace(stage, pass_name=pass_cls.name, pass_cls=pass_cls, options=pass_cls.Options())


def test_report_json_records_what_quantize_onnx_did(static_run):
    on_disk = json.loads((static_run.run_dir / "report.json").read_text())
    stage = on_disk["stages"][2]
    assert stage["artifacts"] == ["stages/02-quantize_onnx/model_int8.onnx"]
    assert stage["details"]["input"] == "../01-export_onnx/model.onnx"
    assert {"mode", "format", "per_channel", "weight_type", "activation_type", "calibration", "graph", "size", "macs"} <= set(stage["details"])
    assert "calibration: {'method': 'minmax', 'source': 'data.calibration'" in (static_run.run_dir / "report.md").read_text()


def test_calibration_data_holding_nan_fails_naming_the_entry(tmp_path):
    """Issue 25, item 10: NaN calibration inputs failed inside onnxruntime ('AssertionError: scale issue')."""
    run = run_pass("quantize_onnx", {}, tmp_path=tmp_path, plugins=[plugins_for_tests], before=[{"export_onnx": {}}],
                   data={"calibration": {"source": "python:plugins_for_tests:nonfinite_noise", "batch_size": 4}},
                   source="python:plugins_for_tests:tiny_net", measure=QUICK, expect_status="failed")
    assert run.stage["error"] == (
        "stage 2 (quantize_onnx) failed: quantize_onnx: data.calibration holds 2 samples with NaN or infinite values "
        "(of 8 read); quantization scales cannot be computed from them: fix the data or its transform"
    )
