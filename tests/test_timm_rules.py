"""The timm module rules, each proven on timm's own modules: the norm-act rules compute what the
modules compute and fuse_bn folds them exactly; the attention rule prunes whole heads."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.attention import Attention
from timm.layers.norm_act import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct, convert_sync_batchnorm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from optkit.measure.flops import profile_macs
from optkit.models.rules import ModuleRule, ModuleRules, class_path, find_rule
from optkit_plugins.fuse_bn import fuse_batchnorm
from optkit_plugins.module_rules import TIMM_RULES
from optkit_plugins.prune_l1 import prune_channels

RULES = ModuleRules({rule.class_path: rule for rule in TIMM_RULES})
#: Folding in float64, cast back once: the fused pair differs by float32 rounding only.
FOLD_TOL = {"rtol": 1e-5, "atol": 1e-5}


@torch.no_grad()
def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            n = m.running_var.numel()
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.copy_(torch.randn(n, generator=g))
            m.bias.copy_(torch.randn(n, generator=g))
    return module.eval()


def sync_bn_act() -> nn.Module:
    """timm's way to a SyncBatchNormAct: converting a BatchNormAct2d (it gains drop and act)."""
    converted = convert_sync_batchnorm(nn.Sequential(BatchNormAct2d(16, act_layer=nn.GELU)))[0]
    assert type(converted) is SyncBatchNormAct
    return converted


NORM_ACTS = {
    "BatchNormAct2d+SiLU": (lambda: BatchNormAct2d(16, act_layer=nn.SiLU), nn.SiLU),
    "BatchNormAct2d+Dropout+ReLU": (lambda: BatchNormAct2d(16, act_layer=nn.ReLU, drop_layer=nn.Dropout), nn.Sequential),
    "BatchNormAct2d without act": (lambda: BatchNormAct2d(16, apply_act=False), nn.Identity),
    "SyncBatchNormAct": (sync_bn_act, nn.GELU),
    "FrozenBatchNormAct2d+Hardswish": (lambda: FrozenBatchNormAct2d(16, act_layer=nn.Hardswish), nn.Hardswish),
}


@pytest.mark.parametrize("kind", NORM_ACTS)
def test_norm_act_rules_compute_what_the_modules_compute_and_fold_exactly(kind):
    make, remainder = NORM_ACTS[kind]
    module = randomized(make())
    rule = find_rule(module, RULES)
    assert rule is not None and rule.class_path == class_path(module)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rule.bn_reference(module, x), module(x), rtol=1e-6, atol=1e-6)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), module).eval()
    inputs = torch.randn(2, 3, 8, 8)
    result = fuse_batchnorm(model, inputs, rules=RULES)
    assert [(e["layer"], e["bn"], e["rule"]) for e in result.fused] == [("0", "1", rule.class_path)]
    assert type(result.model[1]) is remainder and isinstance(result.model[0], nn.Conv2d) and result.model[0].bias is not None
    with torch.no_grad():
        torch.testing.assert_close(result.model(inputs), model(inputs), **FOLD_TOL)


def test_without_rules_a_norm_act_module_is_left_alone_and_says_why():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), randomized(BatchNormAct2d(16))).eval()
    result = fuse_batchnorm(model, torch.randn(1, 3, 8, 8))
    assert result.fused == [] and result.skipped[0]["reason"] == (
        "BatchNormAct2d overrides forward(), so its arithmetic is unknown (no module rule describes it)"
    )


def test_a_rule_that_does_not_hold_for_the_module_is_refused_with_the_measured_error():
    class Doubled(BatchNormAct2d):
        def forward(self, x):
            return 2 * super().forward(x)

    timm_rule = find_rule(BatchNormAct2d(4), RULES)
    wrong = ModuleRule(class_path(Doubled), computes=timm_rule.computes, bn_reference=timm_rule.bn_reference, bn_remainder=timm_rule.bn_remainder)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), randomized(Doubled(8))).eval()
    result = fuse_batchnorm(model, torch.randn(1, 3, 8, 8), rules={wrong.class_path: wrong})
    assert result.fused == []
    assert result.skipped[0]["reason"].startswith(f"module rule {wrong.class_path} does not match Doubled's output on the example input (error ")


