"""prune_l1: exact unstructured sparsity, and channel pruning that keeps outputs and shrinks models."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

from optkit.config.pipeline import load_pipeline
from optkit.errors import PipelineError, StageError
from optkit.measure.flops import count_macs
from optkit.measure.params import count_params
from optkit.passes import PassContext
from optkit_plugins.prune_l1 import PruneL1

X64 = (1, 3, 64, 64)


def _ctx(tmp_path: Path, shape: tuple[int, ...] = X64) -> PassContext:
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return PassContext(torch.device("cpu"), inputs, tmp_path, logging.getLogger("test.prune_l1"))


def _prune(model: nn.Module, ctx: PassContext, **options) -> nn.Module:
    return PruneL1(PruneL1.Options(**options)).apply(model, ctx)


def _weighted(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# -- small models covering every coupling rule --------------------------------------------------
class ResidualConcat(nn.Module):
    """Residual add, concatenation, depthwise convolutions, SE scaling, flatten->Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.branch_a = nn.Conv2d(16, 8, 1)
        self.branch_b = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False))
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.squeeze = nn.Conv2d(24, 8, 1)
        self.excite = nn.Conv2d(8, 24, 1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.hidden = nn.Linear(24 * 16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.depthwise(x)
        scale = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = x * scale
        x = torch.flatten(self.pool(x), 1)
        return self.fc(torch.relu(self.hidden(x)))


class Shuffle(nn.Module):
    """A channel shuffle (reshape/transpose) that channel pruning must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.conv3(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@torch.no_grad()
def _silence_upper_half(model: nn.Module, classifier: str) -> None:
    """Zero the upper half of every layer's output channels (filters, biases, BN shifts).

    Those channels then carry exact zeros everywhere, have the smallest L1 norm, and are what
    ``amount: 0.5`` removes, so the pruned model must compute exactly the same outputs.
    Depthwise/grouped convolutions (bias-free) map zero channels to zero channels by themselves.
    """
    for name, module in model.named_modules():
        if name == classifier or getattr(module, "groups", 1) > 1:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            half = module.weight.shape[0] // 2
            module.weight[half:] = 0
            if module.bias is not None:
                module.bias[half:] = 0
        elif isinstance(module, nn.BatchNorm2d):
            module.bias[module.num_features // 2 :] = 0


# -- options -----------------------------------------------------------------------------------
def test_options_reject_mixed_modes():
    with pytest.raises(ValidationError, match="scope: global is for mode: unstructured"):
        PruneL1.Options(mode="channels", scope="global")
    with pytest.raises(ValidationError, match="round_to is for mode: channels"):
        PruneL1.Options(mode="unstructured", round_to=8)
    with pytest.raises(ValidationError, match="less than 1"):
        PruneL1.Options(amount=1.0)


def test_bad_option_in_pipeline_names_file_and_line(write_pipeline, host):
    path = write_pipeline(
        """
        model: {source: "torchvision:resnet18", weights: none, input_shape: [1, 3, 64, 64]}
        passes:
          - prune_l1: {mode: channels, amount: 0.5, scope: global}
        """
    )
    with pytest.raises(PipelineError) as err:
        load_pipeline(path, host.get_pass)
    assert f"{path}:3" in str(err.value) and "scope: global is for mode: unstructured" in str(err.value)


def test_pattern_matching_nothing_is_named(tmp_path):
    with pytest.raises(StageError, match=r"exclude pattern 'blocks\.\*' matches no convolution or Linear layer"):
        _prune(ResidualConcat(), _ctx(tmp_path), exclude=["blocks.*"])


# -- unstructured ------------------------------------------------------------------------------
def test_global_unstructured_sparsity_is_exact_and_permanent(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    ctx = _ctx(tmp_path)
    fc_before, keys_before = model.fc.weight.detach().clone(), set(model.state_dict())
    pruned = _prune(model, ctx, amount=0.4)
    layers = {n: m for n, m in _weighted(pruned).items() if n != "fc"}
    total = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    assert zeros == round(0.4 * total)
    assert ctx.details["zero_weights"] == zeros and ctx.details["sparsity"] == pytest.approx(zeros / total)
    assert ctx.details["classifier_left_alone"] == "fc"
    assert torch.equal(pruned.fc.weight, fc_before)
    # One global threshold: layers end up with different sparsity.
    assert len({round(s, 2) for s in ctx.details["layer_sparsity"].values()}) > 1
    # Permanent: plain weights, no masks or hooks, and the zeros survive a save and reload.
    state = pruned.state_dict()
    assert set(state) == keys_before
    assert not any(m._forward_pre_hooks for m in pruned.modules())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    reloaded = torchvision.models.resnet18(weights=None)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert sum(int((m.weight == 0).sum()) for n, m in _weighted(reloaded).items() if n != "fc") == zeros
    # The model handed to the pass is pruned in place: no defensive copy (the runner keeps the baseline).
    assert pruned is model


def test_layer_unstructured_sparsity_is_exact_per_layer(tmp_path):
    model = ResidualConcat().eval()
    ctx = _ctx(tmp_path)
    original = {name: module.weight.detach().clone() for name, module in _weighted(model).items()}
    pruned = _prune(model, ctx, amount=0.3, scope="layer", exclude=["stem.*"])
    for name, module in _weighted(pruned).items():
        if name in ("fc", "stem.0"):
            assert torch.equal(module.weight, original[name]), name
        else:
            assert int((module.weight == 0).sum()) == round(0.3 * module.weight.numel()), name
    assert set(ctx.details["layer_sparsity"]) == set(_weighted(model)) - {"fc", "stem.0"}


# -- channels ----------------------------------------------------------------------------------
def test_channels_keep_outputs_exactly_when_removed_channels_are_silent(tmp_path):
    torch.manual_seed(0)
    model = ResidualConcat().eval()
    _silence_upper_half(model, "fc")
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ctx.example_input), model(ctx.example_input), atol=1e-5, rtol=1e-5)
    # Every width halves; the residual pair stays coupled; depthwise convolutions stay depthwise.
    assert pruned.stem[0].out_channels == pruned.body[0].out_channels == 8
    assert pruned.body[1].num_features == 8
    assert (pruned.branch_a.out_channels, pruned.branch_b[2].out_channels, pruned.branch_b[2].groups) == (4, 8, 8)
    assert (pruned.depthwise.in_channels, pruned.depthwise.groups) == (12, 12)
    assert (pruned.squeeze.out_channels, pruned.excite.out_channels) == (4, 12)
    assert (pruned.hidden.in_features, pruned.hidden.out_features, pruned.fc.in_features) == (12 * 16, 16, 16)
    assert pruned.fc.out_features == 10
    coupled = [g for g in ctx.details["groups"] if set(g["layers"]) == {"stem.0", "body.0"}]
    assert coupled == [{"layers": ["stem.0", "body.0"], "channels": [16, 8]}]
    assert count_params(pruned)["params"] < count_params(model)["params"] / 3


def test_channels_on_torchvision_models_shrink_and_stay_exact(tmp_path):
    for build in (torchvision.models.resnet18, torchvision.models.mobilenet_v3_small):
        model = build(weights=None).eval()
        head = "fc" if hasattr(model, "fc") else "classifier.3"
        _silence_upper_half(model, head)
        ctx = _ctx(tmp_path)
        pruned = _prune(model, ctx, mode="channels", amount=0.5)
        with torch.no_grad():
            torch.testing.assert_close(pruned(ctx.example_input), model(ctx.example_input), atol=1e-4, rtol=1e-4)
        macs = count_macs(model, ctx.example_input)["macs"], count_macs(pruned, ctx.example_input)["macs"]
        params = count_params(model)["params"], count_params(pruned)["params"]
        assert macs[0] / macs[1] > 2.8, (build.__name__, macs)
        assert params[0] / params[1] > 2.0, (build.__name__, params)
        assert ctx.details["left_alone"] == [{"layers": [head], "channels": 1000, "reason": "reach the model's output"}]


def test_pruned_model_saves_whole_and_exports_to_onnx(tmp_path):
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.5, round_to=8)
    for name, (before, after) in ctx.details["channels"].items():
        if name != "classifier.1":
            assert after % 8 == 0 and after <= before, (name, before, after)
    with torch.no_grad():
        expected = pruned(ctx.example_input)
    path = tmp_path / "pruned.pt"
    torch.save(pruned, path)
    reloaded = torch.load(path, weights_only=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ctx.example_input), expected, atol=0, rtol=0)
    onnx_path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, (ctx.example_input,), str(onnx_path), dynamo=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: ctx.example_input.numpy()})
    torch.testing.assert_close(torch.from_numpy(np.asarray(result)), expected, atol=1e-4, rtol=1e-4)


def test_channels_leave_unsupported_ops_alone_and_name_them(tmp_path):
    model = Shuffle().eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.5)
    assert pruned.conv1.out_channels == 8  # feeds the shuffle
    assert pruned.conv2.out_channels == 4 and pruned.conv3.in_channels == 4
    assert pruned.conv3.out_channels == 8 and pruned.fc.in_features == 8
    reasons = {tuple(f["layers"]): f["reason"] for f in ctx.details["left_alone"]}
    assert reasons[("conv1",)] == "are reshaped across dimensions by aten.view in `<model>` (e.g. into heads)"


def test_excluded_layers_keep_their_inputs_and_outputs(tmp_path):
    model = torchvision.models.resnet18(weights=None).eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.5, exclude=["layer4.*"])
    excluded = {n: m for n, m in _weighted(model).items() if n.startswith("layer4.")}
    for name, layer in _weighted(pruned).items():
        if name in excluded:
            assert layer.weight.shape == excluded[name].weight.shape, name
    # layer3's output feeds layer4 (and the residual stream ties all of layer3's outputs): kept.
    assert pruned.layer3[1].conv2.out_channels == pruned.layer3[0].downsample[0].out_channels == 256
    assert pruned.layer3[0].conv1.out_channels == 128  # inside a block: pruned
    reasons = {f["reason"] for f in ctx.details["left_alone"]}
    assert "are excluded (exclude)" in reasons


def test_layers_not_included_keep_their_outputs_but_not_their_inputs(tmp_path):
    model = torchvision.models.resnet18(weights=None).eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.5, include=["layer1.*", "layer2.*", "layer3.*", "conv1"])
    assert pruned.layer4[0].conv1.out_channels == 512 and pruned.layer4[0].conv1.in_channels == 128


def test_amount_zero_changes_nothing(tmp_path):
    model = ResidualConcat().eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.0)
    assert count_params(pruned) == count_params(model)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ctx.example_input), model(ctx.example_input), atol=0, rtol=0)


def test_pipeline_reports_channels_and_measured_reduction(write_pipeline, cli, tmp_path):
    path = write_pipeline(
        f"""
        model: {{source: "torchvision:resnet18", weights: none, input_shape: [1, 3, 64, 64]}}
        device: cpu
        measure: {{warmup: 1, iters: 3}}
        passes:
          - prune_l1: {{mode: channels, amount: 0.5, round_to: 8}}
          - prune_l1: {{amount: 0.5}}
        output: {tmp_path / "run"}
        """
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    baseline, channels, sparse = report["stages"]
    assert channels["details"]["channels"]["layer1.0.conv1"] == [64, 32]
    assert baseline["metrics"]["macs"] / channels["metrics"]["macs"] > 3.5
    assert sparse["details"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert sparse["metrics"]["params"] == channels["metrics"]["params"]
    assert sparse["metrics"]["nonzero_params"] < 0.6 * channels["metrics"]["params"]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.abs().sum() >= 0:  # control flow on values: torch.fx cannot trace this (always true here)
            x = -x
        return self.fc(x.mean((2, 3)))


def test_a_model_torch_fx_cannot_trace_is_pruned_on_the_graph_it_executes(tmp_path):
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(DataDependent())
    ctx = _ctx(tmp_path)
    pruned = _prune(DataDependent(), ctx, mode="channels", amount=0.5)
    assert (pruned.conv.out_channels, pruned.fc.in_features) == (4, 4)
    assert ctx.details["channels"] == {"conv": [8, 4], "fc": [2, 2]}


def test_channels_amount_keeps_floor_of_the_rest_as_torch_pruning_does(tmp_path):
    """64 channels at amount 0.3: 44 kept (20 removed), as Torch-Pruning keeps int(64 * 0.7)."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    ctx = _ctx(tmp_path)
    pruned = _prune(model, ctx, mode="channels", amount=0.3)
    assert pruned[0].out_channels == 44 and pruned[2].in_channels == 44
    assert ctx.details["channels"]["0"] == [64, 44]
    assert "floor(n * (1 - amount))" in ctx.details["rounding"]


def test_a_model_that_fails_on_the_example_input_is_refused_with_its_error(tmp_path):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).view(7, -1)

    with pytest.raises(StageError, match=r"prune_l1 mode: channels: the model does not run on the example input: RuntimeError: shape '\[7, -1\]'"):
        _prune(Broken(), _ctx(tmp_path), mode="channels", amount=0.5)
