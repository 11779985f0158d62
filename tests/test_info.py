"""``optkit info``: the measurement of one model without a pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from optkit.run.info import parse_input_shape


def aten_macs(model: torch.nn.Module, shape: list[int]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


def test_info_json_resnet18(cli):
    result = cli("info", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--warmup", "0", "--iters", "2", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    model = torchvision.models.resnet18()
    assert info["params"] == sum(p.numel() for p in model.parameters()) == 11_689_512
    assert info["macs"] == aten_macs(model, [1, 3, 64, 64])
    assert info["gflops"] == pytest.approx(2 * info["gmacs"], rel=1e-12)
    assert info["uncounted"] == {}
    assert info["latency_ms"]["n"] == 2 and info["latency_ms"]["device"] == "cpu"
    assert info["input_shape"] == [1, 3, 64, 64]
    assert "parameters" not in info


def test_info_verbose_json_has_per_parameter_and_per_layer_rows(cli):
    result = cli("info", "torchvision:mobilenet_v3_small", "-s", "3x32x32", "--no-latency", "--verbose", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert "latency_ms" not in info
    model = torchvision.models.mobilenet_v3_small()
    names = [name for name, _ in model.named_parameters()]
    assert [row["name"] for row in info["parameters"]] == names
    first = info["parameters"][0]
    assert first["index"] == 0 and first["shape"] == list(model.features[0][0].weight.shape) and first["trainable"]
    rows = {row["module"]: row for row in info["layer_macs"]}
    assert info["layer_macs"][0]["module"] == "(root)" and rows["(root)"]["macs"] == info["macs"]
    assert sum(row["self_macs"] for row in info["layer_macs"]) == info["macs"]
    assert rows["features"]["macs"] == sum(rows[f"features.{i}"]["macs"] for i in range(13) if f"features.{i}" in rows)
    assert rows["features.0.0"]["counted_by"] == "thop" and rows["features"]["counted_by"] == "children"
    assert all(row["macs"] >= row["self_macs"] >= 0 for row in info["layer_macs"])


def test_info_table_for_a_person(cli):
    result = cli("info", "torchvision:resnet18", "-s", "1,3,32,32", "--no-latency", "-v")
    assert result.exit_code == 0, result.output
    for text in ("parameters", "11,689,512", "GMACs", "= 2 × GMACs", "MACs per layer", "mu", "sigma"):
        assert text in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["torchvision:resnet18", "-s", "1,3,abc"], "--input-shape '1,3,abc'"),
        (["torchvision:resnett18"], "did you mean 'resnet18'"),
        (["resnet18"], "expected scheme:name"),
        (["torchvision:resnet18", "--device", "gpu"], "expected auto, cpu, cuda"),
    ],
)
def test_info_bad_input_is_a_clear_error(cli, args: list[str], message: str):
    result = cli("info", *args, "--no-latency")
    assert result.exit_code == 2
    assert message in result.output


def test_parse_input_shape():
    assert parse_input_shape("1,3,224,224") == [1, 3, 224, 224]
    assert parse_input_shape("[2, 3, 64, 64]") == [2, 3, 64, 64]
    assert parse_input_shape("3x299x299") == [1, 3, 299, 299]


def test_optkit_help_does_not_import_torch():
    code = "import sys; from optkit.cli.commands import cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_info_matches_torchvision_published_figures(cli):
    """The issue's check: ``optkit info torchvision:X --json`` against ``_ops`` and ``num_params``."""
    for name in ("resnet50", "vit_b_16", "swin_t"):
        result = cli("info", f"torchvision:{name}", "--no-latency", "--json")
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        assert info["gmacs"] == pytest.approx(meta["_ops"], rel=0.02), name
        assert info["params"] == meta["num_params"], name


def flop_counter_macs(model: torch.nn.Module, inputs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inputs.call(model.eval())
    return counter.get_total_flops() // 2


def test_info_measures_several_inputs_given_with_inputs(cli):
    from optkit.inputs import ExampleInputs, InputDef
    from several_inputs_toys import TwoFrameFlow

    frames = "[{name: frame1, shape: [1, 3, 32, 32]}, {name: frame2, shape: [1, 3, 32, 32]}]"
    result = cli("info", "python:several_inputs_toys:two_frame", "--inputs", frames, "--no-latency", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    inputs = ExampleInputs.sample([InputDef("frame1", (1, 3, 32, 32)), InputDef("frame2", (1, 3, 32, 32))], seed=0)
    assert info["macs"] == flop_counter_macs(TwoFrameFlow(), inputs) > 0
    assert [(i["name"], i["shape"], i["keyword"]) for i in info["inputs"]] == [
        ("frame1", [1, 3, 32, 32], False),
        ("frame2", [1, 3, 32, 32], False),
    ]

    table = cli("info", "python:several_inputs_toys:two_frame", "--inputs", frames, "--no-latency")
    assert table.exit_code == 0 and "inputs frame1 [1, 3, 32, 32] float32, frame2 [1, 3, 32, 32]" in " ".join(table.output.split())


def test_info_takes_the_example_inputs_a_source_returns(cli):
    result = cli("info", "python:several_inputs_toys:tiny_encoder_with_inputs", "--no-latency", "--json")
    assert result.exit_code == 0, result.output
    assert [(i["name"], i["dtype"], i["keyword"]) for i in json.loads(result.output)["inputs"]] == [
        ("input_ids", "int64", True),
        ("attention_mask", "int64", True),
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--inputs", "[1, 2"], "not YAML"),
        (["--inputs", "7"], "expected a mapping or a list"),
        (["--inputs", "{ids: {shape: [1, 8], dtype: int64}}"], "range"),
        (["--inputs", "{x: {shape: [1, 3, 8, 8]}}", "-s", "1,3,8,8"], "not both"),
    ],
)
def test_info_bad_inputs_are_a_clear_error(cli, args: list[str], message: str):
    result = cli("info", "python:several_inputs_toys:two_frame", *args, "--no-latency")
    assert result.exit_code == 2, result.output
    assert message in result.output