def test_norm_act_modules_count_zero_macs_by_their_rule():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), BatchNormAct2d(8), FrozenBatchNormAct2d(8)).eval()
    profile = profile_macs(model, torch.randn(1, 3, 4, 4), RULES)
    assert profile.macs == 8 * 3 * 16 and profile.uncounted == {}


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5).eval()


def test_vit_attention_loses_whole_heads_and_keeps_working():
    model = tiny_vit()
    assert type(model.blocks[0].attn) is Attention
    x = torch.randn(1, 3, 32, 32)
    result = prune_channels(model, x, 0.5, rules=RULES)
    pruned = result.model
    for block in pruned.blocks:
        attn = block.attn
        assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (2, 12, 24)  # whole heads: head_dim stays
        assert (attn.qkv.out_features, attn.proj.in_features) == (72, 24)
        assert block.mlp.fc1.out_features == 48
    assert pruned.patch_embed.proj.out_channels == pruned.pos_embed.shape[-1] == pruned.cls_token.shape[-1] == 24
    assert set(result.rules_used.values()) == {"timm.layers.attention.Attention"}
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (1, 5)
    trained = copy.deepcopy(pruned).train()
    trained(torch.randn(2, 3, 32, 32)).sum().backward()


@torch.no_grad()
def test_the_heads_pruned_are_the_silent_ones_and_the_outputs_stay_exact():
    """Heads 1 and 3 of every block read nothing (zero q, k, v rows and proj columns): pruning half
    the heads, and nothing else, removes exactly them and leaves every output as it was."""
    model = tiny_vit()
    for block in model.blocks:
        qkv = block.attn.qkv.weight.view(3, 4, 12, 48)
        qkv[:, [1, 3]] = 0
        block.attn.qkv.bias.view(3, 4, 12)[:, [1, 3]] = 0
        block.attn.proj.weight.view(48, 4, 12)[:, [1, 3]] = 0
    keep = {pattern: "kept for the test" for pattern in ("patch_embed.proj", "*.mlp.*", "*.attn.proj", "head")}
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_channels(model, x, 0.5, rules=RULES, keep_outputs=keep).model
    assert [b.attn.num_heads for b in pruned.blocks] == [2, 2]
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)


def test_attention_with_a_gate_is_not_read_by_the_rule():
    gated = Attention(48, num_heads=4, gated=True)
    rule = find_rule(gated, RULES)
    assert rule.problem(gated) == "it has a gate projection"
    model = nn.Sequential(nn.Linear(8, 48), gated, nn.Linear(48, 4)).eval()
    result = prune_channels(model, torch.randn(1, 6, 8), 0.5, rules=RULES)
    assert result.rules_used == {} and result.model[1].num_heads == 4  # heads are not followed without the rule
    with torch.no_grad():
        assert result.model(torch.randn(1, 6, 8)).shape == (1, 6, 4)


def test_timm_activations_count_zero_macs_by_rule_instead_of_being_uncounted():
    from timm.layers.activations import GELU, Sigmoid
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(nn.Conv2d(3, 8, 1), GELU(), Sigmoid()).eval()
    x = torch.randn(1, 3, 4, 4)
    with FlopCounterMode(display=False) as counter:
        model[1:](torch.randn(1, 8, 4, 4))
    assert counter.get_total_flops() == 0  # the claim: they do no multiply-accumulates
    assert profile_macs(model, x).uncounted == {"timm.layers.activations.GELU": 1, "timm.layers.activations.Sigmoid": 1}
    ruled = profile_macs(model, x, RULES)
    assert (ruled.macs, ruled.uncounted) == (8 * 3 * 16, {})
