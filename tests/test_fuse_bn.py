"""The fuse_bn pass: exact folding for every supported pair, safety rules, the untraceable fallback, the pass in a run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from optkit.config.pipeline import load_pipeline
from optkit.run.runner import run_pipeline
from optkit_plugins.fuse_bn import fuse_batchnorm

# Folding is done in float64 and rounded once to float32: the fused layer differs from the
# pair by float32 rounding of a few accumulations, far below these tolerances.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a fold that ignores one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)) and module.running_mean is not None:
                n = module.running_mean.numel()
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                if module.weight is not None:
                    module.weight.copy_(torch.randn(n, generator=generator))
                    module.bias.copy_(torch.randn(n, generator=generator))
    return model


def norm_count(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)) for m in model.modules())


def check_fused(model: nn.Module, x: torch.Tensor, pairs: int, **options) -> dict:
    """Fuse ``model`` and assert ``pairs`` fused, outputs kept; returns the details."""
    model = randomize_bn(model).eval()
    with torch.no_grad():
        expected = model(x)
    result = fuse_batchnorm(model, x, **options)
    with torch.no_grad():
        actual = result.model(x)
    torch.testing.assert_close(actual, expected, **TOL)
    assert len(result.fused) == pairs, result.details()
    return result.details()


LAYER_BN_PAIRS = {
    "conv1d": (nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6), (2, 4, 16)),
    "conv2d_groups_dilation_stride_nobias": (nn.Conv2d(4, 8, 3, stride=2, dilation=2, groups=2, bias=False), nn.BatchNorm2d(8), (2, 4, 17, 17)),
    "conv2d_depthwise_reflect": (nn.Conv2d(6, 6, 3, padding=1, groups=6, padding_mode="reflect"), nn.BatchNorm2d(6), (2, 6, 16, 16)),
    "conv2d_circular": (nn.Conv2d(3, 5, 3, padding=2, padding_mode="circular"), nn.BatchNorm2d(5), (2, 3, 16, 16)),
    "conv3d": (nn.Conv3d(3, 4, 3, groups=1), nn.BatchNorm3d(4), (2, 3, 8, 8, 8)),
    "convtranspose1d_groups": (nn.ConvTranspose1d(6, 9, 3, stride=2, groups=3), nn.BatchNorm1d(9), (2, 6, 8)),
    "convtranspose2d_groups_in_ne_out": (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False, output_padding=1), nn.BatchNorm2d(6), (2, 4, 8, 8)),
    "convtranspose2d": (nn.ConvTranspose2d(3, 7, 4, stride=2, padding=1), nn.BatchNorm2d(7), (2, 3, 8, 8)),
    "convtranspose3d_groups": (nn.ConvTranspose3d(4, 8, 3, groups=4, dilation=2), nn.BatchNorm3d(8), (2, 4, 5, 5, 5)),
    "linear": (nn.Linear(10, 12), nn.BatchNorm1d(12), (4, 10)),
    "linear_nobias_bn_no_affine": (nn.Linear(10, 12, bias=False), nn.BatchNorm1d(12, affine=False), (4, 10)),
    "conv2d_bn_no_affine": (nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), (2, 3, 12, 12)),
    "conv2d_frozen_bn": (nn.Conv2d(3, 8, 3, bias=False), FrozenBatchNorm2d(8), (2, 3, 12, 12)),
}


@pytest.mark.parametrize("case", sorted(LAYER_BN_PAIRS))
def test_every_supported_pair_folds_exactly(case):
    layer, bn, shape = LAYER_BN_PAIRS[case]
    torch.manual_seed(0)
    model = nn.Sequential(copy.deepcopy(layer), copy.deepcopy(bn), nn.ReLU())
    details = check_fused(model, torch.randn(shape), pairs=1)
    assert details["method"] == "fx"
    assert details["fused"][0]["layer"] == "0" and details["fused"][0]["bn"] == "1"


def test_fused_model_has_no_bn_and_keeps_its_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    fused = fuse_batchnorm(randomize_bn(model).eval(), torch.randn(1, 3, 16, 16)).model
    assert type(fused) is nn.Sequential and isinstance(fused[1], nn.Identity)
    assert fused[0].bias is not None and norm_count(fused) == 0
    assert norm_count(model) == 1  # not in place by default


class SharedOutput(nn.Module):
    """The conv's output feeds the BN and a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x * 2))


class RegisteredTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.alias = self.conv

    def forward(self, x):
        return self.bn(self.conv(x)) + self.alias(x)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (SharedOutput(), "also used by add()"),
        (CalledTwice(), "called 2 times in the traced graph"),
        (RegisteredTwice(), "registered under 2 names"),
        (nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), "no running statistics"),
    ],
    ids=["output-shared", "conv-called-twice", "conv-registered-twice", "bn-without-running-stats"],
)
def test_unsafe_pairs_are_skipped_with_their_reason(model, reason):
    details = check_fused(model, torch.randn(2, 4, 10, 10), pairs=0)
    assert details["skipped"] or details["unpaired_bn"], details
    reasons = [e["reason"] for e in details["skipped"]] + list(details["unpaired_bn"].values())
    assert any(reason in r for r in reasons), reasons


def test_linear_whose_bn_normalizes_another_axis_is_skipped():
    # BatchNorm1d(5) on a (N, 5, 5) Linear output normalizes dim 1 (positions), not the Linear's features.
    model = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))
    details = check_fused(model, torch.randn(2, 5, 5), pairs=0)
    assert "BatchNorm normalizes dim 1" in details["skipped"][0]["reason"]


def test_layer_with_forward_hook_is_not_fused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.abs().sum()))
    details = check_fused(model, torch.randn(1, 3, 8, 8), pairs=0)
    assert "forward hooks" in details["skipped"][0]["reason"]


def test_training_model_is_not_changed_and_result_is_eval():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fuse_batchnorm(model, torch.randn(2, 3, 8, 8), inplace=True)
    assert model.training and isinstance(model[1], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model and not result.model.training and len(result.fused) == 1


def test_running_twice_changes_nothing():
    import torchvision

    x = torch.randn(1, 3, 64, 64)
    once = fuse_batchnorm(randomize_bn(torchvision.models.resnet18()).eval(), x).model
    twice = fuse_batchnorm(once, x)
    assert twice.fused == [] and twice.skipped == []
    state, state2 = once.state_dict(), twice.model.state_dict()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)


class DataDependent(nn.Module):
    """Untraceable: the branch depends on values. Pairs in and around it are still provable."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.other = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))  # the branch not taken

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > -1e9:
            return self.bn(self.conv(x))
        return self.other(x)


class PeeksBetween(nn.Module):
    """Untraceable, and the conv's output is read (by a value-dependent check) before the BN."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        scale = 2.0 if y.mean() > 0 else 1.0
        return self.bn(y) * scale


class ListStages(nn.Module):
    """Stages pass lists of tensors; each stage checks the list length at run time."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in range(3))
        self.bns = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(3))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != len(self.convs) or not all(t.numel() for t in xs):
            raise ValueError("one tensor per stage")
        return [bn(conv(t)) for conv, bn, t in zip(self.convs, self.bns, xs)]


class ListModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = ListStages()

    def forward(self, x):
        return torch.cat(self.stages([x, x * 2, x.flip(-1)]), 1)


class Wrapper(nn.Module):
    """Like DataParallel: forwards any arguments to the wrapped model."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        if kwargs.pop("debug", False):
            print(args)
        return self.module(*args, **kwargs)


def test_data_dependent_model_uses_the_fallback_and_fuses_every_pair():
    details = check_fused(DataDependent(), torch.randn(1, 3, 16, 16), pairs=3)
    assert details["method"] == "fallback" and "" in details["untraceable"]
    evidence = {e["bn"]: e["evidence"] for e in details["fused"]}
    assert evidence == {
        "stem.1": "fx graph of stem",
        "other.1": "fx graph of other",  # never run here, proven by its own graph
        "bn": "dataflow probe on the example input",
    }


