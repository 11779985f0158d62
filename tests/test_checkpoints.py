"""Weights into architectures: every checkpoint layout round-trips exactly; matching, leftovers, freezing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from optkit.config.pipeline import ModelSpec, WeightsSpec
from optkit.errors import CheckpointError, PipelineError
from optkit.models.freezing import apply_freeze
from optkit.models.weights import load_weights_into, weights_spec_of

INPUT = (2, 3, 64, 64)


def seeded(builder: Callable[..., nn.Module], seed: int, **kwargs: Any) -> nn.Module:
    """A model with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = builder(**kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(seed + 7)
    return model.eval()


def outputs(model: nn.Module, seed: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(*INPUT, generator=torch.Generator().manual_seed(seed)))


def load(model: nn.Module, path: Path, **options: Any) -> dict[str, Any]:
    return load_weights_into(model, WeightsSpec(path=str(path), **options), path.parent)


# Each layout writes ``original`` the way some training code saves it.
LAYOUTS: dict[str, Callable[[nn.Module, Path], dict[str, Any]]] = {
    "plain": lambda m, p: torch.save(m.state_dict(), p) or {},
    "model": lambda m, p: torch.save({"model": m.state_dict(), "epoch": 3, "best": 0.5}, p) or {"unwrapped": "model"},
    "ema-over-model": lambda m, p: torch.save(
        {"model": {k: torch.zeros_like(v) for k, v in m.state_dict().items()}, "ema": m.state_dict()}, p
    ) or {"unwrapped": "ema"},
    "state_dict": lambda m, p: torch.save({"state_dict": m.state_dict(), "epoch": 1}, p) or {"unwrapped": "state_dict"},
    "model_state_dict": lambda m, p: torch.save({"model_state_dict": m.state_dict(), "optimizer_state_dict": {}}, p)
    or {"unwrapped": "model_state_dict"},
    "dataparallel": lambda m, p: torch.save(nn.DataParallel(m).state_dict(), p) or {"prefixes_stripped": ["module."]},
    "compiled": lambda m, p: torch.save(torch.compile(m).state_dict(), p) or {"prefixes_stripped": ["_orig_mod."]},
    "compiled-ddp-wrapped": lambda m, p: torch.save({"model": nn.DataParallel(torch.compile(m)).state_dict()}, p)
    or {"unwrapped": "model", "prefixes_stripped": ["module.", "_orig_mod."]},
    "safetensors": lambda m, p: save_file(m.state_dict(), p) or {"format": "safetensors"},
    "legacy-format": lambda m, p: torch.save(m.state_dict(), p, _use_new_zipfile_serialization=False) or {},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_round_trips_resnet18_exactly(tmp_path: Path, layout: str) -> None:
    original = seeded(torchvision.models.resnet18, seed=0)
    path = tmp_path / "weights.bin"
    expected = LAYOUTS[layout](original, path)
    fresh = seeded(torchvision.models.resnet18, seed=1)
    assert not torch.equal(outputs(fresh), outputs(original))

    account = load(fresh, path)

    torch.testing.assert_close(outputs(fresh), outputs(original), rtol=0, atol=0)
    for key, value in expected.items():
        assert account[key] == value, key
    assert account["tensors"]["loaded"] == account["tensors"]["model"] == 122
    assert account["filled"] == 1.0
    assert account.get("saved_on") == (["cpu"] if layout != "safetensors" else "not recorded (safetensors)")
    json.dumps(account)  # the account goes into report.json as is


def test_whole_module_checkpoint_loads_as_weights_only_with_the_opt_in(tmp_path: Path) -> None:
    original = seeded(torchvision.models.mobilenet_v3_small, seed=0)
    path = tmp_path / "whole.pt"
    torch.save({"model": original, "ema": None}, path)  # YOLOv5's layout

    with pytest.raises(CheckpointError, match=r"GLOBAL .*torchvision\.models\.mobilenetv3\.MobileNetV3"):
        load(seeded(torchvision.models.mobilenet_v3_small, seed=1), path)

    fresh = seeded(torchvision.models.mobilenet_v3_small, seed=1)
    account = load(fresh, path, trust_checkpoint=True)
    torch.testing.assert_close(outputs(fresh), outputs(original), rtol=0, atol=0)
    assert account["unwrapped"] == "model/<module>" and account["trusted"] is True


def test_mobilenet_v3_small_round_trips_from_a_ddp_safetensors_file(tmp_path: Path) -> None:
    original = seeded(torchvision.models.mobilenet_v3_small, seed=0)
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in original.state_dict().items()}, path)
    fresh = seeded(torchvision.models.mobilenet_v3_small, seed=1)

    account = load(fresh, path)

    torch.testing.assert_close(outputs(fresh), outputs(original), rtol=0, atol=0)
    assert account["prefixes_stripped"] == ["module."] and account["filled"] == 1.0


