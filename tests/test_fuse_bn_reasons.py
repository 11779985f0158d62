"""Every reason fuse_bn gives for leaving a BatchNorm alone, one test each, on a model where the
reason is true: each test checks the fact the reason states, not only its wording.

fuse_bn lists ``skipped`` pairs (layer, bn, reason) and ``unpaired_bn`` (bn -> reason); a module
with a ``fuse`` rule left alone is a ``skipped`` entry with an empty ``bn``.
"""

from __future__ import annotations

import pytest
import torch
from optkit_plugins.fuse_bn import fuse_batchnorm
from optkit_plugins.fuse_bn.folding import fold_problem
from torch import nn
from torch.nn.utils import parametrize

from optkit.errors import PluginBugError
from optkit.models.bn_folding import fold_bn_into_layer
from optkit.models.rules import ModuleRule, class_path

TOL = {"rtol": 1e-5, "atol": 1e-5}


def randomized(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def skipped(result, bn: str) -> str:
    [reason] = [e["reason"] for e in result.skipped if e["bn"] == bn]
    return reason


def untraceable(x: torch.Tensor) -> bool:
    return bool(x.sum() > float("-inf"))  # data-dependent: torch.fx cannot trace past it


class ConvBN(nn.Module):
    def __init__(self, conv: nn.Module | None = None, bn: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv if conv is not None else nn.Conv2d(3, 8, 3, padding=1)
        self.bn = bn if bn is not None else nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))


X = torch.randn(2, 3, 8, 8)


# --- fold_problem: the two modules alone -----------------------------------------------------------


class StandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class DoubledBN(nn.BatchNorm2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_a_layer_that_overrides_forward():
    result = fuse_batchnorm(randomized(ConvBN(StandardizedConv(3, 8, 3))), X)
    assert StandardizedConv.forward is not nn.Conv2d.forward
    assert skipped(result, "bn") == "StandardizedConv overrides forward(), so its arithmetic is unknown (no module rule with fold_bn describes it)"


def test_a_batchnorm_that_overrides_forward():
    result = fuse_batchnorm(randomized(ConvBN(bn=DoubledBN(8))), X)
    assert skipped(result, "bn") == "DoubledBN overrides forward(), so its arithmetic is unknown (no module rule describes it)"


def test_a_layer_with_hooks():
    model = randomized(ConvBN())
    model.conv.register_forward_hook(lambda m, i, o: None)
    result = fuse_batchnorm(model, X)
    assert model.conv._forward_hooks
    assert skipped(result, "bn") == "Conv2d has forward hooks, which would observe the change"


class Unchanged(nn.Module):
    def forward(self, w):
        return w


def test_a_parametrized_layer():
    model = randomized(ConvBN())
    parametrize.register_parametrization(model.conv, "weight", Unchanged())
    result = fuse_batchnorm(model, X)
    assert skipped(result, "bn") == "ParametrizedConv2d has parametrized tensors"


def test_a_batchnorm_in_training_mode():
    model = randomized(ConvBN())
    model.bn.train()  # the model itself is in eval mode, so fuse_bn works on it in place (as the pass does)
    result = fuse_batchnorm(model, X, inplace=True)
    assert result.model.bn.training and skipped(result, "bn") == "BatchNorm is in training mode (it normalizes with batch statistics)"


def test_a_batchnorm_without_running_statistics():
    result = fuse_batchnorm(randomized(ConvBN(bn=nn.BatchNorm2d(8, track_running_stats=False))), X)
    assert skipped(result, "bn") == "BatchNorm has no running statistics (track_running_stats=False): it normalizes with batch statistics"


class TokensLinearBN(nn.Module):
    """Linear over the last dim of [batch, tokens, features], BatchNorm1d over the tokens (dim 1)."""

    def __init__(self, tokens: int = 5, features: int = 8) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(4, features), nn.BatchNorm1d(tokens)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_a_batchnorm_of_another_width_than_the_layer():
    result = fuse_batchnorm(randomized(TokensLinearBN()), torch.randn(2, 5, 4))
    assert skipped(result, "bn") == "BatchNorm has 5 features but Linear has 8 outputs"


def test_a_batchnorm_over_another_axis_of_the_same_width():
    result = fuse_batchnorm(randomized(TokensLinearBN(tokens=8)), torch.randn(2, 8, 4))
    reason = skipped(result, "bn")
    assert reason == "the layer's output has 3 dims, not 2: BatchNorm normalizes dim 1, which is not its channel axis"


def test_modules_that_are_neither_layer_nor_batchnorm_by_fold_problem_alone():
    # fuse_bn never pairs these (graphs and probe pair only layers and BatchNorms); fold_problem says why.
    assert fold_problem(nn.ReLU(), nn.BatchNorm2d(8)) == (
        "ReLU is not a Conv, ConvTranspose or Linear layer, and no module rule with fold_bn describes it"
    )
    assert fold_problem(nn.Conv2d(3, 8, 1), nn.LayerNorm(8)) == "LayerNorm is not a BatchNorm"


class AuxHead(nn.Module):
    """A head used only in training: its pair is in a graph but does not run on the example input."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Sequential(layer, nn.BatchNorm1d(8))

    def forward(self, x):
        return self.body(x)


def test_a_lazy_layer_not_yet_initialized():
    result = fuse_batchnorm(randomized(AuxHead(nn.LazyLinear(8))), X)
    assert result.model.aux[0].has_uninitialized_params()
    assert skipped(result, "aux.1") == "LazyLinear is lazy and not yet initialized"


def test_a_pair_that_did_not_run_cannot_have_its_shape_checked():
    result = fuse_batchnorm(randomized(AuxHead(nn.Linear(4, 8))), X)
    assert skipped(result, "aux.1") == "not run on the example input, so its output shape (channels in dim 1?) cannot be checked"


# --- pair_problem: how the pair is used --------------------------------------------------------------


class Aliased(ConvBN):
    def __init__(self) -> None:
        super().__init__()
        self.same_conv = self.conv


def test_a_layer_registered_twice():
    result = fuse_batchnorm(randomized(Aliased()), X)
    assert result.model.same_conv is result.model.conv
    assert skipped(result, "bn") == "conv is registered under 2 names (a module used twice)"


class CalledTwice(nn.Module):
    def __init__(self, traceable: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.traceable = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), traceable

    def forward(self, x):
        if not self.traceable:
            untraceable(x)
        return self.bn(self.conv(self.conv(x)))


def test_a_layer_called_twice_in_the_graph():
    result = fuse_batchnorm(randomized(CalledTwice(traceable=True)), torch.randn(2, 8, 8, 8))
    assert skipped(result, "bn") == "conv is called 2 times in the traced graph"


def test_a_layer_called_twice_where_no_graph_reaches():
    result = fuse_batchnorm(randomized(CalledTwice(traceable=False)), torch.randn(2, 8, 8, 8))
    assert result.method == "fallback"
    assert skipped(result, "bn") == "conv was called 2 times on the example input"


class BypassesItsBlock(nn.Module):
    """The block traces (conv -> bn), but the model calls the block's conv alone, never its bn,
    or feeds its bn something else."""

    def __init__(self, feed_bn: bool) -> None:
        super().__init__()
        self.block, self.feed_bn = ConvBN(), feed_bn

    def forward(self, x):
        untraceable(x)
        y = self.block.conv(x)
        return self.block.bn(y + 1) if self.feed_bn else y


def test_a_graph_pair_called_apart_on_the_example_input():
    result = fuse_batchnorm(randomized(BypassesItsBlock(feed_bn=False)), X)
    reason = skipped(result, "block.bn")
    assert reason == "block.conv and block.bn were not called together on the example input (a call outside the traced graph)"


def test_a_graph_pair_whose_batchnorm_reads_something_else_on_the_example_input():
    result = fuse_batchnorm(randomized(BypassesItsBlock(feed_bn=True)), X)
    assert skipped(result, "block.bn") == "on the example input block.bn's input was not block.conv's output"


class ReadsTheLayerOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        untraceable(x)
        return self.bn(y) + y.mean()


def test_a_layer_output_read_by_something_else():
    model = randomized(ReadsTheLayerOutput())
    result = fuse_batchnorm(model, X)
    assert skipped(result, "bn") == "conv's output is also read by mean on the example input"
    torch.testing.assert_close(result.model(X), model(X), **TOL)  # folding would have changed y.mean()


class TwoBatchNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        untraceable(x)
        return self.bn1(y) + self.bn2(y)


def test_a_layer_output_feeding_two_batchnorms():
    result = fuse_batchnorm(randomized(TwoBatchNorms()), X)
    assert skipped(result, "bn1") == skipped(result, "bn2") == "conv's output feeds several BatchNorms: bn1, bn2"


def test_a_pair_only_the_probe_sees_with_probe_off():
    result = fuse_batchnorm(randomized(ReadsTheLayerOutput()), X, probe=False)
    assert result.method == "fallback"
    assert skipped(result, "bn") == "only the dataflow probe sees this pair, and probe is off"


# --- unpaired BatchNorms ---------------------------------------------------------------------------


class Unpaired(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.bn, self.spare, self.how = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.BatchNorm2d(8), how

    def forward(self, x):
        y = self.conv(x)
        if self.how == "untraced relu":
            untraceable(x)
            return self.bn(torch.relu(y))
        if self.how == "relu":
            return self.bn(torch.relu(y))
        if self.how == "keyword":
            return self.bn(input=y)
        return self.bn(y) + y  # "shared"


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("relu", "its input comes from relu(), not a Conv/Linear (nor a module whose rule has fold_bn)"),
        ("keyword", "called with other arguments than one tensor"),
        ("shared", "the output of conv is also used by add()"),
        ("untraced relu", "on the example input its input was not the direct output of a Conv/Linear"),
    ],
)
def test_a_batchnorm_no_layer_feeds_alone(how, reason):
    result = fuse_batchnorm(randomized(Unpaired(how)), X)
    assert result.unpaired["bn"] == reason


def test_a_batchnorm_that_never_runs_where_no_graph_reaches():
    result = fuse_batchnorm(randomized(Unpaired("untraced relu")), X)
    assert result.unpaired["spare"] == "no traced graph reaches it and it did not run on the example input"


# --- module rules -----------------------------------------------------------------------------------


class ScaledConv(nn.Conv2d):
    """A Conv2d times a learned scalar (the plugin author's case in issue 29)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return super().forward(x) * self.scale


def fold_bn_into_scaled_conv(module: ScaledConv, bn: nn.Module) -> None:
    with torch.no_grad():
        module.weight.mul_(module.scale)
        module.scale.fill_(1.0)
    fold_bn_into_layer(module, bn)


def scaled_rule(**fields) -> dict[str, ModuleRule]:
    rule = ModuleRule(class_path(ScaledConv), computes="conv(x) * scale", **fields)
    return {rule.class_path: rule}


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1, self.act = ScaledConv(3, 8), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        return self.act(self.bn1(self.stem(x)))


def test_a_batchnorm_after_a_module_with_a_fold_bn_rule_is_folded():
    model = randomized(Stem())
    result = fuse_batchnorm(model, X, rules=scaled_rule(fold_bn=fold_bn_into_scaled_conv))
    assert result.batchnorms_folded == 1 and result.skipped == [] and result.unpaired == {}
    assert isinstance(result.model.bn1, nn.Identity) and result.fused[0]["rule"] == class_path(ScaledConv)
    torch.testing.assert_close(result.model(X), model(X), **TOL)


def fold_scale(module: ScaledConv) -> None:
    with torch.no_grad():
        module.weight.mul_(module.scale)
        module.scale.fill_(1.0)


def test_the_issue_29_reasons_are_true_with_only_a_fuse_rule():
    """Before: `bn1` "did not run" and, on a second fuse_bn, "inside `stem`"; both were false."""
    rules = scaled_rule(check=lambda m: None if float(m.scale) != 1.0 else "its scale is folded already", fuse=fold_scale)
    model = randomized(Stem())
    first = fuse_batchnorm(model, X, rules=rules)
    assert [e["layer"] for e in first.fused] == ["stem"] and "bn1" not in first.unpaired
    unknown = "ScaledConv overrides forward(), so its arithmetic is unknown (no module rule with fold_bn describes it)"
    assert skipped(first, "bn1") == unknown
    second = fuse_batchnorm(first.model, X, rules=rules)
    assert skipped(second, "bn1") == unknown
    assert {"layer": "stem", "bn": "", "reason": "ScaledConv: its scale is folded already"} in second.skipped


def test_a_module_with_fuse_and_fold_bn_rules_fuses_then_takes_the_batchnorm_after_it():
    model = randomized(Stem())
    result = fuse_batchnorm(model, X, rules=scaled_rule(fuse=fold_scale, fold_bn=fold_bn_into_scaled_conv))
    assert [(e["layer"], e["bn"]) for e in result.fused] == [("stem", ""), ("stem", "bn1")]
    torch.testing.assert_close(result.model(X), model(X), **TOL)


def test_a_fold_bn_rule_that_does_not_hold_is_refused_with_the_measured_difference():
    model = randomized(Stem())
    result = fuse_batchnorm(model, X, rules=scaled_rule(fold_bn=lambda m, bn: fold_bn_into_layer(m, bn)))  # forgets the scale
    assert skipped(result, "bn1").startswith(f"module rule {class_path(ScaledConv)}: fold_bn differs from bn1(stem(x)) by ")
    assert isinstance(result.model.bn1, nn.BatchNorm2d)
    torch.testing.assert_close(result.model(X), model(X), **TOL)


def test_a_fold_bn_rule_whose_check_refuses_the_instance():
    result = fuse_batchnorm(randomized(Stem()), X, rules=scaled_rule(check=lambda m: "a frozen scale", fold_bn=fold_bn_into_scaled_conv))
    assert skipped(result, "bn1") == f"ScaledConv: module rule {class_path(ScaledConv)} does not apply: a frozen scale"


def test_a_fold_bn_layer_that_did_not_run():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.aux = nn.Conv2d(3, 8, 1), nn.Sequential(ScaledConv(3, 8), nn.BatchNorm2d(8))

        def forward(self, x):
            return self.body(x)

    result = fuse_batchnorm(randomized(Unused()), X, rules=scaled_rule(fold_bn=fold_bn_into_scaled_conv))
    assert skipped(result, "aux.1") == "the layer did not run on the example input, so its module rule's fold_bn cannot be checked"


def test_a_fold_bn_rule_that_raises_is_a_plugin_bug_naming_the_rule():
    def broken(module, bn):
        raise KeyError("weight_orig")

    with pytest.raises(PluginBugError, match=rf"^module rule {class_path(ScaledConv)}: fold_bn of the rules passed in raised KeyError"):
        fuse_batchnorm(randomized(Stem()), X, rules=scaled_rule(fold_bn=broken))


class ReluBN(nn.BatchNorm2d):
    def forward(self, x):
        return torch.relu(super().forward(x))


def relu_bn_rule(reference, **fields) -> dict[str, ModuleRule]:
    rule = ModuleRule(class_path(ReluBN), computes="relu(bn(x))", bn_reference=reference, bn_remainder=lambda m: nn.ReLU(), **fields)
    return {rule.class_path: rule}


def plain_bn(module, x):
    return nn.functional.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps)


def test_a_batchnorm_rule_that_does_not_hold():
    result = fuse_batchnorm(randomized(ConvBN(bn=ReluBN(8))), X, rules=relu_bn_rule(plain_bn))  # forgets the relu
    assert skipped(result, "bn").startswith(f"module rule {class_path(ReluBN)} does not match ReluBN's output on the example input (error ")


def test_a_batchnorm_rule_whose_check_refuses_the_instance():
    result = fuse_batchnorm(randomized(ConvBN(bn=ReluBN(8))), X, rules=relu_bn_rule(plain_bn, check=lambda m: "not this one"))
    assert skipped(result, "bn") == f"ReluBN: module rule {class_path(ReluBN)} does not apply: not this one"


def test_a_batchnorm_rule_module_that_did_not_run():
    model = randomized(AuxHead(nn.Conv2d(3, 8, 1)))
    model.aux = nn.Sequential(nn.Conv2d(3, 8, 1), ReluBN(8)).eval()
    result = fuse_batchnorm(model, X, rules=relu_bn_rule(lambda m, x: torch.relu(plain_bn(m, x))))
    assert skipped(result, "aux.1") == f"aux.1 did not run on the example input, so module rule {class_path(ReluBN)} cannot be checked on it"


def test_a_fold_bn_layer_before_a_batchnorm_with_extras():
    rules = {**scaled_rule(fold_bn=fold_bn_into_scaled_conv), **relu_bn_rule(lambda m, x: torch.relu(plain_bn(m, x)))}
    result = fuse_batchnorm(randomized(ConvBN(ScaledConv(3, 8), ReluBN(8))), X, rules=rules)
    assert skipped(result, "bn") == (
        f"module rule {class_path(ScaledConv)} folds a BatchNorm, and ReluBN is a module rule's BatchNorm with extras"
    )


class ConvBNAct(nn.Module):
    """A library block fused whole by its rule (as Ultralytics' Conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def block_rule(**fields) -> dict[str, ModuleRule]:
    rule = ModuleRule(class_path(ConvBNAct), computes="relu(bn(conv(x)))", fuse=lambda m: None, **fields)
    return {rule.class_path: rule}


class LeaksItsConv(nn.Module):
    """The model reads the block's conv directly and normalizes it with its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.bn = ConvBNAct(), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.block.conv(x))


def test_a_layer_inside_a_block_a_fuse_rule_leaves_alone():
    # The block did not run on the example input, so its rule left it as it was.
    result = fuse_batchnorm(randomized(LeaksItsConv()), X, rules=block_rule())
    assert {"layer": "block", "bn": "", "reason": "ConvBNAct did not run on the example input, so its fused form cannot be checked"} in result.skipped
    assert skipped(result, "bn") == "the layer `block.conv` is inside `block` (ConvBNAct), which its module rule fuses as a whole"


def test_a_layer_inside_a_block_a_fuse_rule_fused():
    class UsesBoth(LeaksItsConv):
        def forward(self, x):
            return self.block(x) + self.bn(self.block.conv(x))

    result = fuse_batchnorm(randomized(UsesBoth()), X, rules=block_rule())
    assert [e["layer"] for e in result.fused] == ["block"]
    assert skipped(result, "bn") == "the layer `block.conv` is inside `block` (ConvBNAct), which its module rule fused as a whole"


def test_a_batchnorm_inside_a_block_whose_rule_fused_it_is_named_with_the_block():
    class KeepsTheBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = ConvBNAct()

        def forward(self, x):
            return self.block(x)

    # The rule "fuses" by changing nothing: the block's BatchNorm stays, and is said to be the block's.
    result = fuse_batchnorm(randomized(KeepsTheBN()), X, rules=block_rule())
    assert [e["layer"] for e in result.fused] == ["block"] and isinstance(result.model.block.bn, nn.BatchNorm2d)
    assert result.fused[0]["bn"] == "block.bn" and "block.bn" not in result.unpaired


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("hooks", "ConvBNAct: it has forward hooks, which would observe the change"),
        ("model", "ConvBNAct: it is the model itself"),
    ],
)
def test_a_block_with_a_fuse_rule_left_alone(setup, reason):
    if setup == "model":
        model = randomized(ConvBNAct())
    else:
        model = randomized(nn.Sequential(ConvBNAct()))
        model[0].register_forward_pre_hook(lambda m, args: None)
    result = fuse_batchnorm(model, X, rules=block_rule())
    assert {"layer": "" if setup == "model" else "0", "bn": "", "reason": reason} in result.skipped