def test_probe_off_keeps_to_graph_proven_pairs():
    details = check_fused(DataDependent(), torch.randn(1, 3, 16, 16), pairs=2, probe=False)
    assert details["skipped"] == [{"layer": "conv", "bn": "bn", "reason": "only the dataflow probe sees this pair, and probe is off"}]


def test_fallback_skips_a_pair_whose_output_is_read_in_between():
    details = check_fused(PeeksBetween(), torch.randn(1, 3, 8, 8), pairs=0)
    assert details["method"] == "fallback"
    assert "also read by mean" in details["skipped"][0]["reason"]


def test_lists_of_tensors_between_stages():
    details = check_fused(ListModel(), torch.randn(1, 3, 8, 8), pairs=3)
    assert details["method"] == "fallback"


def test_wrapped_model_is_fused():
    import torchvision

    torch.manual_seed(0)  # a random model and input: seeded, so the float32 rounding is the same every run
    details = check_fused(Wrapper(torchvision.models.resnet18(num_classes=10)), torch.randn(1, 3, 64, 64), pairs=20)
    assert {e["bn"] for e in details["fused"]} >= {"module.bn1", "module.layer4.1.bn2"}


def test_pass_in_a_pipeline_reports_pairs_and_keeps_outputs(write_pipeline, host, tmp_path):
    path = write_pipeline(
        f"""
        model:
          source: torchvision:resnet18
          weights: none
          input_shape: [1, 3, 64, 64]
        measure: {{warmup: 1, iters: 2, flops: false}}
        passes:
          - fuse_bn
        output: {tmp_path / "run"}
        """
    )
    report, run_dir = run_pipeline(load_pipeline(path, host.get_pass), host, device="cpu")
    saved = json.loads((run_dir / "report.json").read_text())
    stage = saved["stages"][1]
    assert saved["status"] == "ok", saved.get("error")
    assert stage["details"]["pairs_fused"] == 20 and stage["details"]["method"] == "fx"
    assert stage["metrics"]["drift"]["max_abs"] <= 1e-4 + 1e-4 * stage["metrics"]["drift"]["reference_max_abs"]
    assert stage["metrics"]["params"] < saved["stages"][0]["metrics"]["params"]


def test_unknown_option_is_a_pipeline_error(write_pipeline, host):
    from optkit.errors import PipelineError

    path = write_pipeline(
        """
        model: {source: "torchvision:resnet18", weights: none, input_shape: [1, 3, 64, 64]}
        passes:
          - fuse_bn: {fuse_relu: true}
        """
    )
    with pytest.raises(PipelineError, match="fuse_relu"):
        load_pipeline(path, host.get_pass)


class StandardizedConv(nn.Conv2d):
    """Weight standardization: scaling the weight is undone each forward, so a fold would be lost."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_layer_subclass_with_its_own_forward_is_not_fused():
    details = check_fused(nn.Sequential(StandardizedConv(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(1, 3, 8, 8), pairs=0)
    assert details["skipped"][0]["reason"] == "StandardizedConv overrides forward(), so its arithmetic is unknown (no module rule with fold_bn describes it)"


def test_graph_module_output_is_flat_and_exact():
    import torchvision
    from torch import fx

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    details = check_fused(model, torch.randn(1, 3, 64, 64), pairs=34, graph_module=True)
    assert details["notes"] == []
    flat = fuse_batchnorm(model.eval(), torch.randn(1, 3, 64, 64), graph_module=True).model
    assert isinstance(flat, fx.GraphModule)
    assert not any(n.op == "call_module" and isinstance(flat.get_submodule(n.target), nn.Identity) for n in flat.graph.nodes)


def test_graph_module_needs_a_traceable_model():
    details = check_fused(DataDependent(), torch.randn(1, 3, 16, 16), pairs=3, graph_module=True)
    assert details["notes"] == ["graph_module: the model does not trace as a whole, so it keeps its modules"]


# -- modules a rule says fuse themselves (Ultralytics' Conv, RepConv, ...; tested on a stand-in here,
#    on Ultralytics' own modules in test_ultralytics_rules.py) ---------------------------------------
class ConvBNAct(nn.Module):
    """Ultralytics' convention: conv, bn, act, and a fused form ``forward_fuse`` without bn."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


