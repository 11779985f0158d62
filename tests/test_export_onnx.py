"""export_onnx on small models: exporters and fallback, names, dynamic batch, parity, options."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn

from optkit import run_pipeline
from optkit.errors import StageError
from optkit.passes import PassContext
from optkit.results import DriftComparison
from optkit_plugins.export_onnx import ExportOnnx
from optkit_plugins.export_onnx.exporter import output_layout
from optkit_plugins.export_onnx.verify import Parity, check_onnx_file, parity_failure

# What onnxruntime must match PyTorch to in fp32 (the pass's default tolerance, elementwise here).
CLOSE = {"atol": 1e-5, "rtol": 1e-3}


class ConvNet(nn.Module):
    """Conv-BN-ReLU, pooled to logits; with ``two_heads`` a tuple of (logits, feature map)."""

    def __init__(self, two_heads: bool = False):
        super().__init__()
        self.two_heads = two_heads
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        features = self.body(x)
        logits = self.head(features.mean((2, 3)))
        return (logits, features) if self.two_heads else logits


class DictNet(ConvNet):
    """Returns a dict whose insertion order ('out', 'aux') is not its sorted order."""

    def forward(self, x):
        features = self.body(x)
        return {"out": self.head(features.mean((2, 3))), "aux": features}


class DataDependentBranch(ConvNet):
    """torch.export cannot capture a branch on tensor values; the TorchScript tracer can."""

    def forward(self, x):
        features = self.body(x)
        if features.sum() >= 0:  # always true after ReLU: the traced branch is the right one
            features = features * 2
        return self.head(features.mean((2, 3)))


class BatchOneShortcut(ConvNet):
    """Computes something else for batch 1: a trace at batch 1 bakes that in for every batch."""

    def forward(self, x):
        logits = ConvNet.forward(self, x)
        return logits * 2 if x.shape[0] == 1 else logits


class FixedBatchReshape(ConvNet):
    """``int(x.shape[0])`` becomes a constant under tracing: batch 2 gets the wrong shape."""

    def forward(self, x):
        return self.body(x).reshape(int(x.shape[0]), -1)


def make_model(cls: type[nn.Module] = ConvNet, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that BN is not an identity
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    return model


def make_ctx(tmp_path: Path, shape=(1, 3, 16, 16)) -> PassContext:
    out = tmp_path / "stage"
    out.mkdir()
    return PassContext(
        device=torch.device("cpu"),
        example_input=torch.randn(*shape, generator=torch.Generator().manual_seed(0)),
        output_dir=out,
        logger=logging.getLogger("test.export_onnx"),
        stage_index=1,
    )


def export(model: nn.Module, tmp_path: Path, **options):
    ctx = make_ctx(tmp_path)
    artifact = ExportOnnx(ExportOnnx.Options(**options)).apply(model, ctx)
    return artifact, ctx


def test_dynamo_export_is_valid_symbolic_in_batch_and_matches_torch(tmp_path):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the pass must export an eval copy and leave the model as it was
    artifact, ctx = export(model, tmp_path)

    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert artifact.path == ctx.output_dir / "model.onnx" and artifact.path in ctx.artifacts
    assert artifact.source_model is model and artifact.runtime == "onnxruntime"
    assert ctx.details["exporter"] == "dynamo" and "fallback_reason" not in ctx.details
    assert ctx.details["onnx_checker"] == "passed"

    graph = onnx.load(str(artifact.path)).graph
    onnx.checker.check_model(onnx.load(str(artifact.path)), full_check=True)
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch" == ctx.details["batch_dim"]

    parity = ctx.details["parity"]
    assert set(parity["inputs"]) == {"example", "batch_1", "batch_2", "batch_8"}
    assert [parity["inputs"][k]["batch"] for k in ("batch_1", "batch_2", "batch_8")] == [1, 2, 8]
    assert 0 <= parity["max_abs"] <= 1e-5 + 1e-3 * max(f["reference_max_abs"] for f in parity["inputs"].values())

    # A batch size the pass did not check (3) runs too and matches the eval-mode model.
    run, x = artifact.load(torch.device("cpu")), torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(run(x), model.eval()(x), **CLOSE)


def test_attention_model_keeps_a_symbolic_batch_all_through(tmp_path):
    """torch.export specializes a size-1 dimension: traced at batch 1, nn.MultiheadAttention's
    reshapes kept batch 1 while the graph input said 'batch', and batch 2 failed in onnxruntime."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5).eval()
    artifact, ctx = export(model, tmp_path)

    assert ctx.details["exporter"] == "dynamo" and ctx.details["batch_dim"] == "batch"
    assert {k: v["batch"] for k, v in ctx.details["parity"]["inputs"].items()} == {"example": 1, "batch_1": 1, "batch_2": 2, "batch_8": 8}
    run, x = artifact.load(torch.device("cpu")), torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(run(x), model(x), **CLOSE)


