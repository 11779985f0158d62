"""Channel pruning on the executed graph, on small hand-made models (64x64): each coupling rule,
each refusal named, the replay and its back-offs, train-only branches, and the user's options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from structural_checks import assert_sound, leaves
from torch import nn

from optkit_plugins.prune_l1 import PruningRefused, prune_channels
from optkit_plugins.prune_l1.atoms import UnionFind
from optkit_plugins.prune_l1.plan import units_to_keep

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def prune(model: nn.Module, amount: float = 0.5, **options):
    return prune_channels(model, X, amount, rules={}, **options)


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int, n: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class C2f(nn.Module):
    """Ultralytics' C2f pattern: chunk(2) of one conv, a residual on the last part, cat of all parts."""

    def __init__(self) -> None:
        super().__init__()
        self.cv1, self.m, self.cv2 = cbr(16, 32, 1), cbr(16, 16), cbr(48, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.append(y[-1] + self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class BNAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: F.batch_norm in its own forward."""

    def forward(self, x):
        return F.silu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps))


class Block(nn.Module):  # ConvNeXt: depthwise conv, permute, LayerNorm, two Linear, layer scale
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class Flat(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], 16 * 4 * 4)  # a width written as a number


class Mix(nn.Module):  # B, C, H, W = x.shape, then a view by C of a tensor of another width
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(16, 32, 1), nn.Conv2d(16, 16, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        y = self.a(x).view(B, 2, C, H * W).sum(1)
        return x + self.b(y.view(B, C, H, W))


class Aux(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body, self.fc = cbr(3, 16, s=2), cbr(16, 32, s=2), Head(32)
        self.aux = Head(16)

    def forward(self, x):
        s = self.stem(x)
        out = self.fc(self.body(s))
        return (out, self.aux(s)) if self.training else out


def test_union_find_keeps_the_first_reason():
    uf = UnionFind()
    a, b, c = uf.new(3)
    uf.fix([a], "first")
    uf.fix([b], "second")
    uf.union(a, b)
    uf.union(b, c)
    assert uf.fixed_reason(c) == "first"


def test_amount_keeps_floor_of_the_rest_like_torch_pruning():
    assert units_to_keep(64, 0.3) == 44  # int(64 * 0.7): 20 removed
    assert units_to_keep(64, 0.5) == 32
    assert units_to_keep(10, 0.8) == 2  # 10 * (1 - 0.8) is 1.9999999999999996 in floats
    assert (units_to_keep(3, 0.5), units_to_keep(1, 0.9)) == (1, 1)


def test_chunk_and_cat_keep_the_halves_equal(tmp_path):
    model = nn.Sequential(cbr(3, 16, s=2), C2f(), Head(16)).eval()
    pruned = prune(model).model
    assert pruned[1].cv1[0].out_channels == 16 and pruned[1].m[0].in_channels == 8  # both halves halved together
    assert pruned[1].cv2[0].in_channels == 24
    assert_sound(model, pruned, X, onnx_dir=tmp_path)


def test_batchnorm_with_its_own_forward_and_layernorm_after_a_permute():
    model = nn.Sequential(nn.Conv2d(3, 32, 4, 4), BNAct(32), Block(32), Block(32), Head(32)).eval()
    pruned = prune(model).model
    assert pruned[0].out_channels == 16 and pruned[1].num_features == 16
    assert pruned[2].norm.normalized_shape == (16,) and pruned[2].gamma.shape == (16, 1, 1)
    assert pruned[2].dw.groups == 16 and pruned[2].fc1.out_features == 64
    assert_sound(model, pruned, X)


def test_squeeze_excitation_and_grouped_convolutions():
    model = nn.Sequential(cbr(3, 32, s=2), cbr(32, 32, groups=4), SE(32), cbr(32, 32, groups=32), Head(32)).eval()
    pruned = prune(model).model
    assert pruned[1][0].groups == 4 and pruned[1][0].out_channels == 16  # every group keeps half its width
    assert pruned[3][0].groups == pruned[3][0].out_channels == 16  # depthwise stays depthwise
    assert pruned[2].reduce.out_channels == 4 and pruned[2].expand.out_channels == 16
    assert_sound(model, pruned, X)


def test_an_unknown_op_leaves_its_channels_alone_and_is_named():
    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)  # positions along the channels matter

    model = nn.Sequential(cbr(3, 16), Cumulative(), cbr(16, 16), Head(16)).eval()
    result = prune(model)
    assert result.model[0][0].out_channels == 16
    assert {f["reason"] for f in result.left_alone if f["layers"] == ["0.0"]} == {"are reordered by aten.cumsum in `1`"}
    assert result.model[2][0].out_channels == 8  # what follows is still pruned


def test_a_hard_coded_width_is_caught_by_the_replay_and_left_alone():
    model = nn.Sequential(cbr(3, 8, s=4), cbr(8, 16, s=4), nn.AdaptiveAvgPool2d(4), Flat(), nn.Linear(256, 10)).eval()
    result = prune(model)
    assert len(result.backoffs) == 1 and "aten.view in `3`" in result.backoffs[0]
    assert result.model[1][0].out_channels == 16 and result.model[0][0].out_channels == 4
    assert_sound(model, result.model, X)


def test_a_width_read_from_a_shape_leaves_its_module_alone():
    model = nn.Sequential(cbr(3, 16, s=2), Mix(), Head(16)).eval()
    result = prune(model)
    assert result.backoffs and result.backoffs[-1].endswith("-> channels of module `1` left alone")
    assert result.model[0][0].out_channels == 16  # x keeps its width: C is read from its shape
    assert any("channels used inside `1`" in f["reason"] for f in result.left_alone)
    assert_sound(model, result.model, X)


def test_a_branch_that_runs_only_in_training_follows_the_pruned_layers():
    model = Aux().eval()
    result = prune(model)
    assert result.model.aux.fc.in_features == result.model.stem[0].out_channels == 8
    assert result.not_traced == []
    assert_sound(model, result.model, X)


def test_exclude_leaves_inputs_and_outputs_keep_outputs_only_outputs():
    model = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32), Head(32)).eval()
    excluded = prune(model, exclude=["1.0"]).model
    assert (excluded[1][0].in_channels, excluded[1][0].out_channels) == (16, 32)
    kept = prune(model, keep_outputs={"1.0": "kept"}).model
    assert (kept[1][0].in_channels, kept[1][0].out_channels) == (8, 32)


def test_outputs_keep_their_shape_unless_freed():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 16), cbr(16, 16)

        def forward(self, x):
            f = self.a(x)
            return {"out": self.b(f), "feats": [f]}

    model = Two().eval()
    strict = prune(model)
    assert strict.model.a[0].out_channels == strict.model.b[0].out_channels == 16
    assert {f["reason"] for f in strict.left_alone} == {"reach the model's output ['feats'][0]", "reach the model's output ['out']"}
    freed = prune(model, free_outputs=["['feats']"]).model
    assert freed.a[0].out_channels == 8 and freed.b[0].out_channels == 16


def test_a_model_that_changes_its_graph_between_calls_is_refused():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.calls = nn.Conv2d(3, 8, 3), 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x).relu() if self.calls % 2 else self.conv(x).sigmoid().relu()

    with pytest.raises(PruningRefused, match="does not execute the same graph twice .* channel pruning needs a repeatable forward"):
        prune(Flaky().eval())


def test_nested_outputs_and_values_that_are_not_tensors():
    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.h = cbr(3, 16, s=2), cbr(16, 16, s=2), nn.Conv2d(16, 5, 1)

        def forward(self, x):
            f = [self.a(x)]
            f.append(self.b(f[-1]))
            return {"pred": self.h(f[-1]), "n": len(f)}

    model = Det().eval()
    result = prune(model)
    assert leaves(result.model(X))[0].shape == (1, 5, 16, 16) and result.model.b[0].out_channels == 8


def test_round_to_keeps_multiples():
    model = nn.Sequential(cbr(3, 24), cbr(24, 24), Head(24)).eval()
    pruned = prune(model, 0.7, round_to=8).model
    assert pruned[0][0].out_channels == 8  # floor(24 * 0.3) = 7, rounded up to 8


def test_attention_no_rule_describes_keeps_its_channels_named_and_the_mlp_is_pruned():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    result = prune_channels(model, x, 0.5, rules={})
    layer = result.model.encoder.layers[0]
    assert layer.self_attention.embed_dim == 64 and layer.mlp[0].out_features == 64  # the stream kept, the MLP halved
    assert "are consumed by aten._native_multi_head_attention in `encoder.layers.encoder_layer_0.self_attention`, " \
           "which channel pruning does not know" in {f["reason"] for f in result.left_alone}
    with torch.no_grad():
        assert result.model(x).shape == (1, 5)