class ScaledBlock(nn.Module):
    """The same arithmetic as a module holding a conv (not a Conv2d subclass)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 8, 3, padding=1), nn.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return self.conv(x) * self.scale


class BlockThenBN(nn.Module):
    def __init__(self, traceable: bool) -> None:
        super().__init__()
        self.block, self.bn, self.traceable = ScaledBlock(), nn.BatchNorm2d(8), traceable

    def forward(self, x):
        if not self.traceable:
            untraceable(x)
        return torch.relu(self.bn(self.block(x)))


def fold_bn_into_scaled_block(module: ScaledBlock, bn: nn.Module) -> None:
    with torch.no_grad():
        module.conv.weight.mul_(module.scale)
        module.conv.bias.mul_(module.scale)
        module.scale.fill_(1.0)
    fold_bn_into_layer(module.conv, bn)


@pytest.mark.parametrize("traceable", [True, False], ids=["fx graph", "dataflow probe"])
def test_a_composite_module_with_a_fold_bn_rule_takes_the_batchnorm_after_it(traceable):
    rule = ModuleRule(class_path(ScaledBlock), computes="conv(x) * scale", fold_bn=fold_bn_into_scaled_block)
    model = randomized(BlockThenBN(traceable))
    result = fuse_batchnorm(model, X, rules={rule.class_path: rule})
    assert [(e["layer"], e["bn"]) for e in result.fused] == [("block", "bn")] and result.method == ("fx" if traceable else "fallback")
    torch.testing.assert_close(result.model(X), model(X), **TOL)