def test_tuple_outputs_get_names_and_come_back_as_a_tuple(tmp_path):
    model = make_model(two_heads=True)
    artifact, ctx = export(model, tmp_path)
    assert ctx.details["output_names"] == ["output_0", "output_1"]
    assert [o.name for o in onnx.load(str(artifact.path)).graph.output] == ["output_0", "output_1"]
    x = torch.randn(2, 3, 16, 16)
    got = artifact.load(torch.device("cpu"))(x)
    with torch.inference_mode():
        expected = model(x)
    assert isinstance(got, tuple) and len(got) == 2
    torch.testing.assert_close(got, expected, **CLOSE)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dict_outputs_are_named_by_key_and_come_back_as_the_same_dict(tmp_path, exporter):
    model = make_model(DictNet)
    artifact, ctx = export(model, tmp_path, exporter=exporter)
    assert ctx.details["exporter"] == exporter
    assert ctx.details["output_names"] == ["out", "aux"]  # insertion order, as the exporters flatten
    outputs = onnx.load(str(artifact.path)).graph.output
    assert [o.name for o in outputs] == ["out", "aux"]
    assert [o.type.tensor_type.shape.dim[1].dim_value for o in outputs] == [5, 8]  # names on the right tensors
    x = torch.randn(2, 3, 16, 16)
    got = artifact.load(torch.device("cpu"))(x)
    with torch.inference_mode():
        expected = model(x)
    assert list(got) == ["out", "aux"]
    torch.testing.assert_close(got, expected, **CLOSE)


def test_output_layout_names_nested_outputs():
    t = torch.zeros(1)
    assert output_layout(t).names == ["output"]
    assert output_layout((t, [t, t])).names == ["output_0", "output_1.0", "output_1.1"]
    assert output_layout({"b": t, "a": {"x": t}}).names == ["b", "a.x"]
    with pytest.raises(StageError, match="must be tensors"):
        output_layout((t, None))


def test_user_names_for_input_and_outputs(tmp_path):
    artifact, ctx = export(
        make_model(two_heads=True), tmp_path, input_name="images", output_names=["logits", "features"], exporter="torchscript"
    )
    graph = onnx.load(str(artifact.path)).graph
    assert graph.input[0].name == "images"
    assert [o.name for o in graph.output] == ["logits", "features"]
    assert artifact.output_names == ["logits", "features"]


def test_wrong_number_of_output_names_is_refused_naming_the_option(tmp_path):
    with pytest.raises(StageError, match=r"output_names has 1 name\(s\) but the model returns 2 tensor\(s\)"):
        export(make_model(two_heads=True), tmp_path, output_names=["logits"])
    with pytest.raises(ValueError, match="distinct"):
        ExportOnnx.Options(output_names=["a", "a"])


