"""Models of several and integer inputs (``model.inputs``): the spec, the seeded inputs, MACs against
torch's own FLOP counter, export with named and symbolic inputs, int8 with every input calibrated,
the ``hf:`` source, and the passes that refuse such models up front."""

from __future__ import annotations

import json
import math

import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from optkit.config.pipeline import load_pipeline, parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.inputs import ExampleInputs, InputDef
from optkit.measure.flops import count_macs
from optkit.run.runner import example_input, run_pipeline
from optkit.testing import run_pass
from several_inputs_toys import TinyEncoder, TwoFrameFlow

FRAMES = """
  inputs:
    - {name: frame1, shape: [1, 3, 32, 32]}
    - {name: frame2, shape: [1, 3, 32, 32]}
"""
TOKENS = """
  inputs:
    input_ids: {shape: [1, 32], dtype: int64, range: [0, 100]}
    attention_mask: {shape: [1, 32], dtype: int64, range: [1, 2]}
"""
#: Quick measurement: MACs, parity and drift are under test here, not latency.
QUICK = "measure: {warmup: 0, iters: 1, latency: false}\n"
#: A flow field and a 3-class toy are not both classifiers of many classes: held to cosine only.
SIMILARITY = "min_cosine: 0.98, min_top1_agreement: null"
#: export (the default exporter, torch.export-based), then dynamic int8.
INT8_DYNAMIC = f"passes:\n  - export_onnx\n  - quantize_onnx: {{mode: dynamic, {SIMILARITY}}}\n"
#: The same by TorchScript (quicker; torch.export of keyword inputs is covered by the hf: BERT test).
INT8_DYNAMIC_TORCHSCRIPT = INT8_DYNAMIC.replace("  - export_onnx\n", "  - export_onnx: {exporter: torchscript}\n")
#: export (TorchScript: quicker), then static int8 calibrated on random batches drawn from the spec.
INT8_STATIC = (
    f"passes:\n  - export_onnx: {{exporter: torchscript}}\n"
    f"  - quantize_onnx: {{mode: static, calibration: {{random: true, batches: 4}}, {SIMILARITY}}}\n"
)


def run(tmp_path, text: str, host: Host | None = None):
    host = host or Host()
    pipeline = parse_pipeline(text, host.get_pass, tmp_path / "p.yaml", host.get_source)
    report, _ = run_pipeline(pipeline, host, output=tmp_path / "run")
    return report


