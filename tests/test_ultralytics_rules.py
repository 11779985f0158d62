"""The Ultralytics module rules, proven on Ultralytics' own modules and models (built from the yaml
files it ships: random weights, nothing downloaded). Run where Ultralytics is installed beside
optkit (.venv-ultralytics); optkit itself never imports it (AGPL-3.0)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from structural_checks import assert_sound, output_shapes
from torch import nn

from optkit import PassContext
from optkit.host.facade import Host
from optkit.models.rules import find_rule
from optkit_plugins.fuse_bn import FuseBatchNorm
from optkit_plugins.prune_l1 import PruneL1

pytestmark = pytest.mark.ultralytics

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rules():
    return Host().rule_table()


@torch.no_grad()
def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.copy_(torch.randn(n, generator=g))
            m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def ctx_for(tmp_path, rules, x=X) -> PassContext:
    return PassContext(torch.device("cpu"), x, tmp_path, logging.getLogger("test.ultralytics"), module_rules=rules)


def yolo(cfg: str) -> nn.Module:
    from yolo_factories import yolo as build

    torch.manual_seed(0)
    model = randomized(build(cfg))
    with torch.no_grad():
        model(X)  # Detect caches its anchors for this input size, as after any first call
    return model


def holder(module: nn.Module) -> nn.Module:
    """``module`` inside an Ultralytics ``BaseModel``, whose ``fuse()`` and ``is_fused()`` read it."""
    from ultralytics.nn.tasks import BaseModel

    class Holder(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(module)

    return Holder().eval()


def _modules():
    from ultralytics.nn.modules.block import RepVGGDW
    from ultralytics.nn.modules.conv import Conv, Conv2, ConvTranspose, DWConv, RepConv

    return {
        "Conv": (lambda: Conv(4, 8, 3), 4),
        "DWConv": (lambda: DWConv(8, 8, 5), 8),
        "Conv2": (lambda: Conv2(4, 8, 3), 4),
        "ConvTranspose": (lambda: ConvTranspose(4, 8), 4),
        "ConvTranspose without bn": (lambda: ConvTranspose(4, 8, bn=False), 4),
        "RepConv with identity bn": (lambda: RepConv(8, 8, bn=True), 8),
        "RepConv": (lambda: RepConv(4, 8, g=2), 4),
        "RepVGGDW": (lambda: RepVGGDW(8), 8),
    }


@pytest.mark.parametrize("kind", ["Conv", "DWConv", "Conv2", "ConvTranspose", "ConvTranspose without bn", "RepConv with identity bn", "RepConv", "RepVGGDW"])
def test_fuse_rules_equal_ultralytics_own_fuse(kind, rules):
    make, channels = _modules()[kind]
    module = randomized(make())
    x = torch.randn(2, channels, 8, 8)
    rule = find_rule(module, rules)
    assert rule is not None and rule.problem(module) is None

    ours = copy.deepcopy(module)
    rule.fuse(ours)
    theirs = holder(copy.deepcopy(module))
    theirs.fuse(verbose=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), module(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs.model[0](x), rtol=1e-5, atol=1e-5)
    assert sorted(ours.state_dict()) == sorted(theirs.model[0].state_dict())
    assert ours.forward == ours.forward_fuse and not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    assert holder(ours).is_fused()
    assert rule.problem(ours).endswith("(already fused)")


def test_fuse_bn_fuses_a_yolo_the_ultralytics_way_and_it_still_predicts(tmp_path, rules):
    from ultralytics import YOLO

    model = yolo("yolo11n.yaml")
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ctx = ctx_for(tmp_path, rules)
    fused = FuseBatchNorm().apply(copy.deepcopy(model), ctx)
    assert ctx.details["batchnorms_folded"] == batchnorms == 81 and ctx.details["pairs_skipped"] == 0
    assert {e["rule"] for e in ctx.details["fused"]} == {"ultralytics.nn.modules.conv.Conv"}
    with torch.no_grad():
        expected, actual = model(X)[0], fused(X)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert fused.is_fused()
    state = copy.deepcopy(fused.state_dict())
    fused.fuse(verbose=False)  # what YOLO.predict calls: nothing left to do
    assert all(torch.equal(state[k], v) for k, v in fused.state_dict().items()) and set(state) == set(fused.state_dict())
    wrapper = YOLO("yolo11n.yaml", task="detect")
    wrapper.model = fused
    results = wrapper.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
    assert len(results) == 1


@pytest.mark.parametrize(("cfg", "kinds"), [("yolov10n.yaml", {"Conv", "RepVGGDW"}), ("yolov9t.yaml", {"Conv", "RepConv"})])
def test_fuse_bn_fuses_reparameterised_blocks_whole(tmp_path, rules, cfg, kinds):
    model = yolo(cfg)
    ctx = ctx_for(tmp_path, rules)
    fused = FuseBatchNorm().apply(copy.deepcopy(model), ctx)
    assert {e["kind"] for e in ctx.details["fused"]} >= kinds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        expected, actual = model(X)[0], fused(X)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_channel_pruning_of_yolo_without_rewrites(tmp_path, rules, cfg):
    from torch.utils.flop_counter import FlopCounterMode
    from ultralytics.nn.modules.block import C2f

    model = yolo(cfg)
    ctx = ctx_for(tmp_path, rules)
    pruned = PruneL1(PruneL1.Options(mode="channels", amount=0.5)).apply(model, ctx)

    def macs(m: nn.Module) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            copy.deepcopy(m).eval()(X)
        return counter.get_total_flops() // 2

    assert macs(model) / macs(pruned) >= 1.6
    detect, original = pruned.model[-1], model.model[-1]
    for branch in ("cv2", "cv3"):
        for new, old in zip(getattr(detect, branch), getattr(original, branch)):
            widths = lambda seq: [m.out_channels for m in seq.modules() if isinstance(m, nn.Conv2d)]  # noqa: E731
            assert widths(new) == widths(old)  # the head keeps its widths (decoded by position)
    for block in (m for m in pruned.modules() if isinstance(m, C2f)):
        assert block.c == block.cv1.conv.out_channels // 2
        x = torch.randn(1, block.cv1.conv.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block.forward_split(x), block(x))  # Ultralytics' export path reads c
    assert output_shapes(pruned, X) == output_shapes(model, X)
    assert_sound(model, pruned, X)
    if cfg == "yolo11n.yaml":  # C2PSA's attention reads C from x.shape: the replay leaves it alone, named
        assert any("model.10.m.0.attn" in b for b in ctx.details["backoffs"])
    else:  # the eval output echoes Detect's inputs ([1]['feats'], in train mode ['feats']): freed, they shrink too
        free_ctx = ctx_for(tmp_path, rules)
        freed = PruneL1(PruneL1.Options(mode="channels", amount=0.5, free_outputs=["['feats']"])).apply(model, free_ctx)
        assert macs(model) / macs(freed) > macs(model) / macs(pruned)
        with torch.no_grad():
            assert freed(X)[0].shape == model(X)[0].shape  # the predictions keep their shape
        assert [list(t.shape)[1] for t in freed(X)[1]["feats"]] != [list(t.shape)[1] for t in model(X)[1]["feats"]]


def test_c2psa_hidden_width_follows_its_pruned_split(rules):
    """C2PSA splits cv1's output by its attribute c. Its attention reads widths from shapes, which
    no analysis can prune (the replay leaves it alone); with the attention taken out, the split is
    what is left, and its rule keeps c right: the block is pruned, not backed off."""
    from ultralytics.nn.modules.block import C2PSA
    from ultralytics.nn.modules.conv import Conv

    from optkit.models.rules import ModuleRules
    from optkit_plugins.prune_l1 import prune_channels

    torch.manual_seed(0)
    block = C2PSA(32, 32, n=1)
    block.m = nn.Sequential()  # no attention: b passes through
    model = randomized(nn.Sequential(Conv(3, 32, 3, 2), block, nn.Conv2d(32, 4, 1)))
    x = torch.randn(1, 3, 32, 32)
    result = prune_channels(model, x, 0.5, rules=rules)
    pruned = result.model[1]
    assert result.backoffs == [] and (pruned.cv1.conv.out_channels, pruned.c) == (16, 8)
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    without = ModuleRules({path: rules[path] for path in rules if not path.endswith("C2PSA")})
    assert prune_channels(model, x, 0.5, rules=without).backoffs  # a stale c: the replay catches the split


def test_a_yolo_pipeline_prunes_then_fuses_the_pruned_modules(tmp_path, host):
    from optkit.config.pipeline import parse_pipeline
    from optkit.run.runner import run_pipeline

    text = (
        "model: {source: 'python:yolo_factories:yolo', kwargs: {cfg: yolov8n.yaml}, input_shape: [1, 3, 64, 64]}\n"
        "device: cpu\nmeasure: {warmup: 0, iters: 1}\n"
        "passes:\n  - prune_l1: {mode: channels, amount: 0.5}\n  - fuse_bn\n"
    )
    report, _ = run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")
    baseline, pruned, fused = report.stages
    assert report.status == "ok", [(s.name, s.error) for s in report.stages]
    assert baseline.metrics.macs / pruned.metrics.macs >= 1.6
    assert fused.details["batchnorms_folded"] == 57 and fused.details["pairs_skipped"] == 0  # pruned Convs fuse as Convs
    assert fused.metrics.macs == pruned.metrics.macs and fused.metrics.uncounted == {}


def test_concat_counts_zero_macs_by_its_rule(rules):
    from torch.utils.flop_counter import FlopCounterMode
    from ultralytics.nn.modules.conv import Concat

    from optkit.measure.flops import profile_macs

    class TwoWays(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.cat = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), Concat(1)

        def forward(self, x):
            return self.cat([self.a(x), self.b(x)])

    x = torch.randn(1, 3, 4, 4)
    with FlopCounterMode(display=False) as counter:
        Concat(1)([x, x])
    assert counter.get_total_flops() == 0
    assert profile_macs(TwoWays(), x).uncounted == {"ultralytics.nn.modules.conv.Concat": 1}
    assert profile_macs(TwoWays(), x, rules).uncounted == {}