def fold_and_switch(module: nn.Module) -> None:
    from optkit.models.bn_folding import fold_bn_into_layer

    fold_bn_into_layer(module.conv, module.bn)
    del module.bn
    module.forward = module.forward_fuse


def forget_the_bn(module: nn.Module) -> None:  # a wrong claim: drops the BatchNorm without folding it
    del module.bn
    module.forward = module.forward_fuse


def conv_bn_rule(fuse) -> dict:
    from optkit.models.rules import ModuleRule, class_path

    rule = ModuleRule(class_path(ConvBNAct), computes="act(bn(conv(x)))", check=lambda m: None if hasattr(m, "bn") else "no bn", fuse=fuse)
    return {rule.class_path: rule}


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.unused = ConvBNAct(3, 8), ConvBNAct(8, 8), ConvBNAct(8, 8)

    def forward(self, x):
        return self.b(self.a(x)) + self.b(x.new_zeros(x.shape[0], 8, *x.shape[2:]))  # b runs twice


class Aliased(nn.Module):
    """One block registered under two names, called once."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBNAct(3, 8)
        self.alias = self.block

    def forward(self, x):
        return self.block(x)


def test_a_module_with_a_fuse_rule_is_fused_whole_and_proven_on_every_call():
    model = randomize_bn(TwoBlocks()).eval()
    x = torch.randn(2, 3, 8, 8)
    result = fuse_batchnorm(model, x, rules=conv_bn_rule(fold_and_switch))
    assert [(e["layer"], e["bn"], e["kind"]) for e in result.fused] == [("a", "a.bn", "ConvBNAct"), ("b", "b.bn", "ConvBNAct")]
    assert result.batchnorms_folded == 2
    assert result.skipped == [
        {"layer": "unused", "bn": "", "reason": "ConvBNAct did not run on the example input, so its fused form cannot be checked"},
        # the pair inside is never fused on its own: that would leave a module its library does not know
        {"layer": "unused.conv", "bn": "unused.bn", "reason": "inside `unused` (ConvBNAct), which its module rule fuses as a whole"},
    ]
    fused = result.model
    assert not hasattr(fused.a, "bn") and fused.a.forward == fused.a.forward_fuse
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **TOL)
    again = fuse_batchnorm(fused, x, rules=conv_bn_rule(fold_and_switch))
    assert again.fused == [] and {e["reason"] for e in again.skipped if e["layer"] in ("a", "b")} == {"ConvBNAct: no bn"}


def test_a_fuse_rule_that_does_not_hold_is_refused_with_the_measured_difference():
    model = randomize_bn(nn.Sequential(ConvBNAct(3, 8))).eval()
    result = fuse_batchnorm(model, torch.randn(1, 3, 8, 8), rules=conv_bn_rule(forget_the_bn))
    assert result.fused == [] and hasattr(result.model[0], "bn")
    assert result.skipped[0]["reason"].startswith("the fused form of ConvBNAct (module rule test_fuse_bn.ConvBNAct) differs from it by ")


def test_a_shared_or_hooked_module_with_a_fuse_rule_is_left_alone():
    model = randomize_bn(Aliased()).eval()
    result = fuse_batchnorm(model, torch.randn(1, 3, 8, 8), rules=conv_bn_rule(fold_and_switch))
    assert result.fused == [] and "registered under 2 names" in result.skipped[0]["reason"]
    assert result.skipped[1]["reason"] == "inside `block` (ConvBNAct), which its module rule fuses as a whole"
    hooked = randomize_bn(nn.Sequential(ConvBNAct(3, 8))).eval()
    hooked[0].act.register_forward_hook(lambda *args: None)
    result = fuse_batchnorm(hooked, torch.randn(1, 3, 8, 8), rules=conv_bn_rule(fold_and_switch))
    assert "forward hooks" in result.skipped[0]["reason"]