def test_static_batch_is_fixed_in_the_graph_and_checked_on_random_inputs(tmp_path):
    model = make_model()
    artifact, ctx = export(model, tmp_path, dynamic_batch=False, exporter="torchscript")
    graph = onnx.load(str(artifact.path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert ctx.details["batch_dim"] is None
    assert set(ctx.details["parity"]["inputs"]) == {"example", "random_1", "random_2"}
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        artifact.session(torch.device("cpu")).run(None, {"input": x.numpy()})
    # the artifact's callable feeds a fixed-batch graph slice by slice (accuracy runs on batches of any size)
    with torch.inference_mode():
        torch.testing.assert_close(artifact.load(torch.device("cpu"))(x), model.eval()(x), **CLOSE)


def test_opset_is_honoured(tmp_path):
    artifact, ctx = export(make_model(), tmp_path, opset=17)
    assert ctx.details["opset"] == 17
    opsets = {o.domain: o.version for o in onnx.load(str(artifact.path)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


def test_falls_back_to_torchscript_when_torch_export_fails(tmp_path):
    model = make_model(DataDependentBranch)
    artifact, ctx = export(model, tmp_path)
    assert ctx.details["exporter"] == "torchscript"
    assert "torch.export" in ctx.details["fallback_reason"] or "Export" in ctx.details["fallback_reason"]
    assert ctx.details["batch_dim"] == "batch"
    x = torch.randn(8, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(artifact.load(torch.device("cpu"))(x), model(x), **CLOSE)


class TwoInputs(nn.Module):
    """Two images, ``forward(self, *args, **kwargs)`` as a transformers wrapper (optkit's ``FirstOutput``) takes them."""

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, *args, **kwargs):
        return self.net(args[0]) + self.net(args[1])


class FirstAndRest(TwoInputs):
    """The same with ``forward(self, x, *rest)``: a named input, then varargs."""

    def forward(self, x, *rest):
        return self.net(x) + self.net(rest[0])


@pytest.mark.parametrize("cls", [TwoInputs, FirstAndRest])
def test_dynamo_exports_a_forward_of_varargs_with_a_symbolic_batch(tmp_path, cls):
    """torch.export's dynamic_shapes holds one entry for all that ``*args`` takes (it took one per input)."""
    from optkit.inputs import ExampleInputs, InputDef

    inputs = ExampleInputs.sample([InputDef("a", (1, 3, 16, 16)), InputDef("b", (1, 3, 16, 16))], seed=0)
    ctx = make_ctx(tmp_path)
    ctx.example_inputs, ctx.example_input = inputs, inputs.first
    ExportOnnx(ExportOnnx.Options(exporter="dynamo")).apply(cls().eval(), ctx)

    assert ctx.details["exporter"] == "dynamo" and ctx.details["batch_dim"] == "batch"
    assert {k: v["batch"] for k, v in ctx.details["parity"]["inputs"].items()} == {"example": 1, "batch_1": 1, "batch_2": 2, "batch_8": 8}


def test_exporter_dynamo_does_not_fall_back(tmp_path):
    with pytest.raises(StageError, match=r"no exporter produced .* \(dynamo: TorchExportError: .*data-dependent"):
        export(make_model(DataDependentBranch), tmp_path, exporter="dynamo")


def test_value_mismatch_fails_the_stage_with_the_largest_difference(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(StageError) as failure:
        ExportOnnx(ExportOnnx.Options(exporter="torchscript")).apply(make_model(BatchOneShortcut), ctx)
    message = str(failure.value)
    assert "onnxruntime differs from PyTorch" in message and "max |Δ| =" in message
    figures = ctx.details["parity"]["inputs"]  # the figures are kept for the report
    assert figures["batch_1"]["max_abs"] <= 1e-5  # batch 1 is what was traced
    worst = max(figures, key=lambda k: figures[k]["max_abs"])
    assert f"input {worst} (batch {figures[worst]['batch']})" in message
    assert figures[worst]["max_abs"] > 0.01 and figures[worst]["batch"] in (2, 8)


def test_shape_mismatch_fails_the_stage(tmp_path):
    with pytest.raises(StageError, match=r"onnxruntime outputs have shapes \[\(1, 4096\)\] where PyTorch gives \[\(2, 2048\)\]"):
        export(make_model(FixedBatchReshape), tmp_path, exporter="torchscript")


def test_parity_tolerance_is_configurable():
    figures = {"batch_2": Parity(DriftComparison(comparable=True, max_abs=2e-3, reference_max_abs=1.0), batch=2)}
    assert "batch_2" in parity_failure(figures, atol=1e-5, rtol=1e-3)
    assert parity_failure(figures, atol=1e-5, rtol=1e-2) is None


def test_simplify_with_onnxslim_keeps_names_batch_and_parity(tmp_path):
    artifact, ctx = export(make_model(DictNet), tmp_path, simplify=True)
    assert ctx.details["simplified"] is True
    graph = onnx.load(str(artifact.path)).graph
    assert [o.name for o in graph.output] == ["out", "aux"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_simplify_failure_is_a_warning_and_keeps_the_unsimplified_model(tmp_path, monkeypatch, caplog):
    import onnxslim

    def broken(model, *args, **kwargs):
        raise RuntimeError("slim broke")

    monkeypatch.setattr(onnxslim, "slim", broken)
    with caplog.at_level(logging.WARNING):
        artifact, ctx = export(make_model(), tmp_path, simplify=True, exporter="torchscript")
    assert ctx.details["simplified"] is False
    assert ctx.details["simplify_error"] == "RuntimeError: slim broke"
    assert any("slim broke" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    check_onnx_file(artifact.path)  # the unsimplified file, valid and verified
    assert ctx.details["parity"]["max_abs"] <= 1e-4


def test_fp16_off_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="fp16 needs a CUDA device, and this run is on cpu"):
        export(make_model(), tmp_path, fp16=True)


def test_invalid_onnx_file_fails_the_checker(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])],  # no node makes z
    )
    path = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(StageError, match="bad.onnx fails onnx.checker"):
        check_onnx_file(path)


@pytest.mark.cuda
def test_fp16_export_on_cuda(tmp_path):
    device = torch.device("cuda", 0)
    ctx = make_ctx(tmp_path)
    ctx.device, ctx.example_input = device, ctx.example_input.to(device)
    model = make_model().to(device)
    artifact = ExportOnnx(ExportOnnx.Options(fp16=True)).apply(model, ctx)
    graph = onnx.load(str(artifact.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert ctx.details["precision"] == "fp16" and ctx.details["parity"]["device"] == "cuda:0"
    x = torch.randn(2, 3, 16, 16, device=device)
    with torch.inference_mode():
        torch.testing.assert_close(artifact.load(device)(x).float(), model(x).cpu(), atol=1e-2, rtol=1e-2)


def test_pipeline_run_measures_the_onnx_file_under_onnxruntime(write_pipeline, cli, tmp_path):
    path = write_pipeline(f"""
        model:
          source: torchvision:squeezenet1_1
          weights: none
          input_shape: [1, 3, 64, 64]
        device: cpu
        measure: {{warmup: 1, iters: 3}}
        passes:
          - export_onnx: {{opset: 18, output_names: [logits]}}
        output: {tmp_path / "run"}
    """)
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    stage = report["stages"][1]
    assert stage["status"] == "ok"
    onnx_file = tmp_path / "run" / stage["artifacts"][0]
    assert stage["metrics"]["size_bytes"] == onnx_file.stat().st_size
    assert stage["metrics"]["latency_ms"]["runtime"] == "onnxruntime"
    # on the CPU, onnxruntime reads and writes host memory shared with the torch tensors: no copies
    assert stage["metrics"]["latency_ms"]["io"] == {"inputs": "cpu", "outputs": "cpu", "host_copies": False, "io_binding": False}
    assert stage["metrics"]["params"] == report["stages"][0]["metrics"]["params"]
    assert stage["details"]["opset"] == 18 and stage["details"]["output_names"] == ["logits"]
    assert stage["metrics"]["drift"]["top1_agreement"] == 1.0
    assert stage["metrics"]["drift"]["max_abs"] <= 1e-4


def test_unknown_option_is_refused_with_the_pipeline_line(write_pipeline, cli):
    path = write_pipeline("""
        model: {source: "torchvision:squeezenet1_1", input_shape: [1, 3, 64, 64]}
        passes:
          - export_onnx: {opset: 18, dynamic: true}
    """)
    result = cli("run", path)
    assert result.exit_code == 2
    assert "pipeline.yaml:3" in result.output and "dynamic" in result.output


@pytest.mark.cuda
def test_cuda_artifact_runs_through_io_binding_on_device_memory(tmp_path):
    """On CUDA the artifact takes the input tensor's device memory and returns device tensors."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
    device = torch.device("cuda", 0)
    model = make_model(ConvNet, two_heads=True)
    artifact, _ = export(model, tmp_path)
    assert artifact.io(device) == {"inputs": "cuda:0", "outputs": "cuda:0", "host_copies": False, "io_binding": True}
    run = artifact.load(device)
    model = model.to(device)
    for batch in (2, 3, 2):  # a new input shape learns its output shapes; a known one binds torch tensors
        x = torch.randn(batch, 3, 16, 16, device=device)
        got = run(x)
        assert all(t.device == device for t in got)
        with torch.inference_mode():
            expected = model(x)
        torch.testing.assert_close(got, expected, **CLOSE)
    again = run(x)
    assert again[0].data_ptr() != got[0].data_ptr()  # fresh outputs each call, as a module's forward gives
    torch.testing.assert_close(again, got, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_pipeline_records_what_was_timed(write_pipeline, cli, tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
    path = write_pipeline(f"""
        model: {{source: "torchvision:resnet18", weights: none, input_shape: [2, 3, 64, 64]}}
        device: cuda
        measure: {{warmup: 3, iters: 20}}
        passes: [fuse_bn, export_onnx]
        output: {tmp_path / "run"}
    """)
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["timing"]["compare"] == "interleaved" and report["timing"]["noise"]["workload"].endswith("on cuda:0")
    torch_stage, onnx_stage = report["stages"][1]["metrics"]["latency_ms"], report["stages"][2]["metrics"]["latency_ms"]
    assert (torch_stage["timer"], torch_stage["io"]["inputs"], torch_stage["io"]["host_copies"]) == ("cuda_event", "cuda:0", False)
    assert (onnx_stage["timer"], onnx_stage["io"]["io_binding"], onnx_stage["io"]["host_copies"]) == ("perf_counter", True, False)
    assert report["stages"][2]["metrics"]["drift"]["max_abs"] <= 1e-3


def test_the_artifact_session_does_not_spin_between_calls(tmp_path):
    # A spinning intra-op pool takes the cores eager torch needs when both are timed side by side.
    artifact, _ = export(make_model(), tmp_path)
    options = artifact.session(torch.device("cpu")).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def data_dependent_branch() -> nn.Module:
    return make_model(DataDependentBranch)


def test_what_torch_export_prints_while_failing_goes_to_the_report_not_the_console(tmp_path, capfd):
    """torch.export prints the partial graph of a failed export to stderr (a detector's: ~850 lines, twice);
    the fallback to TorchScript keeps it out of the console, in library_warnings and the debug log."""
    pipeline = {
        "model": {"source": "python:test_export_onnx:data_dependent_branch", "input_shape": [1, 3, 16, 16]},
        "measure": {"latency": False},
        "passes": ["export_onnx"],
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    capfd.readouterr()
    report, _ = run_pipeline(tmp_path / "p.yaml")
    printed = capfd.readouterr()
    stage = report.stages[1]
    assert report.status == "ok" and stage.details["exporter"] == "torchscript"
    assert "def forward" not in printed.err + printed.out
    (kept,) = [line for line in stage.details["library_warnings"] if "torch.onnx.export (dynamo) printed" in line]
    assert kept.startswith("UserWarning: torch.onnx.export (dynamo) printed ") and "kept in the debug log" in kept
