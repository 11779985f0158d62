"""Module rules: the data type, lookup by class path, the plugin hook, the registry, and the rules
reaching passes (``ctx.module_rules``) and MAC counting in a run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from optkit import Pass, PassContext, hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.errors import PluginError
from optkit.host.facade import Host
from optkit.measure.flops import profile_macs
from optkit.models.rules import AttentionHeads, ModuleRule, ModuleRules, class_path, find_rule
from optkit.run.runner import run_pipeline


class Gain(nn.Module):
    """A per-channel gain: elementwise work that no counter sees (what a custom kernel looks like)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class LoudGain(Gain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def gain_net() -> nn.Module:
    """``python:test_module_rules:gain_net``: conv, gain, pooled classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Gain(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def gain_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """One multiply per output element (thop's signature: adds to ``module.total_ops``)."""
    module.total_ops += torch.tensor([float(output.numel())], dtype=torch.float64)


GAIN_RULE = ModuleRule(class_path(Gain), computes="x * weight, per channel", subclasses=True, macs=gain_macs)


class GainRules:
    """An in-process plugin: a rule for Gain, and a pass that reports which modules have rules."""

    __name__ = "gain-rules"

    class RuleProbe(Pass):
        name = "rule_probe"
        summary = "Report the module rules the pass sees."
        preserves_outputs = True

        def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
            found = {name: find_rule(m, ctx.module_rules) for name, m in model.named_modules()}
            ctx.details["ruled"] = {name: rule.class_path for name, rule in found.items() if rule is not None}
            return model

    @hookimpl
    def optkit_register_module_rules(self, register):
        register(GAIN_RULE)

    @hookimpl
    def optkit_register_passes(self, register):
        register(self.RuleProbe)


# -- the data type -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_path": "Gain", "computes": "x"}, "dotted class path such as 'pkg.module.Class', got 'Gain'"),
        ({"class_path": "a.B", "computes": " "}, "computes must say what the module computes"),
        ({"class_path": "a.B", "computes": "x", "fuse": "fold it"}, "fuse must be callable, got 'fold it'"),
        ({"class_path": "a.B", "computes": "x", "bn_reference": lambda m, x: x}, "bn_reference and bn_remainder go together"),
        ({"class_path": "a.B", "computes": "x", "attention": "qkv"}, "attention must be an AttentionHeads"),
    ],
)
def test_a_malformed_rule_says_what_is_wrong(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        ModuleRule(**kwargs)


def test_attention_layout_names_its_three_axes():
    assert AttentionHeads(layout=("heads", "qkv", "dim")).layout == ("heads", "qkv", "dim")
    with pytest.raises(ValueError, match="must order 'qkv', 'heads' and 'dim'"):
        AttentionHeads(layout=("qkv", "heads", "heads"))


def test_attention_heads_name_one_fused_projection_or_three_and_an_optional_output_projection():
    assert AttentionHeads().projections == ("qkv",)
    apart = AttentionHeads(qkv=("query", "key", "value"), proj=None)
    assert apart.projections == ("query", "key", "value") and apart.proj is None
    with pytest.raises(ValueError, match="qkv must name one fused Linear or three"):
        AttentionHeads(qkv=("query", "key"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proj must name a Linear or be None"):
        AttentionHeads(proj="")


def test_rules_are_found_by_class_path_along_the_mro():
    rules = ModuleRules({GAIN_RULE.class_path: GAIN_RULE})
    assert class_path(Gain) == "test_module_rules.Gain"
    assert find_rule(Gain(2), rules) is GAIN_RULE
    assert find_rule(LoudGain(2), rules) is None  # a subclass with its own forward computes something else
    assert find_rule(type("SameGain", (Gain,), {})(2), rules) is GAIN_RULE
    exact = ModuleRule(GAIN_RULE.class_path, computes="x * weight")
    assert find_rule(type("SameGain", (Gain,), {})(2), {exact.class_path: exact}) is None  # subclasses=False
    head = ModuleRule(GAIN_RULE.class_path, computes="a head", subclasses=True, same_forward=False, head=True)
    assert find_rule(LoudGain(2), {head.class_path: head}) is head
    assert find_rule(nn.Conv2d(1, 1, 1), rules) is None and find_rule(Gain(2), {}) is None


def test_check_says_when_a_rule_does_not_hold_for_an_instance():
    rule = ModuleRule("a.B", computes="x", check=lambda m: "it is wide" if m.weight.shape[0] > 4 else None)
    assert rule.problem(Gain(4)) is None and rule.problem(Gain(8)) == "it is wide"


# -- the hook and the registry -------------------------------------------------------------------
def test_hook_optkit_register_module_rules(tmp_path):
    host = Host.with_plugins(GainRules())
    entry = host.module_rules.get(GAIN_RULE.class_path)
    assert (entry.obj, entry.plugin.name) == (GAIN_RULE, "gain-rules")
    assert host.rule_table()[GAIN_RULE.class_path] is GAIN_RULE

    text = "model: {source: 'python:test_module_rules:gain_net', input_shape: [1, 3, 8, 8]}\ndevice: cpu\n" \
           "measure: {warmup: 0, iters: 1}\npasses: [rule_probe]\n"
    report, _ = run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")

    baseline, probe = report.stages
    assert probe.status == "ok" and probe.details["ruled"] == {"1": GAIN_RULE.class_path}
    conv_and_linear = 4 * 3 * 9 * 64 + 4 * 2
    assert baseline.metrics.macs == conv_and_linear + 4 * 64  # the rule counted the gain
    assert baseline.metrics.uncounted == {}


def test_the_standard_rules_come_through_an_entry_point():
    host = Host()
    entry = host.module_rules.get("timm.layers.norm_act.BatchNormAct2d")
    assert (entry.plugin.name, entry.plugin.value, entry.plugin.distribution) == ("module_rules", "optkit_plugins.module_rules", "optkit")
    assert {"ultralytics.nn.modules.conv.Conv", "ultralytics.nn.modules.head.Detect", "timm.layers.attention.Attention"} <= set(host.rule_table())


def test_registering_something_that_is_not_a_rule_is_refused_by_name():
    class Wrong:
        __name__ = "wrong-rules"

        @hookimpl
        def optkit_register_module_rules(self, register):
            register("timm.layers.norm_act.BatchNormAct2d")

    host = Host.with_plugins(Wrong())
    [broken] = [b for b in host.broken if b.name == "wrong-rules"]
    assert broken.error.startswith("wrong-rules: register(rule) takes an optkit.ModuleRule, got 'timm.")


def test_two_plugins_describing_one_class_fail_only_where_it_is_used():
    class Other:
        __name__ = "other-gain-rules"

        @hookimpl
        def optkit_register_module_rules(self, register):
            register(ModuleRule(GAIN_RULE.class_path, computes="something else"))

    rules = Host.with_plugins(GainRules(), Other()).rule_table()
    assert find_rule(nn.Conv2d(1, 1, 1), rules) is None  # other modules are looked up as usual
    with pytest.raises(PluginError, match=r"the module rule 'test_module_rules.Gain' is registered by more than one plugin: "
                                          r"gain-rules \(plugin 'gain-rules'\) and other-gain-rules"):
        find_rule(Gain(2), rules)


# -- MAC counting --------------------------------------------------------------------------------
def test_macs_rules_count_what_no_counter_sees_on_a_copy_and_shared_modules_once():
    gain = Gain(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), gain, gain).eval()  # one module registered and called twice
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 5, 5)

    without = profile_macs(model, x)
    with_rules = profile_macs(model, x, {GAIN_RULE.class_path: GAIN_RULE})

    conv = 2 * 4 * 3 * 25
    assert without.macs == conv and without.uncounted == {"test_module_rules.Gain": 1}
    assert with_rules.macs == conv + 2 * (2 * 4 * 25)  # two calls of one module, counted by its rule
    assert with_rules.uncounted == {} and with_rules.per_module["1"]["counted_by"] == "module rule"
    assert not hasattr(gain, "total_ops") and not gain._forward_hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_macs_rule_that_does_not_hold_for_an_instance_is_not_used():
    rule = ModuleRule(GAIN_RULE.class_path, computes="x", macs=gain_macs, check=lambda m: "not this one")
    assert profile_macs(Gain(4), torch.randn(1, 4, 2, 2), {rule.class_path: rule}).uncounted == {"test_module_rules.Gain": 1}
