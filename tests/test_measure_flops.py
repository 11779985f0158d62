"""MAC counts: exact figures for layers and attention, torchvision's published figures, uncounted modules."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from optkit.measure.flops import count_macs, profile_macs


def aten_macs(model: nn.Module, x: torch.Tensor) -> int:
    """An independent reference: torch's own aten-level counter (2 FLOPs per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_conv_and_linear_are_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    metrics = count_macs(model, torch.zeros(1, 3, 16, 16))
    conv = 8 * 16 * 16 * 3 * 9
    linear = 8 * 16 * 16 * 10
    assert metrics["macs"] == conv + linear  # BatchNorm and ReLU count zero (torchvision's convention)
    assert metrics["gmacs"] == pytest.approx((conv + linear) / 1e9, rel=1e-12)
    assert metrics["gflops"] == pytest.approx(2 * (conv + linear) / 1e9, rel=1e-12)
    assert "GFLOPs = 2 x GMACs" in metrics["unit"]


def test_macs_scale_with_the_batch():
    model = torchvision.models.resnet18()
    one = count_macs(model, torch.zeros(1, 3, 64, 64))["macs"]
    assert count_macs(model, torch.zeros(3, 3, 64, 64))["macs"] == 3 * one


def test_multihead_attention_counts_projections_and_attention():
    batch, tokens, dim, heads = 2, 10, 32, 4
    in_proj = batch * tokens * dim * 3 * dim
    scores_and_values = 2 * batch * heads * tokens * tokens * (dim // heads)
    out_proj = batch * tokens * dim * dim
    profile = profile_macs(Attention(dim, heads), torch.zeros(batch, tokens, dim))
    assert profile.macs == in_proj + scores_and_values + out_proj
    assert profile.functional_macs == profile.macs  # all of it is functional: thop alone sees none
    assert profile.uncounted == {}


def test_transposed_convolution_counts_input_positions():
    model = nn.ConvTranspose2d(4, 6, kernel_size=4, stride=2, padding=1, groups=2)
    x = torch.zeros(1, 4, 8, 8)
    expected = x.numel() * (6 // 2) * 16
    assert count_macs(model, x)["macs"] == expected == aten_macs(model, x)


@pytest.mark.parametrize(
    "name, size",
    [("resnet50", 224), ("mobilenet_v3_small", 224), ("vit_b_16", 224), ("swin_t", 224), ("swin_v2_t", 256), ("maxvit_t", 224)],
)
def test_torchvision_published_gmacs(name: str, size: int):
    """The published ``_ops`` (GMACs) within 2% — and thop alone is 35% low on the transformers."""
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    with torch.device("meta"):  # shapes only: counting costs no weight memory
        model = torchvision.models.get_model(name)
    profile = profile_macs(model, torch.zeros(1, 3, size, size))
    assert profile.probe == "meta"
    assert profile.macs / 1e9 == pytest.approx(meta["_ops"], rel=0.02)
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]


def test_meta_and_real_copies_agree_and_match_the_aten_reference():
    model = torchvision.models.mobilenet_v3_small()
    x = torch.randn(1, 3, 64, 64)
    assert profile_macs(model, x).macs == aten_macs(model.eval(), x)


class DataDependent(nn.Module):
    """Reads a value (``.item()``), which the meta device cannot: the count falls back to a real copy."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = 2 if float(x.abs().sum().item()) >= 0 else 1
        for _ in range(steps):
            x = self.fc(x)
        return x


def test_data_dependent_model_is_counted_on_a_real_copy():
    profile = profile_macs(DataDependent(), torch.ones(4, 16))
    assert profile.probe == "copy"
    assert profile.macs == 2 * 4 * 16 * 16  # the shared layer ran twice


class Scale(nn.Module):
    """A leaf with a parameter and no counting rule: its cost is unknown, so it must be listed."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class LayerNormSubclass(nn.LayerNorm):
    pass


def test_modules_without_rule_are_listed_not_silently_zero():
    model = nn.Sequential(nn.Linear(8, 8), Scale(), Scale(), LayerNormSubclass(8))
    metrics = count_macs(model, torch.zeros(2, 8))
    assert metrics["macs"] == 2 * 8 * 8
    assert metrics["uncounted"] == {f"{Scale.__module__}.Scale": 2}  # the LayerNorm subclass inherits its rule


def test_per_module_breakdown_adds_up():
    model = torchvision.models.swin_t()
    profile = profile_macs(model, torch.zeros(1, 3, 64, 64))
    assert sum(entry["macs"] for entry in profile.per_module.values()) == profile.macs
    # ShiftedWindowAttention calls F.linear with its qkv/proj weights and matmuls: all functional
    assert profile.per_module["features.1.0.attn"]["counted_by"] == "aten"
    assert "features.1.0.attn.qkv" not in profile.per_module
    assert profile.per_module["features.1.0.mlp.0"] == {"type": "Linear", "macs": (64 // 4) ** 2 * 96 * 384, "counted_by": "thop"}
    assert math.isclose(profile.macs, profile.module_macs + profile.functional_macs)


def test_mha_fastpath_flag_is_restored():
    before = torch.backends.mha.get_fastpath_enabled()
    count_macs(Attention(), torch.zeros(1, 4, 32))
    assert torch.backends.mha.get_fastpath_enabled() == before