def test_key_picks_the_entry_and_a_missing_key_lists_the_entries(tmp_path: Path) -> None:
    first, second = seeded(torchvision.models.resnet18, 0), seeded(torchvision.models.resnet18, 1)
    path = tmp_path / "both.pt"
    torch.save({"model": first.state_dict(), "ema": second.state_dict(), "epoch": 9}, path)
    fresh = seeded(torchvision.models.resnet18, 2)

    assert load(fresh, path)["unwrapped"] == "ema"  # YOLOv5's preference
    torch.testing.assert_close(outputs(fresh), outputs(second), rtol=0, atol=0)
    assert load(fresh, path, key="model")["unwrapped"] == "model"
    torch.testing.assert_close(outputs(fresh), outputs(first), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"model\.weights\.key: the checkpoint has no entry 'weights'; its entries are model \(OrderedDict\), ema \(OrderedDict\), epoch \(int\)"):
        load(fresh, path, key="weights")


def test_a_checkpoint_without_weights_is_named(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match=r"found no weights in the checkpoint: its entries are epoch \(int\), optimizer \(dict\)"):
        load(seeded(torchvision.models.resnet18, 0), path)


def test_a_checkpoint_for_another_architecture_fails_with_the_account(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(seeded(torchvision.models.resnet18, 0).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load(seeded(torchvision.models.mobilenet_v3_small, 0), path)
    message = str(info.value)
    assert "filled 0 of the model's 244 tensors (0%), less than min_loaded 50%" in message
    assert "0 loaded, 244 missing (e.g. features.0.0.weight" in message
    assert "122 unexpected (e.g. conv1.weight" in message
    assert "another architecture" in message and "min_loaded" in message


def test_a_new_head_is_left_out_by_exclude_or_reported_as_mismatched(tmp_path: Path) -> None:
    original = seeded(torchvision.models.resnet18, 0)
    path = tmp_path / "imagenet.pt"
    torch.save(original.state_dict(), path)

    ten_classes = seeded(torchvision.models.resnet18, 1, num_classes=10)
    head_before = ten_classes.fc.weight.detach().clone()
    account = load(ten_classes, path, exclude=["fc"])
    assert account["tensors"] == {
        "model": 122, "checkpoint": 122, "loaded": 120, "missing": 0, "unexpected": 0, "shape_mismatched": 0, "excluded": 2,
    }
    torch.testing.assert_close(ten_classes.fc.weight, head_before, rtol=0, atol=0)
    torch.testing.assert_close(ten_classes.layer4[1].conv2.weight, original.layer4[1].conv2.weight, rtol=0, atol=0)

    account = load_weights_into(
        seeded(torchvision.models.resnet18, 1, num_classes=10), WeightsSpec(path=str(path)), tmp_path, list_keys=True
    )
    assert account["tensors"]["shape_mismatched"] == 2
    assert account["keys"]["shape_mismatched"] == [
        "fc.weight: checkpoint [1000, 512] vs model [10, 512]",
        "fc.bias: checkpoint [1000] vs model [10]",
    ]
    assert len(account["keys"]["loaded"]) == 120


def test_min_loaded_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(seeded(torchvision.models.resnet18, 0).state_dict(), path)
    stem_only = ["layer2", "layer3", "layer4", "fc"]  # leaves conv1 (1), bn1 (5) and layer1 (24): 30 of 122 tensors

    with pytest.raises(CheckpointError, match=r"filled 30 of the model's 122 tensors \(25%\), less than min_loaded 50%: 30 loaded, 92 excluded"):
        load(seeded(torchvision.models.resnet18, 1), path, exclude=stem_only)
    assert load(seeded(torchvision.models.resnet18, 1), path, exclude=stem_only, min_loaded=0.2)["filled"] == 0.2459

    with pytest.raises(CheckpointError, match=r"strict is set but not every tensor was paired: 120 loaded, 2 shape-mismatched \(e\.g\. fc\.weight"):
        load(seeded(torchvision.models.resnet18, 1, num_classes=10), path, strict=True)
    assert load(seeded(torchvision.models.resnet18, 1, num_classes=10), path, strict=True, exclude=["fc"])["filled"] > 0.98


class _RenamedBlock(nn.Module):
    """A torchvision residual block (basic or bottleneck) with every module renamed, same order."""

    def __init__(self, block: nn.Module):
        super().__init__()
        depth = 3 if hasattr(block, "conv3") else 2
        self.units = nn.ModuleList(
            nn.Sequential(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")) for i in range(1, depth + 1)
        )
        self.shortcut = block.downsample if block.downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, unit in enumerate(self.units):
            y = unit(y) if i == len(self.units) - 1 else torch.relu(unit(y))
        return torch.relu(y + self.shortcut(x))


class RenamedResNet(nn.Module):
    """A custom ResNet: a torchvision ResNet's layout under other names, and a 10-class head."""

    def __init__(self, builder: Callable[..., nn.Module] = torchvision.models.resnet18) -> None:
        super().__init__()
        layout = builder()
        self.stem = nn.Sequential(layout.conv1, layout.bn1, nn.ReLU(), layout.maxpool)
        layers = (layout.layer1, layout.layer2, layout.layer3, layout.layer4)
        self.stages = nn.Sequential(*(nn.Sequential(*map(_RenamedBlock, layer)) for layer in layers))
        self.classifier = nn.Linear(layout.fc.in_features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def torchvision_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's pooled features (its output before ``fc``)."""
    with torch.no_grad():
        return torch.flatten(model.avgpool(nn.Sequential(*list(model.children())[:-2])(x)), 1)


def test_match_order_fills_a_renamed_model(tmp_path: Path) -> None:
    original = seeded(torchvision.models.resnet18, 0)
    path = tmp_path / "resnet18.pt"
    torch.save(original.state_dict(), path)
    custom = seeded(RenamedResNet, 1)
    assert not set(custom.state_dict()) & set(original.state_dict())

    with pytest.raises(CheckpointError, match="try match: order"):
        load(custom, path)
    account = load_weights_into(custom, WeightsSpec(path=str(path), match="order"), tmp_path, list_keys=True)

    assert account["tensors"]["loaded"] == 120
    assert account["keys"]["shape_mismatched"] == ["fc.weight -> classifier.weight: checkpoint [1000, 512] vs model [10, 512]"]
    assert account["keys"]["missing"] == ["classifier.bias"] and account["keys"]["unexpected"] == ["fc.bias"]
    assert "bn1.num_batches_tracked -> stem.1.num_batches_tracked" in account["keys"]["loaded"]
    x = torch.randn(*INPUT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(custom.features(x), torchvision_features(original, x), rtol=0, atol=0)
    assert custom.stem[1].num_batches_tracked.item() == original.bn1.num_batches_tracked.item() == 7


def test_match_order_with_exclude_skips_the_head_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(seeded(torchvision.models.resnet18, 0).state_dict(), path)
    account = load(seeded(RenamedResNet, 1), path, match="order", exclude=["fc", "classifier"], strict=True)
    assert account["tensors"]["loaded"] == 120 and account["tensors"]["excluded"] == 4


def test_thop_counters_are_dropped_and_pruning_masks_folded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pruned = seeded(torchvision.models.resnet18, 0)
    for module in (pruned.conv1, pruned.layer1[0].conv1, pruned.fc):
        prune.l1_unstructured(module, "weight", amount=0.5)
    for module in pruned.modules():  # what thop.profile registers on every module it counts
        module.register_buffer("total_ops", torch.zeros(1, dtype=torch.float64))
        module.register_buffer("total_params", torch.zeros(1, dtype=torch.float64))
    path = tmp_path / "profiled-and-pruned.pt"
    torch.save(pruned.state_dict(), path)
    fresh = seeded(torchvision.models.resnet18, 1)

    with caplog.at_level("WARNING", logger="optkit.state_dicts"):
        account = load(fresh, path, strict=True)

    torch.testing.assert_close(outputs(fresh), outputs(pruned), rtol=0, atol=0)
    assert account["thop_counters_dropped"] == 2 * len(list(pruned.modules()))
    assert account["pruning_masks_folded"] == 3
    assert (fresh.conv1.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert "thop counter buffers" in caplog.text


def test_model_level_trust_reaches_the_weights() -> None:
    spec = ModelSpec(source="torchvision:resnet18", weights="ckpt/whole.pt", trust_checkpoint=True)
    weights = weights_spec_of(spec)
    assert weights is not None and weights.path == "ckpt/whole.pt" and weights.trust_checkpoint
    assert weights_spec_of(ModelSpec(source="torchvision:resnet18", weights="DEFAULT")) is None
    assert weights_spec_of(ModelSpec(source="torchvision:resnet18", weights="none")) is None


def test_freeze_all_but_head_leaves_only_the_classifier_trainable() -> None:
    model = seeded(torchvision.models.resnet18, 0, num_classes=10)
    account = apply_freeze(model, ["all_but_head"])
    assert account["head"] == "fc"
    assert account["trainable"] == ["fc.weight", "fc.bias"]
    assert account["trainable_params"] == 512 * 10 + 10
    assert account["frozen_params"] == sum(p.numel() for p in model.parameters()) - 5130
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_freeze_patterns_and_a_pattern_that_matches_nothing() -> None:
    model = seeded(torchvision.models.resnet18, 0)
    account = apply_freeze(model, ["conv1", "layer1.*", "*.bn2.bias"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer1.1.bn2.weight" in frozen and "layer3.0.bn2.bias" in frozen
    assert "layer3.0.bn2.weight" not in frozen and "bn1.weight" not in frozen
    assert account["frozen_tensors"] == len(frozen)
    with pytest.raises(PipelineError, match=r"model\.freeze: 'backbone' matches no parameter \(names look like conv1\.weight"):
        apply_freeze(model, ["backbone"])


@pytest.mark.slow
def test_model_zoo_round_trips_and_a_renamed_resnet50(tmp_path: Path) -> None:
    """Torchvision models saved in rotating layouts load exactly; a renamed ResNet-50 is filled by order."""
    zoo = ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "regnet_y_400mf", "squeezenet1_1", "shufflenet_v2_x0_5"]
    layouts = ["dataparallel", "compiled", "safetensors", "ema-over-model", "state_dict", "legacy-format", "model"]
    for name, layout in zip(zoo, layouts):
        builder = torchvision.models.get_model_builder(name)
        original = seeded(builder, 0)
        path = tmp_path / f"{name}.bin"
        LAYOUTS[layout](original, path)
        fresh = seeded(builder, 1)
        account = load(fresh, path)
        torch.testing.assert_close(outputs(fresh), outputs(original), rtol=0, atol=0, msg=f"{name} ({layout})")
        assert account["filled"] == 1.0, name

    original = seeded(torchvision.models.resnet50, 0)
    path = tmp_path / "resnet50.pt"
    torch.save(original.state_dict(), path)
    custom = seeded(lambda: RenamedResNet(torchvision.models.resnet50), 1)
    account = load(custom, path, match="order")
    assert account["tensors"]["loaded"] == len(original.state_dict()) - 2  # all but fc
    x = torch.randn(*INPUT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(custom.features(x), torchvision_features(original, x), rtol=0, atol=0)