def flop_counter_macs(model: torch.nn.Module, inputs: ExampleInputs) -> int:
    """MACs by torch's own aten-level FLOP counter (2 FLOPs per multiply-accumulate)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inputs.call(model.eval())
    return counter.get_total_flops() // 2


# --- the spec -------------------------------------------------------------------------------------


def test_inputs_as_a_list_are_positional_and_as_a_mapping_by_keyword(tmp_path):
    host = Host()
    listed = parse_pipeline(f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}", host.get_pass, tmp_path / "p.yaml")
    mapped = parse_pipeline(f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}", host.get_pass, tmp_path / "p.yaml")

    frames = ExampleInputs.sample(listed.model.input_defs(), seed=0)
    tokens = ExampleInputs.sample(mapped.model.input_defs(), seed=0)

    assert [t.shape for t in frames.args] == [torch.Size([1, 3, 32, 32])] * 2 and not frames.kwargs
    assert not tokens.args and list(tokens.kwargs) == ["input_ids", "attention_mask"]
    ids, mask = tokens.kwargs.values()
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 100 and len(ids.unique()) > 10
    assert torch.equal(mask, torch.ones(1, 32, dtype=torch.int64))


def test_seeded_inputs_repeat_and_one_float_input_is_the_input_shape_batch():
    defs = [InputDef("ids", (2, 8), torch.int64, 5, 9), InputDef("x", (2, 4))]

    first, again = ExampleInputs.sample(defs, seed=3), ExampleInputs.sample(defs, seed=3)

    assert all(torch.equal(a, b) for a, b in zip(first.tensors, again.tensors))
    assert set(first.args[0].unique().tolist()) <= {5, 6, 7, 8}
    # input_shape's batch is what it always was: torch.randn after manual_seed(seed).
    expected = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(example_input([1, 3, 8, 8], 7, torch.device("cpu")), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("  input_shape: [1, 3, 32, 32]\n" + FRAMES, "give either input_shape (one float tensor) or inputs"),
        ("  inputs:\n    ids: {shape: [1, 8], dtype: int64}\n", "an int64 input needs a range"),
        ("  inputs:\n    ids: {shape: [1, 8], dtype: int64, range: [5, 5]}\n", "range [5.0, 5.0) is empty"),
        ("  inputs:\n    ids: {shape: [1, 8], dtype: float64}\n", "float64"),
        ("  inputs:\n    - {name: a, shape: [1, 8]}\n    - {name: a, shape: [1, 8]}\n", "the names ['a', 'a'] repeat"),
    ],
)
def test_a_bad_inputs_section_is_an_error_with_its_line(write_pipeline, model, message):
    path = write_pipeline(f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{model}")
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, Host().get_pass)
    assert f"{path.name}:" in str(info.value) and message in str(info.value)
    assert info.value.line is not None and 1 <= info.value.line <= 4


# --- MACs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (TwoFrameFlow(), ExampleInputs.sample([InputDef("frame1", (2, 3, 32, 32)), InputDef("frame2", (2, 3, 32, 32))], seed=0)),
        (TinyEncoder(), ExampleInputs.sample(
            [InputDef("input_ids", (2, 16), torch.int64, 0, 100, True), InputDef("attention_mask", (2, 16), torch.int64, 1, 2, True)], seed=0)),
    ],
    ids=["two_frames", "token_ids_and_mask"],
)
def test_macs_of_several_inputs_are_half_the_flop_counters_flops(model, inputs):
    # Exact, not within a tolerance: optkit counts convolutions and linear layers by thop's formulas and
    # everything else by the same aten counter; both count one MAC per multiply-add of the convolutions
    # and matrix products, and FlopCounterMode two FLOPs for each (biases, norms and softmax count 0 in both).
    assert count_macs(model, inputs)["macs"] == flop_counter_macs(model, inputs) > 0


# --- pipelines: baseline, export, int8 --------------------------------------------------------------


def check_export(report, run_dir, stage: int, names: list[str], sequence: bool):
    """Named inputs with a symbolic batch (and sequence), and parity on every checked batch."""
    details = report.stages[stage].details
    assert details["input_names"] == names
    graph = onnx.load(str(next(run_dir.glob(f"stages/{stage:02d}-export_onnx/model.onnx"))))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert [dims[n][0] for n in names] == ["batch"] * len(names)
    assert all((dims[n][1] == "sequence") == sequence for n in names)
    parity = details["parity"]["inputs"]
    assert {"example", "batch_1", "batch_2", "batch_8"} <= set(parity) and all(f["comparable"] for f in parity.values())
    if sequence:  # the symbolic sequence is checked at half the example's length
        assert any(label.startswith("sequence_") for label in parity)
    assert details["parity"]["max_abs"] < 1e-4 * max(f["reference_max_abs"] for f in parity.values())


@pytest.mark.parametrize("passes", [INT8_DYNAMIC, INT8_STATIC], ids=["dynamic", "static"])
def test_two_frame_model_runs_baseline_export_and_int8(tmp_path, passes):
    report = run(tmp_path, f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}{QUICK}{passes}")

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    inputs = ExampleInputs.sample([InputDef("frame1", (1, 3, 32, 32)), InputDef("frame2", (1, 3, 32, 32))], seed=0)
    assert report.stages[0].metrics.macs == flop_counter_macs(TwoFrameFlow(), inputs)  # MACs depend on shapes only
    check_export(report, tmp_path / "run", 1, ["frame1", "frame2"], sequence=False)
    assert report.stages[2].metrics.drift.cosine >= 0.98
    if passes is INT8_STATIC:
        assert report.stages[2].details["calibration"]["source"] == "random" and report.stages[2].details["calibration"]["batches"] == 4


@pytest.mark.parametrize("passes", [INT8_DYNAMIC_TORCHSCRIPT, INT8_STATIC], ids=["dynamic", "static"])
def test_token_model_runs_baseline_export_and_int8(tmp_path, passes):
    report = run(tmp_path, f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}{QUICK}{passes}")

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    inputs = ExampleInputs.sample(
        [InputDef("input_ids", (1, 32), torch.int64, 0, 100, True), InputDef("attention_mask", (1, 32), torch.int64, 1, 2, True)], seed=0
    )
    assert report.stages[0].metrics.macs == flop_counter_macs(TinyEncoder(), inputs)
    check_export(report, tmp_path / "run", 1, ["input_ids", "attention_mask"], sequence=True)
    assert report.stages[2].metrics.drift.cosine >= 0.98


def test_static_int8_calibrates_on_a_dataset_of_input_dicts(tmp_path):
    text = (
        f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}{QUICK}"
        "data:\n  calibration: {source: 'python:several_inputs_toys:pairs', kwargs: {as_dict: true}, batch_size: 4}\n"
        f"passes:\n  - export_onnx: {{exporter: torchscript}}\n  - quantize_onnx: {{mode: static, {SIMILARITY}}}\n"
    )
    report = run(tmp_path, text)

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    assert report.stages[2].details["calibration"] | {"method": "minmax"} == {
        "method": "minmax", "source": "data.calibration", "batches": 2, "samples": 8
    }


def test_accuracy_on_a_dataset_of_token_dicts_for_the_model_and_its_export(tmp_path):
    text = (
        f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}"
        "measure: {warmup: 0, iters: 1, latency: false, accuracy: true}\n"
        "data:\n  eval: {source: 'python:several_inputs_toys:token_samples', batch_size: 4}\n"
        "passes: [{export_onnx: {exporter: torchscript}}]\n"
    )
    report = run(tmp_path, text)

    assert [s.status for s in report.stages] == ["ok", "ok"], report.error
    accuracy = [s.metrics.accuracy for s in report.stages]
    assert accuracy[0].n == 12 and accuracy[1].top1 == accuracy[0].top1
    assert report.stages[1].metrics.agreement.top1 == 1.0


def test_python_source_may_return_its_example_inputs(tmp_path):
    source = "model: {source: 'python:several_inputs_toys:tiny_encoder_with_inputs'}\n"
    report = run(tmp_path, f"{source}{QUICK}passes: [{{export_onnx: {{exporter: torchscript}}}}]\n")

    assert [s.status for s in report.stages] == ["ok", "ok"], report.error
    assert report.stages[0].details["example_inputs"] == [
        {"name": "input_ids", "shape": [2, 16], "dtype": "int64", "keyword": True},
        {"name": "attention_mask", "shape": [2, 16], "dtype": "int64", "keyword": True},
    ]
    assert report.stages[1].details["parity"]["inputs"]["example"]["batch"] == 2


def test_fuse_bn_folds_the_batchnorms_of_a_two_input_model_through_the_test_kit(tmp_path):
    frames = [{"name": "frame1", "shape": [1, 3, 32, 32]}, {"name": "frame2", "shape": [1, 3, 32, 32]}]
    result = run_pass(
        "fuse_bn", tmp_path=tmp_path, source="python:several_inputs_toys:two_frame", inputs=frames, model_kwargs={"shared": False},
        measure={"warmup": 0, "iters": 1, "latency": False},
    )

    assert result.report["pipeline"]["model"]["inputs"][1]["name"] == "frame2"
    assert result.stage["details"]["pairs_fused"] == 2
    assert result.stage["metrics"]["drift"]["cosine"] > 0.99999


# --- passes that take one input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("finetune: {bn_recalibrate: true}", "finetune: bn_recalibrate feeds one input tensor per batch, and this model takes 2"),
        (
            "{prune_channels: {target: {macs: 0.5}}}",
            "prune_channels: a model of 2 inputs (frame1, frame2) is traced on its example inputs, which target cannot use",
        ),
    ],
)
def test_passes_of_one_input_refuse_in_one_line_before_any_work(tmp_path, stage, message):
    report = run(tmp_path, f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}{QUICK}passes: [{stage}]\n")

    assert [s.status for s in report.stages] == ["ok", "failed"]
    assert message in report.error and "\n" not in report.error
    assert report.stages[1].duration_s < 5


def test_tta_augments_both_frames_exports_and_refuses_token_inputs_in_one_line(tmp_path):
    stages = "[{tta: {scales: [1.0, 0.5], flips: [horizontal], output: flow, stride: 16}}, export_onnx]"
    frames = run(tmp_path / "frames", f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}{QUICK}passes: {stages}\n")
    tokens = run(tmp_path / "tokens", f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}{QUICK}passes: [tta]\n")

    assert [s.status for s in frames.stages] == ["ok", "ok", "ok"], frames.error
    assert [b["input_hw"] for b in frames.stages[1].details["branches"]] == [[32, 32], [32, 32], [16, 16], [16, 16]]
    parity = frames.stages[2].details["parity"]["inputs"]
    assert parity["batch_2"]["cosine"] > 0.99999 and parity["batch_2"]["outputs"][0]["shape"] == [2, 2, 32, 32]
    assert frames.stages[1].details["cost_multiplier"] > 2
    assert [s.status for s in tokens.stages] == ["ok", "failed"]
    assert "the model's inputs are input_ids [1, 32] int64, attention_mask [1, 32] int64" in tokens.error
    assert "\n" not in tokens.error


@pytest.mark.parametrize(
    ("stage", "refusal"),
    [
        ("{prune_l1: {mode: channels, amount: 0.25}}", "takes input_ids, attention_mask by keyword; use mode: unstructured"),
        ("{prune_channels: {amount: 0.25}}", "takes input_ids, attention_mask by keyword; give model.inputs as a list"),
    ],
)
def test_channel_pruning_traces_positional_inputs_and_refuses_keyword_ones(tmp_path, stage, refusal):
    frames = run(tmp_path / "frames", f"model:\n  source: python:several_inputs_toys:two_frame\n{FRAMES}{QUICK}passes: [{stage}]\n")
    tokens = run(tmp_path / "tokens", f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}{QUICK}passes: [{stage}]\n")

    assert [s.status for s in frames.stages] == ["ok", "ok"], frames.error
    assert frames.stages[1].metrics.params < frames.stages[0].metrics.params
    assert [s.status for s in tokens.stages] == ["ok", "failed"]
    assert refusal in tokens.error and "\n" not in tokens.error


def test_report_json_records_the_inputs(tmp_path):
    run(tmp_path, f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}{QUICK}")
    model = json.loads((tmp_path / "run" / "report.json").read_text())["pipeline"]["model"]
    assert model["inputs"]["input_ids"] == {"name": None, "shape": [1, 32], "dtype": "int64", "range": [0.0, 100.0]}


# --- the hf: source -------------------------------------------------------------------------------

#: BERT from a tiny config: hidden 32, 2 layers, 2 heads, vocabulary 100.
BERT_CONFIG = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100, "num_labels": 3
}


def hf_bert_section(target: str = "bert", config: dict | None = None) -> str:
    kwargs = f"\n  kwargs:\n    config: {json.dumps(config)}" if config is not None else ""
    return f"model:\n  source: hf:{target}{kwargs}\n"


def test_hf_bert_with_given_inputs_runs_baseline_export_and_static_int8(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    report = run(tmp_path, hf_bert_section(config=BERT_CONFIG) + TOKENS + QUICK + INT8_STATIC)

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    # onnxruntime's symbolic shape inference stops short on BERT (and saves its temporary model in the working
    # directory): pre-processing runs again without it
    assert report.stages[2].details["preprocess"].startswith("quant_pre_process without symbolic shape inference")
    assert not list(cwd.iterdir())
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(**BERT_CONFIG, attn_implementation="eager"))
    sample = ExampleInputs.sample(
        [InputDef("input_ids", (1, 32), torch.int64, 0, 100, True), InputDef("attention_mask", (1, 32), torch.int64, 1, 2, True)], seed=0
    )
    assert report.stages[0].metrics.macs == flop_counter_macs(bert, sample)
    check_export(report, tmp_path / "run", 1, ["input_ids", "attention_mask"], sequence=True)
    assert report.stages[2].metrics.drift.cosine >= 0.98


@pytest.mark.slow  # torch.export of BERT takes a minute or two on two busy cores
def test_hf_bert_from_a_config_runs_baseline_export_and_int8(tmp_path):
    transformers = pytest.importorskip("transformers")
    report = run(tmp_path, hf_bert_section(config=BERT_CONFIG) + QUICK + INT8_DYNAMIC)

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    assert report.stages[0].details["source"]["class"] == "BertForSequenceClassification"
    inputs = [
        {"name": "input_ids", "shape": [1, 128], "dtype": "int64", "keyword": True},
        {"name": "attention_mask", "shape": [1, 128], "dtype": "int64", "keyword": True},
    ]
    assert report.stages[0].details["example_inputs"] == inputs
    config = transformers.BertConfig(**BERT_CONFIG, attn_implementation="eager")
    bert = transformers.BertForSequenceClassification(config)
    sample = ExampleInputs.sample(
        [InputDef("input_ids", (1, 128), torch.int64, 0, 100, True), InputDef("attention_mask", (1, 128), torch.int64, 1, 2, True)], seed=0
    )
    assert report.stages[0].metrics.macs == flop_counter_macs(bert, sample)
    check_export(report, tmp_path / "run", 1, ["input_ids", "attention_mask"], sequence=True)
    assert report.stages[1].details["exporter"] == "dynamo"
    assert report.stages[2].metrics.drift.cosine >= 0.98


def test_hf_folder_loads_its_weights_and_a_config_file_builds_random_ones(tmp_path):
    transformers = pytest.importorskip("transformers")
    from optkit.models.loading import load_model
    from optkit.config.pipeline import ModelSpec
    from optkit_plugins.hf_source import load_hf

    torch.manual_seed(0)
    saved = transformers.BertForSequenceClassification(transformers.BertConfig(**BERT_CONFIG)).eval()
    saved.save_pretrained(tmp_path / "bert")
    (tmp_path / "config.json").write_text((tmp_path / "bert" / "config.json").read_text())
    ids = torch.randint(0, 100, (2, 10))

    folder, details, inputs = load_model(ModelSpec(source="hf:bert"), load_hf, tmp_path, with_inputs=True)
    from_config, _ = load_model(ModelSpec(source="hf:config.json"), load_hf, tmp_path)

    torch.testing.assert_close(folder(input_ids=ids), saved(input_ids=ids).logits, rtol=1e-5, atol=1e-6)  # same weights, same kernels
    assert not torch.allclose(from_config(input_ids=ids), saved(input_ids=ids).logits)
    assert details["source"]["weights"] == str(tmp_path / "bert") and list(inputs.kwargs) == ["input_ids", "attention_mask"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (hf_bert_section("missing"), "hf:missing is neither a folder nor a .json config file"),
        (hf_bert_section("nothing.json"), "does not exist"),
        (hf_bert_section("nonsense", {"hidden_size": 32}), "hf:nonsense: Unrecognized model identifier: nonsense"),
        (hf_bert_section("bert", {"vocab_size": 10}) + "    task: summarize\n", "model.kwargs.task: 'summarize' is not one of"),
        (hf_bert_section("bert", {"vocab_size": 10}) + "    revision: main\n", "take task, config and attn_implementation, not revision"),
    ],
)
def test_hf_source_errors_name_what_to_fix(tmp_path, source, message):
    pytest.importorskip("transformers")
    with pytest.raises(PipelineError) as info:
        run(tmp_path, source + QUICK)
    assert message in str(info.value)


@pytest.mark.slow  # RAFT's 12 recurrent updates: minutes of tracing and exporting on two busy cores
def test_torchvision_raft_small_runs_baseline_export_and_int8(tmp_path):
    from torchvision.models.optical_flow import raft_small

    frames = "  inputs:\n    - {name: image1, shape: [1, 3, 128, 128]}\n    - {name: image2, shape: [1, 3, 128, 128]}\n"
    passes = f"passes:\n  - export_onnx: {{exporter: torchscript}}\n  - quantize_onnx: {{mode: dynamic, {SIMILARITY}}}\n"
    report = run(tmp_path, f"model:\n  source: torchvision:raft_small\n{frames}{QUICK}{passes}")

    assert [s.status for s in report.stages] == ["ok"] * 3, report.error
    inputs = ExampleInputs.sample([InputDef("image1", (1, 3, 128, 128)), InputDef("image2", (1, 3, 128, 128))], seed=0)
    assert report.stages[0].metrics.macs == flop_counter_macs(raft_small(), inputs)
    check_export(report, tmp_path / "run", 1, ["image1", "image2"], sequence=False)


def test_finetune_trains_a_token_model_on_a_dataset_of_input_dicts(tmp_path):
    text = (
        f"model:\n  source: python:several_inputs_toys:tiny_encoder\n{TOKENS}{QUICK}"
        "data:\n  train: {source: 'python:several_inputs_toys:token_samples', batch_size: 4}\n"
        "passes: [{finetune: {max_steps: 3, teacher: none, lr: 0.01}}]\n"
    )
    report = run(tmp_path, text)

    assert [s.status for s in report.stages] == ["ok", "ok"], report.error
    details = report.stages[1].details
    assert details["steps"] == 3 and details["samples_seen"] == 12
    assert all(math.isfinite(row["loss"]) for row in details["loss_curve"])
    assert report.stages[1].metrics.drift.cosine < 1.0  # the weights moved


def test_hf_bert_finetunes_on_a_dataset_of_token_dicts_and_prunes_its_mlp_width_and_heads(tmp_path):
    """BERT from a config: finetune on ({input_ids, attention_mask}, label) samples; channel pruning (positional inputs)
    narrows the MLPs and removes whole attention heads (the transformers module rule: 2 heads of 16 -> 1)."""
    pytest.importorskip("transformers")
    train = "data:\n  train: {source: 'python:several_inputs_toys:token_samples', batch_size: 4}\n"
    report = run(tmp_path, hf_bert_section(config=BERT_CONFIG) + QUICK + train + "passes: [{finetune: {max_steps: 2, teacher: none}}]\n")
    assert [s.status for s in report.stages] == ["ok", "ok"], report.error
    assert report.stages[1].details["samples_seen"] == 8

    positional = TOKENS.replace("input_ids: {", "- {name: input_ids, ").replace("attention_mask: {", "- {name: attention_mask, ")
    text = hf_bert_section(config=BERT_CONFIG) + positional + QUICK + "passes: [{prune_l1: {mode: channels, amount: 0.5}}]\n"
    pruned = run(tmp_path / "prune", text)
    assert [s.status for s in pruned.stages] == ["ok", "ok"], pruned.error
    channels = pruned.stages[1].details["channels"]
    assert channels["model.bert.encoder.layer.0.intermediate.dense"] == [64, 32]
    assert channels["model.bert.encoder.layer.0.attention.self.query"] == [32, 16]
    assert set(pruned.stages[1].details["rules_used"].values()) == {"transformers.models.bert.modeling_bert.BertSelfAttention"}
    assert pruned.stages[1].metrics.macs < pruned.stages[0].metrics.macs
